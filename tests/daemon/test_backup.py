"""Backup through the daemon's QMP against qemu-storage-daemon 7.2: blockdev-backup
(sync full, top, none, bitmap/incremental with each bitmap-mode), its errors, the
copy-before-write filter it inserts, and the incremental-backup workflow of QEMU's
bitmaps documentation with guest writes through an NBD export.  Replies, events and
queries are compared (what depends on how far a running job got is normalised), and
the images left behind with qemu-img compare and check."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import qemu_img
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
    """Steps whose index is in ``running`` are compared without progress."""
    a = [_running(x) if i in running else x for i, x in enumerate(qsd)]
    b = [_running(x) if i in running else x for i, x in enumerate(ours)]
    assert diff(a, b) == []


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
        ("wait", "JOB_STATUS_CHANGE", "pending"),
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
