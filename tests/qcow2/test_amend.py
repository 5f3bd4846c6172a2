"""qcow2 amend against qemu-img amend / check / info."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from blocklayer.core.errors import BlockError
from blocklayer.core.open import open_image
from tests.conftest import qemu_img, qemu_io, run


def info(path: Path) -> dict:
    out = qemu_img("info", "-f", "qcow2", "--output=json", str(path))
    return json.loads(out.stdout)


def assert_clean(path: Path) -> None:
    out = qemu_img("check", "-f", "qcow2", str(path), check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def raw(path: Path, out: Path) -> bytes:
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(path), str(out))
    return out.read_bytes()


async def our_amend(path: Path, options: dict) -> None:
    node = await open_image(str(path), fmt="qcow2")
    try:
        await node.driver.amend(options, False)
    finally:
        await node.close()


def make(path: Path, *opts: str) -> None:
    qemu_img("create", "-f", "qcow2", *opts, str(path), "4M")
    qemu_io("-f", "qcow2", "-c", "write -P 1 0 192k", "-c", "write -z 1M 64k",
            "-c", "write -c -P 2 2M 64k", str(path))
    qemu_img("snapshot", "-c", "s", str(path))
    qemu_io("-f", "qcow2", "-c", "write -z 0 64k", str(path))


CASES = [
    ((), {"compat": "0.10"}, ("-o", "compat=0.10")),
    (("-o", "compat=0.10"), {"compat": "1.1"}, ("-o", "compat=1.1")),
    ((), {"refcount_bits": 64}, ("-o", "refcount_bits=64")),
    ((), {"refcount_bits": 2}, ("-o", "refcount_bits=2")),
    ((), {"lazy_refcounts": True}, ("-o", "lazy_refcounts=on")),
    (("-o", "lazy_refcounts=on"), {"lazy_refcounts": False}, ("-o", "lazy_refcounts=off")),
    (("-o", "compat=0.10"), {"compat": "1.1", "refcount_bits": 8},
     ("-o", "compat=1.1,refcount_bits=8")),
]


@pytest.mark.parametrize("create, ours, theirs", CASES)
def test_amend_like_qemu(tmp_path: Path, create: tuple, ours: dict, theirs: tuple) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    make(a, *create)
    shutil.copy(a, b)
    run(our_amend(a, ours))
    qemu_img("amend", "-f", "qcow2", *theirs, str(b))
    assert_clean(a)
    ia, ib = info(a), info(b)
    assert ia["format-specific"] == ib["format-specific"]
    assert ia["virtual-size"] == ib["virtual-size"]
    assert [s["name"] for s in ia.get("snapshots", [])] == ["s"]
    assert raw(a, tmp_path / "a.raw") == raw(b, tmp_path / "b.raw")
    qemu_img("snapshot", "-a", "s", str(a))
    assert_clean(a)
    # (QEMU 7.2's downgrade writes the zeroes of a zero cluster over the snapshot's
    # shared data; we keep the snapshot intact)
    assert raw(a, tmp_path / "a.raw")[:192 << 10] == bytes([1]) * (192 << 10)


@pytest.mark.parametrize("create, ours, message", [
    (("-o", "refcount_bits=8"), {"compat": "0.10"}, "compat=0.10 requires refcount_bits=16"),
    ((), {"refcount_bits": 1}, "Cannot decrease refcount entry width to 1 bits: Cluster "
                               "at offset 0x50000 has a refcount of 2"),
    ((), {"refcount_bits": 3}, "Refcount width must be a power of two and may not exceed "
                               "64 bits"),
    ((), {"compat": "0.9"}, "Unknown compatibility level 0.9"),
    ((), {"compat": "0.10", "refcount_bits": 8}, "Refcount widths other than 16 bits "
     "require compatibility level 1.1 or above (use compat=1.1 or greater)"),
    ((), {"compat": "0.10", "lazy_refcounts": True}, "Lazy refcounts only supported with "
     "compatibility level 1.1 and above (use compat=1.1 or greater)"),
    ((), {"data_file": "x"}, "data-file can only be set for images that use an external "
                             "data file"),
])
def test_refusals(tmp_path: Path, create: tuple, ours: dict, message: str) -> None:
    a = tmp_path / "a.qcow2"
    make(a, *create)
    before = info(a)["format-specific"]
    opts = ",".join(f"{k}={'on' if v is True else v}" for k, v in ours.items())
    err = qemu_img("amend", "-f", "qcow2", "-o", opts, str(a), check=False).stderr
    assert err.strip() == f"qemu-img: {message}"
    with pytest.raises(BlockError) as exc:
        run(our_amend(a, ours))
    assert exc.value.message == message
    assert_clean(a)
    assert info(a)["format-specific"] == before


def test_backing_and_size(tmp_path: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "4M")
    qemu_img("create", "-f", "qcow2", str(top), "4M")
    run(our_amend(top, {"backing_file": str(base), "backing_fmt": "qcow2",
                        "size": 8 << 20}))
    data = info(top)
    assert data["backing-filename"] == str(base)
    assert data["backing-filename-format"] == "qcow2"
    assert data["virtual-size"] == 8 << 20
    assert_clean(top)
