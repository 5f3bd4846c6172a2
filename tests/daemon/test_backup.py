"""Backup through the daemon's QMP against qemu-storage-daemon 7.2: blockdev-backup
(sync full, top, none, bitmap/incremental with each bitmap-mode), its errors, the
copy-before-write filter it inserts, and the incremental-backup workflow of QEMU's
bitmaps documentation with guest writes through an NBD export.  Replies, events and
queries are compared (what depends on how far a running job got is normalised), and
the images left behind with qemu-img compare and check."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import qemu_img, qemu_io
from tests.daemon.harness import diff
from tests.daemon.test_exports import F, Step, cmd, unix
from tests.daemon.test_filters import relative_chain, run_both

MiB = 1 << 20
TOP = cmd("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": F("top.qcow2")})
TGT = cmd("blockdev-add", {"driver": "qcow2", "node-name": "tgt", "file": F("tgt.qcow2")})
QUERY = cmd("query-named-block-nodes", {"flat": True})


def _running(value: Any) -> Any:
    """What a running job's queries show that depends on its progress: file sizes,
    bitmap counts, offsets, busy."""
    if isinstance(value, dict):
        grows = value.get("format") == "file"
        out = {}
        for k, v in value.items():
            if k in ("actual-size", "count", "offset", "busy") or (grows and k == "virtual-size"):
                out[k] = "<progress>"
            else:
                out[k] = _running(v)
        return out
    if isinstance(value, (list, tuple)):
        return [_running(v) for v in value]
    return value


def compare(qsd: list[Any], ours: list[Any], running: set[int]) -> None:
    """Steps whose index is in ``running`` are compared without progress; disk usage
    never (a file's allocated blocks vary by a few KiB from run to run)."""
    a = [_running(x) if i in running else x for i, x in enumerate(qsd)]
    b = [_running(x) if i in running else x for i, x in enumerate(ours)]
    assert diff(_disk_usage(a), _disk_usage(b)) == []


def _disk_usage(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "<du>" if k == "actual-size" else _disk_usage(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_disk_usage(v) for v in value]
    return value


def images(tmp: Path, *names: str) -> None:
    for name in names:
        a, b = (str(tmp / w / name) for w in ("qsd", "ours"))
        qemu_img("check", "-f", "qcow2", b)
        qemu_img("compare", "-f", "qcow2", "-F", "qcow2", a, b)


def test_backup_modes_and_errors(tmp_path: Path) -> None:
    steps: list[Step] = [
        TOP, TGT,
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt",
                                "sync": "full", "speed": 1, "filter-node-name": "cbw"}),
        QUERY, cmd("query-block-jobs"),
        cmd("blockdev-del", {"node-name": "cbw"}),
        cmd("blockdev-del", {"node-name": "tgt"}),
        cmd("block-stream", {"job-id": "j2", "device": "cbw"}),
        cmd("blockdev-backup", {"job-id": "j2", "device": "top", "target": "tgt",
                                "sync": "full"}),
        cmd("blockdev-backup", {"job-id": "j2", "device": "cbw", "target": "tgt",
                                "sync": "full"}),
        cmd("block-job-set-speed", {"device": "j", "speed": 0}),
        ("wait", "JOB_STATUS_CHANGE", "null"),
        QUERY,
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt",
                                "sync": "top", "auto-finalize": False,
                                "auto-dismiss": False}),
        ("wait", "BLOCK_JOB_PENDING", None),      # (it follows the status change)
        cmd("query-jobs"), cmd("job-finalize", {"id": "j"}), cmd("job-dismiss", {"id": "j"}),
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt",
                                "sync": "incremental"}),
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt",
                                "sync": "bitmap"}),
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt",
                                "sync": "full", "bitmap": "nope"}),
        cmd("block-dirty-bitmap-add", {"node": "top", "name": "b"}),
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt",
                                "sync": "full", "bitmap": "b"}),
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt",
                                "sync": "incremental", "bitmap": "b",
                                "bitmap-mode": "never"}),
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt",
                                "sync": "none", "bitmap": "b", "bitmap-mode": "always"}),
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt",
                                "sync": "full", "bitmap": "b", "bitmap-mode": "never"}),
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt",
                                "sync": "full", "bitmap-mode": "never"}),
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "top",
                                "sync": "full"}),
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "nope",
                                "sync": "full"}),
        cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt",
                                "sync": "none"}),
        QUERY,
        cmd("job-cancel", {"id": "j"}),
        ("wait", "JOB_STATUS_CHANGE", "null"),
        QUERY,
    ]
    qsd, ours = run_both(tmp_path, steps, relative_chain)
    # steps 3-4 run while j copies (speed 1 after its first chunk)
    compare(qsd, ours, {3, 4})
    images(tmp_path, "tgt.qcow2", "top.qcow2")


def test_bitmap_modes(tmp_path: Path) -> None:
    """sync=bitmap with on-success, never and always, and sync=full resetting a bitmap:
    the bitmap afterwards, and what was copied."""
    sha = [cmd("x-debug-block-dirty-bitmap-sha256", {"node": "top", "name": "b"}),
           cmd("query-named-block-nodes", {"flat": True})]

    def backup(sync: str, mode: str, target: str = "tgt", runs: bool = True) -> list[Step]:
        wait: list[Step] = [("wait", "JOB_STATUS_CHANGE", "null")] if runs else []
        # (blkdebug's json: filename and node order are not QEMU's yet: no node query
        # once "bad" is in the graph)
        return [cmd("blockdev-backup", {"job-id": "j", "device": "top", "target": target,
                                        "sync": sync, "bitmap": "b", "bitmap-mode": mode}),
                *wait, *(sha[:1] if target == "bad" else sha)]
    # raw over blkdebug: qcow2's metadata writes would meet the rule too (ours fires
    # write_aio for every write from a parent, QEMU's qcow2 only for guest data)
    bad = {"driver": "raw", "node-name": "bad", "file": {
        "driver": "blkdebug", "image": F("bad.raw"),
        "inject-error": [{"event": "write_aio", "errno": 5, "immediately": True}]}}
    def write(byte: int, offset: int, n: int = 5000) -> Step:
        return ("write", "w", bytes([byte]) * n, offset)
    steps: list[Step] = [
        TOP, TGT,
        cmd("nbd-server-start", unix("nbd.sock")),
        cmd("block-export-add", {"type": "nbd", "id": "e", "node-name": "top",
                                 "writable": True}),
        ("connect", "w", "top"),
        cmd("block-dirty-bitmap-add", {"node": "top", "name": "b", "granularity": 65536}),
        write(1, 0),
        *backup("bitmap", "never"),
        write(2, MiB),
        *backup("full", "on-success"),
        write(3, 2 * MiB + 4096),
        *backup("bitmap", "on-success"),
        write(4, 3 * MiB, 70000),
        *backup("bitmap", "always"),
        write(5, MiB // 2),
        cmd("blockdev-add", bad),
        *backup("bitmap", "on-success", "bad"),
        *backup("bitmap", "always", "bad"),
        write(6, 3 * MiB + 65536),
        *backup("bitmap", "never", "bad"),
        *backup("full", "never", "bad", runs=False),
        ("close", "w"),
    ]

    def prepare(work: Path) -> None:
        relative_chain(work)
        qemu_img("create", "-q", "-f", "raw", str(work / "bad.raw"), "4M")
    qsd, ours = run_both(tmp_path, steps, prepare)
    compare(qsd, ours, set())
    images(tmp_path, "tgt.qcow2")


def test_fleecing_with_snapshot_access(tmp_path: Path) -> None:
    """Pull backup: copy-before-write + snapshot-access exported over NBD with a
    frozen bitmap; guest writes through the filter meanwhile.  The snapshot reads as
    it was when the filter went in, its dirty-bitmap context maps as QSD's."""
    ctx = "qemu:dirty-bitmap:b"

    def write(label: str, byte: int, offset: int, n: int = 5000) -> Step:
        return ("write", label, bytes([byte]) * n, offset)
    steps: list[Step] = [
        TOP, TGT,
        cmd("nbd-server-start", unix("nbd.sock")),
        cmd("block-dirty-bitmap-add", {"node": "top", "name": "b", "granularity": 65536}),
        cmd("block-export-add", {"type": "nbd", "id": "t", "node-name": "top",
                                 "writable": True}),
        ("connect", "w", "top"),
        write("w", 0x41, 100), write("w", 0x42, MiB + 4096, 70000),
        write("w", 0x43, 3 * MiB - 512, 1024),
        ("close", "w"),
        cmd("block-export-del", {"id": "t"}), ("wait", "BLOCK_EXPORT_DELETED", None),
        cmd("block-dirty-bitmap-disable", {"node": "top", "name": "b"}),
        cmd("blockdev-add", {"driver": "copy-before-write", "node-name": "cbw",
                             "file": "top", "target": "tgt"}),
        cmd("blockdev-add", {"driver": "snapshot-access", "node-name": "acc",
                             "file": "cbw"}),
        cmd("block-export-add", {"type": "nbd", "id": "g", "node-name": "cbw",
                                 "writable": True}),
        cmd("block-export-add", {"type": "nbd", "id": "s", "node-name": "acc",
                                 "bitmaps": ["b"]}),     # not below snapshot-access
        cmd("block-export-add", {"type": "nbd", "id": "s", "node-name": "acc",
                                 "bitmaps": [{"node": "nope", "name": "b"}]}),
        cmd("block-export-add", {"type": "nbd", "id": "s", "node-name": "acc",
                                 "bitmaps": [{"node": "top", "name": "nope"}]}),
        cmd("block-export-add", {"type": "nbd", "id": "s", "node-name": "acc",
                                 "bitmaps": [{"node": "top", "name": "b"}]}),
        ("connect", "g", "cbw"),
        ("connect", "r", "acc", ctx),
        ("map", "r", ctx),
        ("read", "r", 4 * MiB, 0),
        write("g", 0x51, 0, 65536), write("g", 0x52, MiB, 3000),
        write("g", 0x53, 2 * MiB + 100, 200000), write("g", 0x54, 3 * MiB - 4096, 8192),
        ("read", "r", 4 * MiB, 0),
        ("map", "r", ctx),
        ("read", "g", 4 * MiB, 0),
        ("close", "r"), ("close", "g"),
        cmd("query-named-block-nodes", {"flat": True}),
        cmd("block-export-del", {"id": "s"}), ("wait", "BLOCK_EXPORT_DELETED", None),
        cmd("block-export-del", {"id": "g"}), ("wait", "BLOCK_EXPORT_DELETED", None),
        cmd("blockdev-del", {"node-name": "cbw"}),
        cmd("blockdev-del", {"node-name": "acc"}),
        cmd("blockdev-del", {"node-name": "cbw"}),
        cmd("query-named-block-nodes", {"flat": True}),
    ]
    qsd, ours = run_both(tmp_path, steps, relative_chain)
    # top's disk usage: QEMU zero-allocates the rest of a cluster a partial write
    # allocates over nothing (fallocate), ours leaves it sparse -- not the filter's
    assert diff(_disk_usage(qsd), _disk_usage(ours)) == []
    reads = [r for name, r, _ in ours if name == "read r"]
    assert len(reads) == 2 and reads[0] == reads[1]      # the point in time held
    assert reads[0][:100] == b"\x11" * 100 and reads[0][100:101] == b"\x41"
    images(tmp_path, "top.qcow2", "tgt.qcow2")


def test_incremental_backup_workflow(tmp_path: Path) -> None:
    """QEMU's bitmaps documentation, push mode: a transaction adds the bitmap and
    starts the full backup; the guest writes through an NBD export; incremental
    backups copy only what changed, twice; a third fails (its target refuses writes)
    and the bitmap keeps its bits.  Replayed as a chain, the backups equal the source
    as it was at each point."""
    def write(byte: int, offset: int, n: int = 5000) -> Step:
        return ("write", "w", bytes([byte]) * n, offset)

    def node(name: str) -> Step:
        return cmd("blockdev-add", {"driver": "qcow2", "node-name": name,
                                    "file": F(f"{name}.qcow2")})

    def incremental(job: str, target: str) -> list[Step]:
        return [cmd("blockdev-backup", {"job-id": job, "device": "top", "target": target,
                                        "sync": "incremental", "bitmap": "b0"}),
                ("wait", "JOB_STATUS_CHANGE", "null"),
                cmd("x-debug-block-dirty-bitmap-sha256", {"node": "top", "name": "b0"})]
    bad = {"driver": "raw", "node-name": "bad", "file": {
        "driver": "blkdebug", "image": F("bad.raw"),
        "inject-error": [{"event": "write_aio", "errno": 28, "immediately": True}]}}
    steps: list[Step] = [
        TOP, node("full"), node("inc1"), node("inc2"),
        cmd("nbd-server-start", unix("nbd.sock")),
        cmd("block-export-add", {"type": "nbd", "id": "e", "node-name": "top",
                                 "writable": True}),
        ("connect", "w", "top"),
        ("read", "w", 4 * MiB, 0),
        cmd("transaction", {"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": "top", "name": "b0"}},
            {"type": "blockdev-backup", "data": {"job-id": "j0", "device": "top",
                                                 "target": "full", "sync": "full"}}]}),
        ("wait", "JOB_STATUS_CHANGE", "null"),
        write(0x61, 4096), write(0x62, 2 * MiB - 100, 300000),
        ("read", "w", 4 * MiB, 0),
        *incremental("j1", "inc1"),
        cmd("query-named-block-nodes", {"flat": True}),
        write(0x63, 0, 65536), write(0x64, 3 * MiB + 12345, 100),
        ("read", "w", 4 * MiB, 0),
        *incremental("j2", "inc2"),
        write(0x65, MiB, 4096),
        cmd("blockdev-add", bad),
        *incremental("j3", "bad"),
        cmd("transaction", {"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": "top", "name": "b1"}},
            {"type": "blockdev-backup", "data": {"job-id": "j4", "device": "top",
                                                 "target": "nope", "sync": "full"}}]}),
        cmd("transaction", {"actions": [
            {"type": "blockdev-backup", "data": {"job-id": "j4", "device": "top",
                                                 "target": "full", "sync": "bitmap",
                                                 "bitmap": "b0", "bitmap-mode": "never"}},
            {"type": "abort", "data": {}}]}),
        cmd("x-debug-block-dirty-bitmap-sha256", {"node": "top", "name": "b0"}),
        ("close", "w"),
    ]

    def prepare(work: Path) -> None:
        relative_chain(work)
        for name in ("full", "inc1", "inc2"):
            qemu_img("create", "-q", "-f", "qcow2", str(work / f"{name}.qcow2"), "4M")
        qemu_img("create", "-q", "-f", "raw", str(work / "bad.raw"), "4M")
    qsd, ours = run_both(tmp_path, steps, prepare)
    compare(qsd, ours, set())
    images(tmp_path, "full.qcow2", "inc1.qcow2", "inc2.qcow2", "top.qcow2")
    points = [r for name, r, _ in ours if name == "read w"]
    work = tmp_path / "ours"
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", "full.qcow2", "-F", "qcow2",
             str(work / "inc1.qcow2"))
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", "inc1.qcow2", "-F", "qcow2",
             str(work / "inc2.qcow2"))
    for image, expect in (("full", points[0]), ("inc1", points[1]), ("inc2", points[2])):
        raw = work / f"{image}.raw"
        qemu_img("convert", "-f", "qcow2", "-O", "raw", str(work / f"{image}.qcow2"),
                 str(raw))
        assert raw.read_bytes() == bytes(expect), image


def test_grouped_backups(tmp_path: Path) -> None:
    """completion-mode grouped: the backups of a transaction finish together -- one
    failing takes the others down; other actions refuse the mode."""
    bad = {"driver": "raw", "node-name": "bad", "file": {
        "driver": "blkdebug", "image": F("bad.raw"),
        "inject-error": [{"event": "write_aio", "errno": 5, "immediately": True}]}}

    def backup(job: str, device: str, target: str, **more: Any) -> dict[str, Any]:
        return {"type": "blockdev-backup", "data": {"job-id": job, "device": device,
                                                    "target": target, "sync": "full",
                                                    **more}}
    grouped = {"completion-mode": "grouped"}
    steps: list[Step] = [
        TOP, TGT,
        cmd("blockdev-add", {"driver": "qcow2", "node-name": "other",
                             "file": F("other.qcow2")}),
        cmd("blockdev-add", {"driver": "qcow2", "node-name": "tgt2",
                             "file": F("tgt2.qcow2")}),
        cmd("blockdev-add", bad),
        cmd("transaction", {"properties": grouped, "actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": "top", "name": "b"}},
            backup("j1", "top", "tgt")]}),
        cmd("transaction", {"properties": grouped, "actions": [
            backup("j1", "top", "tgt", speed=1), backup("j2", "other", "bad")]}),
        ("wait", "JOB_STATUS_CHANGE", "null", "j1"), ("wait", "JOB_STATUS_CHANGE", "null", "j2"),
        cmd("query-jobs"),
        cmd("transaction", {"properties": grouped, "actions": [
            backup("j1", "top", "tgt", **{"auto-finalize": False}),
            backup("j2", "other", "tgt2")]}),
        ("wait", "BLOCK_JOB_PENDING", None),
        cmd("query-jobs"),
        cmd("job-finalize", {"id": "j1"}),
        ("wait", "JOB_STATUS_CHANGE", "null", "j1"), ("wait", "JOB_STATUS_CHANGE", "null", "j2"),
        cmd("query-jobs"),
    ]

    def prepare(work: Path) -> None:
        relative_chain(work)
        for name in ("other", "tgt2"):
            qemu_img("create", "-q", "-f", "qcow2", str(work / f"{name}.qcow2"), "4M")
        # all data: which zero writes would beat the failing data write is timing
        qemu_io("-f", "qcow2", "-c", "write -P 7 0 4M", str(work / "other.qcow2"))
        qemu_img("create", "-q", "-f", "raw", str(work / "bad.raw"), "4M")
    qsd, ours = run_both(tmp_path, steps, prepare)
    compare(qsd, ours, set())
    images(tmp_path, "tgt2.qcow2")
