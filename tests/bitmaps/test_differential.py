"""Dirty-bitmap commands against qemu-storage-daemon 7.2: replies, errors, events,
query-named-block-nodes and the sha256 of the bits after the same writes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import qemu_img, qemu_io
from tests.daemon.harness import Step, diff, run_both


def cmd(name: str, args: dict[str, Any] | None = None) -> Step:
    return ("cmd", name, args or {})


def images(work: Path) -> None:
    img = str(work / "a.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "64M")
    qemu_img("bitmap", "--add", img, "stored")
    qemu_img("bitmap", "--add", "-g", "512", img, "fine")
    qemu_io("-f", "qcow2", "-c", "write 0 4k", "-c", "write 1M 3M", "-c",
         "write -z 40M 100k", "-c", "discard 60M 64k", img)
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", str(work / "b.qcow2"),
             "64M")
    qemu_img("create", "-q", "-f", "raw", str(work / "c.raw"), "64M")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(work / "v2.qcow2"),
             "64M")


def nodes() -> list[Step]:
    return [
        cmd("blockdev-add", {"driver": "qcow2", "node-name": "a",
                             "file": {"driver": "file", "filename": "a.qcow2"}}),
        cmd("blockdev-add", {"driver": "qcow2", "node-name": "b",
                             "file": {"driver": "file", "filename": "b.qcow2"}}),
        cmd("blockdev-add", {"driver": "raw", "node-name": "c",
                             "file": {"driver": "file", "filename": "c.raw",
                                      "node-name": "cf"}}),
        cmd("blockdev-add", {"driver": "qcow2", "node-name": "v2", "read-only": True,
                             "file": {"driver": "file", "filename": "v2.qcow2"}}),
    ]


def sha(node: str, name: str) -> Step:
    return cmd("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": name})


def test_bitmap_commands(tmp_path: Path) -> None:
    add = "block-dirty-bitmap-add"
    steps = nodes() + [
        cmd("query-named-block-nodes", {"flat": True}),
        sha("a", "stored"), sha("a", "fine"),
        cmd(add, {"node": "a", "name": "m1"}),
        cmd(add, {"node": "b", "name": "big"}),
        cmd(add, {"node": "c", "name": "r1", "granularity": 1024}),
        cmd(add, {"node": "cf", "name": "f1", "disabled": True}),
        cmd(add, {"node": "a", "name": "p1", "persistent": True, "granularity": 65536 * 4}),
        cmd(add, {"node": "a", "name": "m1"}),
        cmd(add, {"node": "a", "name": ""}),
        cmd(add, {"node": "a", "name": "x" * 1024}),
        cmd(add, {"node": "a", "name": "g", "granularity": 1000}),
        cmd(add, {"node": "a", "name": "g", "granularity": 256}),
        cmd(add, {"node": "nope", "name": "g"}),
        cmd(add, {"node": "c", "name": "p", "persistent": True}),
        cmd(add, {"node": "v2", "name": "p", "persistent": True}),
        cmd(add, {"node": "v2", "name": "q"}),
        cmd("block-dirty-bitmap-merge", {"node": "a", "target": "m1",
                                         "bitmaps": ["stored", "fine"]}),
        sha("a", "m1"),
        cmd("block-dirty-bitmap-merge", {"node": "c", "target": "r1",
                                         "bitmaps": [{"node": "a", "name": "fine"}]}),
        sha("c", "r1"),
        cmd("block-dirty-bitmap-merge", {"node": "c", "target": "r1",
                                         "bitmaps": [{"node": "a", "name": "nope"}]}),
        cmd("block-dirty-bitmap-merge", {"node": "c", "target": "r1",
                                         "bitmaps": [{"node": "zz", "name": "nope"}]}),
        cmd("block-dirty-bitmap-merge", {"node": "c", "target": "zz", "bitmaps": []}),
        cmd("block-dirty-bitmap-disable", {"node": "a", "name": "fine"}),
        cmd("block-dirty-bitmap-enable", {"node": "cf", "name": "f1"}),
        cmd("block-dirty-bitmap-clear", {"node": "a", "name": "stored"}),
        sha("a", "stored"),
        cmd("block-dirty-bitmap-clear", {"node": "a", "name": "nope"}),
        cmd("query-named-block-nodes", {"flat": True}),
        cmd("block-dirty-bitmap-remove", {"node": "a", "name": "m1"}),
        cmd("block-dirty-bitmap-remove", {"node": "a", "name": "m1"}),
        cmd("block-dirty-bitmap-remove", {"node": "a", "name": "stored"}),
        cmd("query-named-block-nodes", {"flat": True}),
        cmd("blockdev-del", {"node-name": "a"}),
    ]
    a, b = run_both(tmp_path, images, steps)
    assert diff(a, b) == []
    for which in ("qsd", "ours"):
        qemu_img("check", str(tmp_path / which / "a.qcow2"))
    infos = [qemu_img("info", "--output=json", str(tmp_path / w / "a.qcow2")).stdout
             for w in ("qsd", "ours")]
    assert _bitmaps(infos[0]) == _bitmaps(infos[1])


def _bitmaps(info_json: str) -> Any:
    import json
    return json.loads(info_json)["format-specific"]["data"].get("bitmaps")
