"""throttle-group objects and the throttle filter against qemu-storage-daemon 7.2."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.bitmaps.test_transaction import _show
from tests.conftest import qemu_img
from tests.daemon.harness import Step, diff, run_both


def cmd(name: str, args: dict[str, Any] | None = None) -> Step:
    return ("cmd", name, args or {})


def images(work: Path) -> None:
    qemu_img("create", "-q", "-f", "raw", str(work / "d.raw"), "1M")


def group(obj_id: str, **props: Any) -> Step:
    return cmd("object-add", {"qom-type": "throttle-group", "id": obj_id, **props})


BAD_LIMITS = [
    {"bps-total": 100, "bps-read": 10},
    {"iops-total-max": 100, "iops-write-max": 10},
    {"iops-size": 4096},
    {"bps-total": -1},
    {"bps-total": 10 ** 15 + 1},
    {"bps-read": 10, "bps-read-max-length": 0},
    {"bps-read": 10, "bps-read-max-length": 5},
    {"bps-read-max": 10},
    {"bps-read": 100, "bps-read-max": 10},
    {"bps-read": 100, "bps-read-max": 1000, "bps-read-max-length": 2 ** 32},
]


def test_throttle_groups(tmp_path: Path) -> None:
    path = "/objects/tg0"
    steps = [
        group("tg0", limits={"bps-total": 1048576, "iops-read": 100, "iops-read-max": 200,
                             "iops-read-max-length": 3, "iops-size": 8192}),
        group("tg1", **{"x-bps-write": 4096, "x-iops-total": 50}),
        *[group("bad", limits=lim) for lim in BAD_LIMITS],
        cmd("qom-get", {"path": path, "property": "limits"}),
        cmd("qom-get", {"path": "/objects/tg1", "property": "limits"}),
        cmd("qom-get", {"path": "/objects/tg1", "property": "x-bps-write"}),
        cmd("qom-get", {"path": path, "property": "type"}),
        cmd("qom-get", {"path": path, "property": "nope"}),
        cmd("qom-get", {"path": "/objects/nope", "property": "limits"}),
        cmd("qom-set", {"path": path, "property": "limits",
                        "value": {"bps-total": 0, "bps-read": 5000}}),
        cmd("qom-get", {"path": path, "property": "limits"}),
        cmd("qom-set", {"path": path, "property": "limits",
                        "value": {"iops-write-max": 10}}),
        cmd("qom-get", {"path": path, "property": "limits"}),
        cmd("qom-set", {"path": path, "property": "x-bps-read", "value": 5}),
        cmd("blockdev-add", {"driver": "throttle", "node-name": "t0", "throttle-group": "tg0",
                             "file": {"driver": "file", "filename": "d.raw"}}),
        cmd("blockdev-add", {"driver": "throttle", "node-name": "t1", "throttle-group": "tgx",
                             "file": {"driver": "file", "filename": "d.raw"}}),
        cmd("blockdev-add", {"driver": "throttle", "node-name": "t2",
                             "file": {"driver": "file", "filename": "d.raw"}}),
        cmd("query-named-block-nodes", {"flat": True}),
        cmd("object-del", {"id": "tg0"}),
        cmd("blockdev-del", {"node-name": "t0"}),
        cmd("object-del", {"id": "tg0"}),
        cmd("object-del", {"id": "tg1"}),
    ]
    a, b = run_both(tmp_path, images, steps)
    _show(a, b)
    assert diff(a, b) == []


def test_qom_list(tmp_path: Path) -> None:
    a, b = run_both(tmp_path, images, [group("tg0"),
                                       cmd("qom-list", {"path": "/objects/tg0"})])
    norm = [sorted(map(str, x[1]["return"])) if "return" in x[1] and x[1]["return"] else x
            for x in (a[1], b[1])]
    assert norm[0] == norm[1]
