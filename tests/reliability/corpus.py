"""Damaged images built at test time: the shared corpus of the reliability tests.

Each builder makes one image in a directory with QEMU's tools and damages it; the
corpus reuses the damage of ``tests/qcow2/test_damaged_tools.py`` and adds the images of
issue 12 (a dirty lazy-refcount image whose data file is gone, encryption, a bad
snapshot table, a damaged bitmap directory, damaged QED headers).
"""
from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

from blocklayer.formats.qcow2 import layout as L
from tests.conftest import qemu_img, qemu_img_create_luks, qemu_io
from tests.qcow2.test_damaged_tools import DAMAGE

Builder = Callable[[Path], Path]


def patch(path: Path, offset: int, fmt: str, *values: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def _killed(*args: str) -> None:
    """qemu-io killed by SIGKILL after the commands: the image is left dirty."""
    subprocess.run(["qemu-io", *args, "-c", "sigraise 9"], capture_output=True)


def _plain(d: Path, opts: str = "") -> Path:
    img = d / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", *(["-o", opts] if opts else []), str(img), "4M")
    qemu_io("-c", "write -P 7 0 128k", "-c", "write -P 9 1M 64k", str(img))
    return img


def dirty_data_file_missing(d: Path) -> Path:
    img = d / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o",
             f"lazy_refcounts=on,data_file={d / 'data.raw'}", str(img), "4M")
    _killed("-c", "write -P 5 0 64k", str(img))
    (d / "data.raw").unlink()
    return img


def dirty_backing_missing(d: Path) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", str(d / "base.qcow2"), "4M")
    img = d / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "-b",
             str(d / "base.qcow2"), "-F", "qcow2", str(img))
    _killed("-c", "write -P 5 0 64k", str(img))
    (d / "base.qcow2").unlink()
    return img


def encrypted_luks(d: Path) -> Path:
    img = d / "d.qcow2"
    qemu_img_create_luks(img, "4M")
    return img


def dirty_snapshot_table_past_eof(d: Path) -> Path:
    img = d / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", str(img), "4M")
    _killed("-c", "write -P 5 0 64k", str(img))
    patch(img, 60, ">IQ", 3, 1 << 40)
    return img


def _with_bitmap(d: Path) -> Path:
    img = _plain(d)
    qemu_img("bitmap", "--add", str(img), "b0")
    return img


def bitmap_directory_past_eof(d: Path) -> Path:
    img = _with_bitmap(d)
    h = L.parse_header(img.read_bytes()[:65536])
    assert h.bitmaps is not None
    _rewrite_bitmaps_ext(img, h, h.bitmaps.directory_size, 1 << 40)
    return img


def bitmap_directory_garbage(d: Path) -> Path:
    img = _with_bitmap(d)
    h = L.parse_header(img.read_bytes()[:65536])
    assert h.bitmaps is not None
    with open(img, "r+b") as f:          # a bitmap table offset that is not aligned
        f.seek(h.bitmaps.directory_offset)
        f.write(struct.pack(">Q", 12345))
    return img


def _rewrite_bitmaps_ext(img: Path, h: L.Header, size: int, offset: int) -> None:
    raw = img.read_bytes()[:65536]
    at = raw.find(struct.pack(">I", L.EXT_BITMAPS), h.header_length)
    patch(img, at + 8 + 8, ">QQ", size, offset)


def _damaged(damage: Callable[[Path], None]) -> Builder:
    def build(d: Path) -> Path:
        img = _plain(d)
        damage(img)
        return img
    build.__name__ = damage.__name__
    return build


def _dirty(damage: Callable[[Path], None]) -> Builder:
    def build(d: Path) -> Path:
        img = d / "d.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", str(img), "4M")
        _killed("-c", "write -P 7 0 128k", "-c", "write -P 9 1M 64k", str(img))
        damage(img)
        return img
    build.__name__ = "dirty_" + damage.__name__
    return build


def _qed(d: Path) -> Path:
    img = d / "d.qed"
    qemu_img("create", "-q", "-f", "qed", str(img), "4M")
    qemu_io("-f", "qed", "-c", "write -P 7 0 128k", str(img))
    return img


def qed_need_check_backing_missing(d: Path) -> Path:
    qemu_img("create", "-q", "-f", "qed", str(d / "base.qed"), "4M")
    img = d / "d.qed"
    qemu_img("create", "-q", "-f", "qed", "-b", str(d / "base.qed"), "-F", "qed", str(img))
    _killed("-f", "qed", "-c", "write -P 5 0 64k", str(img))
    (d / "base.qed").unlink()
    return img


def qed_l1_past_eof(d: Path) -> Path:
    img = _qed(d)
    patch(img, 40, "<Q", 1 << 40)
    return img


def qed_need_check_l1_past_eof(d: Path) -> Path:
    img = _qed(d)
    patch(img, 40, "<Q", 1 << 40)
    patch(img, 16, "<Q", 2)              # features: need check
    return img


QCOW2: list[Builder] = [
    dirty_data_file_missing, dirty_backing_missing, encrypted_luks,
    dirty_snapshot_table_past_eof, bitmap_directory_past_eof, bitmap_directory_garbage,
    *(_damaged(d) for d in DAMAGE), *(_dirty(d) for d in DAMAGE),
]
QED: list[Builder] = [qed_need_check_backing_missing, qed_l1_past_eof,
                      qed_need_check_l1_past_eof]
CORPUS: list[Builder] = [*QCOW2, *QED]
