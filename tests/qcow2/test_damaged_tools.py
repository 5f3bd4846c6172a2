"""Damaged and hostile qcow2 images through the tools: a clear error or a correct repair,
never a traceback, a hang or a runaway allocation (address space capped at 2 GiB)."""
from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from blocklayer.formats.qcow2 import layout as L
from tests.conftest import ROOT, qemu_img, qemu_io

MEM_LIMIT = 2 << 30


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))


def ours(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"blocklayer.tools.{tool}", *args],
                          capture_output=True, text=True, timeout=60, preexec_fn=_limit,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def _patch(path: Path, offset: int, fmt: str, *values: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def _header(path: Path) -> L.Header:
    return L.parse_header(path.read_bytes()[:65536])


def _l2_offset(path: Path) -> int:
    h = _header(path)
    raw = path.read_bytes()[h.l1_table_offset:h.l1_table_offset + 8]
    return struct.unpack(">Q", raw)[0] & 0x00FFFFFFFFFFFE00


def truncated_half(p: Path) -> None:
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size // 2)


def truncated_tiny(p: Path) -> None:
    with open(p, "r+b") as f:
        f.truncate(100)


def snapshot_table_past_eof(p: Path) -> None:
    _patch(p, 60, ">IQ", 3, 1 << 40)


def many_snapshots_past_eof(p: Path) -> None:
    _patch(p, 60, ">IQ", 8192, 64 << 20)


def l1_past_eof(p: Path) -> None:
    _patch(p, 36, ">IQ", 4 << 20, 1 << 40)


def refcount_table_past_eof(p: Path) -> None:
    _patch(p, 48, ">QI", 1 << 40, 1 << 16)


def l2_entry_past_eof(p: Path) -> None:
    _patch(p, _l2_offset(p), ">Q", (1 << 63) | (1 << 45))


def l1_entry_past_eof(p: Path) -> None:
    _patch(p, _header(p).l1_table_offset, ">Q", (1 << 63) | (1 << 44))


def refcount_too_low(p: Path) -> None:
    h = _header(p)
    rt = struct.unpack(">Q", p.read_bytes()[h.refcount_table_offset:h.refcount_table_offset + 8])[0]
    _patch(p, rt + 2 * 4, ">H", 0)          # the data cluster at index 4 (L2 is 4 here)


def refcount_too_high(p: Path) -> None:
    h = _header(p)
    rt = struct.unpack(">Q", p.read_bytes()[h.refcount_table_offset:h.refcount_table_offset + 8])[0]
    _patch(p, rt + 2 * 40, ">H", 1)         # a cluster nobody uses


def l2_overlaps_header(p: Path) -> None:
    _patch(p, _header(p).l1_table_offset, ">Q", (1 << 63) | 0)


def data_on_refcount_table(p: Path) -> None:
    _patch(p, _l2_offset(p), ">Q", (1 << 63) | _header(p).refcount_table_offset)


def header_length_huge(p: Path) -> None:
    _patch(p, 100, ">I", 1 << 30)


def backing_name_past_cluster(p: Path) -> None:
    _patch(p, 8, ">QI", 65000, 1000)


DAMAGE: list[Callable[[Path], None]] = [
    truncated_half, truncated_tiny, snapshot_table_past_eof, many_snapshots_past_eof,
    l1_past_eof, refcount_table_past_eof, l2_entry_past_eof, l1_entry_past_eof,
    refcount_too_low, refcount_too_high, l2_overlaps_header, data_on_refcount_table,
    header_length_huge, backing_name_past_cluster,
]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda d: d.__name__)
def test_damaged_image_through_the_tools(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    img = tmp_path / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), "4M")
    qemu_io("-c", "write -P 7 0 128k", "-c", "write -P 9 1M 64k", str(img))
    damage(img)
    for args in (["img", "info", "-f", "qcow2", str(img)],
                 ["img", "check", "-f", "qcow2", str(img)],
                 ["img", "convert", "-f", "qcow2", "-O", "raw", str(img), str(tmp_path / "o.raw")],
                 ["img", "map", "-f", "qcow2", str(img)],
                 ["io", "-r", "-f", "qcow2", "-c", "read 0 4M", str(img)]):
        res = ours(*args)
        text = res.stdout + res.stderr
        assert "Traceback" not in text and "MemoryError" not in text, (args, text)
        if res.returncode != 0 and args[1] != "check":
            assert res.stderr.strip() or "failed" in res.stdout, (args, text)
    # repair: whatever qemu-img can repair, we repair to a state qemu-img finds clean
    theirs = tmp_path / "theirs.qcow2"
    theirs.write_bytes(img.read_bytes())
    q = qemu_img("check", "-r", "all", "-f", "qcow2", str(theirs), check=False)
    res = ours("img", "check", "-r", "all", "-f", "qcow2", str(img))
    assert "Traceback" not in res.stdout + res.stderr
    if q.returncode == 0:
        assert res.returncode == 0, res.stdout + res.stderr
        after = qemu_img("check", "--output=json", "-f", "qcow2", str(img), check=False)
        assert after.returncode == 0, after.stdout + after.stderr
        data = json.loads(after.stdout)
        assert not data.get("corruptions") and not data.get("leaks")
