"""Filter nodes through the daemon's QMP against qemu-storage-daemon 7.2: the
copy-on-read filter added by hand (read through an NBD export, with and without
``bottom``) and the one block-stream inserts while it runs.  Replies, errors, events,
bytes read and the images left behind are compared."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import qemu_img, qemu_io
from tests.daemon import harness
from tests.daemon.harness import diff
from tests.daemon.test_exports import F, Step, cmd, session, unix

MiB = 1 << 20


def chain_images(work: Path) -> None:
    """base (0x11 in [0, 1M)) <- mid (0x22 in [1M, 2M)) <- top (0x33 in [2M, 2M+64k))."""
    base, mid, top = (str(work / f"{n}.qcow2") for n in ("base", "mid", "top"))
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_io("-f", "qcow2", "-c", "write -P 0x11 0 1M", base)
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid)
    qemu_io("-f", "qcow2", "-c", "write -P 0x22 1M 1M", mid)
    qemu_img("create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
    qemu_io("-f", "qcow2", "-c", "write -P 0x33 2M 64k", top)


def relative_chain(work: Path) -> None:
    """The same chain with backing files named relative to the images (so a node
    added by hand with its backing given by reference is the one the header names),
    and an empty target."""
    for name, back, data in (("base", None, "write -P 0x11 0 1M"),
                             ("mid", "base", "write -P 0x22 1M 1M"),
                             ("top", "mid", "write -P 0x33 2M 64k")):
        path = str(work / f"{name}.qcow2")
        backing = ("-b", f"{back}.qcow2", "-F", "qcow2") if back else ()
        qemu_img("create", "-q", "-f", "qcow2", *backing, path, "4M")
        qemu_io("-f", "qcow2", "-c", data, path)
    qemu_img("create", "-q", "-f", "qcow2", str(work / "tgt.qcow2"), "4M")


def run_both(tmp: Path, steps: list[Step], prepare: Any = chain_images
             ) -> tuple[list[Any], list[Any]]:
    """QMP with NBD clients in between (the exports tests' sessions)."""
    return harness.run_both(tmp, prepare, steps, session)


def top_map(work: Path) -> list[Any]:
    out = qemu_img("map", "--output=json", "-f", "qcow2", str(work / "top.qcow2")).stdout
    return [{k: v for k, v in e.items() if k != "offset"} for e in json.loads(out)]


TOP = cmd("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": F("top.qcow2")})


def export_and_read(node: str) -> list[Step]:
    return [
        cmd("block-export-add", {"type": "nbd", "id": "e", "node-name": node,
                                 "writable": True}),
        ("connect", "r", node),
        ("read", "r", 4 * MiB, 0),
        ("close", "r"),
        cmd("block-export-del", {"id": "e"}),
        ("wait", "BLOCK_EXPORT_DELETED", None),
    ]


def test_copy_on_read_filter(tmp_path: Path) -> None:
    """Reads through the filter copy the backing chain's data into top; with
    ``bottom`` only what comes from down to bottom."""
    steps = [
        TOP,
        cmd("nbd-server-start", unix("nbd.sock")),
        cmd("blockdev-add", {"driver": "qcow2", "node-name": "ro", "read-only": True,
                             "file": F("base.qcow2")}),
        cmd("blockdev-add", {"driver": "copy-on-read", "node-name": "c", "file": "ro"}),
        cmd("blockdev-add", {"driver": "copy-on-read", "node-name": "c", "file": "top",
                             "bottom": "nope"}),
        # (a bottom outside top's chain is left out: QSD 7.2 stops answering)
        cmd("blockdev-add", {"driver": "copy-on-read", "node-name": "c", "file": "top"}),
        cmd("blockdev-del", {"node-name": "ro"}),
        cmd("query-named-block-nodes", {"flat": True}),
        cmd("blockdev-del", {"node-name": "top"}),
        *export_and_read("c"),
        cmd("blockdev-del", {"node-name": "c"}),
        cmd("query-named-block-nodes", {"flat": True}),
    ]
    qsd, ours = run_both(tmp_path, steps)
    assert diff(qsd, ours) == []
    assert top_map(tmp_path / "ours") == top_map(tmp_path / "qsd")
    qemu_img("check", "-f", "qcow2", str(tmp_path / "ours" / "top.qcow2"))


def test_copy_on_read_filter_with_bottom(tmp_path: Path) -> None:
    mid = {"driver": "qcow2", "node-name": "m", "file": F("mid.qcow2")}
    steps = [
        cmd("blockdev-add", mid),
        cmd("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": F("top.qcow2"),
                             "backing": "m"}),
        cmd("nbd-server-start", unix("nbd.sock")),
        cmd("blockdev-add", {"driver": "copy-on-read", "node-name": "c", "file": "top",
                             "bottom": "m"}),
        *export_and_read("c"),
        cmd("blockdev-del", {"node-name": "c"}),
    ]
    qsd, ours = run_both(tmp_path, steps)
    assert diff(qsd, ours) == []
    assert top_map(tmp_path / "ours") == top_map(tmp_path / "qsd")


def _no_sizes(value: Any) -> Any:
    """The file sizes while a stream runs depend on how far it got."""
    if isinstance(value, dict):
        grows = value.get("format") == "file"
        return {k: ("<size>" if k == "actual-size" or (grows and k == "virtual-size")
                    else _no_sizes(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_sizes(v) for v in value]
    return value


def test_stream_inserts_copy_on_read(tmp_path: Path) -> None:
    """block-stream puts a copy-on-read filter above top while it runs: named by
    filter-node-name or automatically, the job's main node, gone afterwards."""
    steps = [
        TOP,
        cmd("block-stream", {"job-id": "j", "device": "top", "speed": 1,
                             "filter-node-name": "sf"}),
        cmd("query-named-block-nodes", {"flat": True}),
        cmd("block-commit", {"device": "top"}),
        cmd("block-stream", {"job-id": "j2", "device": "sf"}),
        cmd("blockdev-del", {"node-name": "sf"}),
        cmd("job-cancel", {"id": "j"}),
        ("wait", "JOB_STATUS_CHANGE", "null"),
        cmd("query-named-block-nodes", {"flat": True}),
        cmd("block-stream", {"job-id": "j", "device": "top", "speed": 1}),
        cmd("query-named-block-nodes", {"flat": True}),
        cmd("job-cancel", {"id": "j"}),
        ("wait", "JOB_STATUS_CHANGE", "null"),
        cmd("block-stream", {"job-id": "j", "device": "top"}),
        ("wait", "JOB_STATUS_CHANGE", "null"),
        cmd("query-named-block-nodes", {"flat": True}),
    ]
    qsd, ours = run_both(tmp_path, steps)
    assert diff(_no_sizes(qsd), _no_sizes(ours)) == []
    a, b = (str(tmp_path / w / "top.qcow2") for w in ("qsd", "ours"))
    qemu_img("compare", "-f", "qcow2", "-F", "qcow2", a, b)
    qemu_img("check", "-f", "qcow2", b)


CHAIN = [
    cmd("blockdev-add", {"driver": "qcow2", "node-name": "base", "file": F("base.qcow2")}),
    cmd("blockdev-add", {"driver": "qcow2", "node-name": "mid", "file": F("mid.qcow2"),
                         "backing": "base"}),
    cmd("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": F("top.qcow2"),
                         "backing": "mid"}),
    cmd("blockdev-add", {"driver": "qcow2", "node-name": "tgt", "file": F("tgt.qcow2")}),
]
QUERY = cmd("query-named-block-nodes", {"flat": True})
CANCEL = [cmd("job-cancel", {"id": "j"}), ("wait", "JOB_STATUS_CHANGE", "null")]


def _job_filter_session(tmp: Path, start: dict[str, Any], name: str,
                        probes: list[Step]) -> None:
    """``start`` (a job at 1 byte/s) once with ``filter-node-name`` and once without:
    the filter node in the graph, what the probes get, and the graph after cancel."""
    job, args = next(iter(start.items()))
    steps = [*CHAIN,
             cmd("blockdev-del", {"node-name": "mid"}),
             cmd(job, {**args, "job-id": "j", "speed": 1, "filter-node-name": name}),
             QUERY, *probes, *CANCEL, QUERY,
             cmd(job, {**args, "job-id": "j", "speed": 1}), QUERY, *CANCEL,
             cmd("blockdev-del", {"node-name": "top"}), QUERY]
    qsd, ours = run_both(tmp, steps, relative_chain)
    assert diff(_no_sizes(qsd), _no_sizes(ours)) == []
    for image in ("top", "mid", "base", "tgt"):
        qemu_img("check", "-f", "qcow2", str(tmp / "ours" / f"{image}.qcow2"))


def test_commit_inserts_commit_top(tmp_path: Path) -> None:
    _job_filter_session(tmp_path, {"block-commit": {"device": "top", "top-node": "mid",
                                                    "base-node": "base"}}, "ct", [
        cmd("block-commit", {"job-id": "j2", "device": "top", "top-node": "mid",
                             "base-node": "base"}),
        cmd("block-stream", {"job-id": "j3", "device": "ct"}),
        cmd("block-stream", {"job-id": "j3", "device": "top"}),
        cmd("blockdev-del", {"node-name": "ct"}),
        cmd("blockdev-del", {"node-name": "base"}),
        cmd("block_resize", {"node-name": "base", "size": 8 << 20}),
    ])


def test_active_commit_inserts_mirror_top(tmp_path: Path) -> None:
    _job_filter_session(tmp_path, {"block-commit": {"device": "top"}}, "ct", [
        cmd("block-commit", {"job-id": "j2", "device": "top"}),
        cmd("block-stream", {"job-id": "j3", "device": "ct"}),
        cmd("blockdev-del", {"node-name": "ct"}),
        cmd("blockdev-mirror", {"job-id": "j2", "device": "ct", "target": "tgt",
                                "sync": "full"}),
    ])


def test_mirror_inserts_mirror_top(tmp_path: Path) -> None:
    _job_filter_session(tmp_path, {"blockdev-mirror": {"device": "top", "target": "tgt",
                                                       "sync": "full"}}, "mt", [
        cmd("block-stream", {"job-id": "j3", "device": "mt"}),
        cmd("blockdev-del", {"node-name": "mt"}),
        cmd("blockdev-mirror", {"job-id": "j2", "device": "mt", "target": "tgt",
                                "sync": "full"}),
        cmd("blockdev-mirror", {"job-id": "j2", "device": "top", "target": "tgt",
                                "sync": "full"}),
        cmd("block-commit", {"job-id": "j2", "device": "top"}),
    ])
