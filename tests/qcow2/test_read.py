"""Images made and written by qemu-img/qemu-io read back byte-identical through us."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import qemu_img, run

from .helpers import KIB, MIB, apply_model, qemu_ops, qemu_raw, read_all

SIZE = 32 * MIB


def ops_for(cs: int, compressed: bool = True) -> list[tuple[str, int, int, int]]:
    ops = [
        ("write", 0, cs // 2 + 7, 0x11),
        ("write", cs + 100, 5000, 0x22),
        ("write", 4 * cs, 3 * cs, 0x33),
        ("zero", 5 * cs, cs, 0),
        ("write", 9 * MIB - 700, 3 * cs + 1000, 0x44),
        ("discard", 4 * cs, cs, 0),
        ("zero-unmap", 9 * MIB, cs, 0),
        ("write", SIZE - 512, 512, 0x55),
    ]
    if compressed:
        ops += [("compress", 16 * MIB, 2 * cs, 0x66), ("compress", 24 * MIB, cs, 0x77),
                ("write", 16 * MIB + 10, 20, 0x88)]
    return ops


@pytest.mark.parametrize("opts", [
    "cluster_size=512",
    "cluster_size=65536,refcount_bits=1",
    "cluster_size=2M,refcount_bits=64",
    "compat=0.10",
    "cluster_size=64k,extended_l2=on",
    "cluster_size=16k,extended_l2=on,compression_type=zstd",
    "compression_type=zstd,lazy_refcounts=on",
], ids=lambda s: s.replace(",", "-"))
def test_qemu_images_read_back(tmp_path: Path, opts: str) -> None:
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, str(img), str(SIZE))
    cs = 65536
    for part in opts.split(","):
        if part.startswith("cluster_size="):
            v = part.split("=")[1]
            cs = int(v[:-1]) * (MIB if v.endswith("M") else KIB) if v[-1] in "kM" else int(v)
    ops = ops_for(cs)
    qemu_ops(img, ops)
    model = bytearray(SIZE)
    # v2 images cannot keep zeroes for discarded clusters: they read from "backing"
    # (nothing here), i.e. zeroes as well
    apply_model(model, ops)
    expected = qemu_raw(img, tmp_path / "out.raw")
    assert expected == bytes(model)
    assert run(read_all(img)) == expected


def test_backing_chain_three_deep(tmp_path: Path) -> None:
    base, mid, top = (tmp_path / n for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", str(base), str(SIZE))
    qemu_ops(base, [("write", 0, SIZE // 2, 0x01), ("compress", SIZE // 2 + MIB, 8 * KIB, 0x02)])
    qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2",
             "-o", "cluster_size=64k", str(mid))
    qemu_ops(mid, [("write", 100, 70000, 0x03), ("zero", 2 * MIB, 128 * KIB, 0),
                   ("discard", 4 * MIB, 64 * KIB, 0)])
    qemu_img("create", "-q", "-f", "qcow2", "-b", mid.name, "-F", "qcow2",
             "-o", "cluster_size=16k,extended_l2=on", str(top))
    qemu_ops(top, [("write", 1000, 3000, 0x04), ("zero", 2 * MIB + 4096, 8192, 0),
                   ("write", 6 * MIB + 512, 512, 0x05), ("discard", 0, 16 * KIB, 0)])
    expected = qemu_raw(top, tmp_path / "out.raw")
    assert run(read_all(top)) == expected


def test_backing_shorter_than_overlay(tmp_path: Path) -> None:
    base, top = tmp_path / "base.raw", tmp_path / "top.qcow2"
    base.write_bytes(b"\x09" * (MIB + 512))
    qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "raw", str(top), str(4 * MIB))
    qemu_ops(top, [("write", 3 * MIB, 100, 0x07)])
    expected = qemu_raw(top, tmp_path / "out.raw")
    assert run(read_all(top)) == expected


@pytest.mark.parametrize("raw", [False, True], ids=["data-file", "data-file-raw"])
def test_external_data_file(tmp_path: Path, raw: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)       # QEMU resolves data file names from here
    img, data = tmp_path / "img.qcow2", tmp_path / "img.data"
    qemu_img("create", "-q", "-f", "qcow2", "-o",
             f"data_file={data.name},data_file_raw={'on' if raw else 'off'}", str(img),
             str(SIZE))
    ops = [op for op in ops_for(65536, compressed=False)]
    qemu_ops(img, ops)
    expected = qemu_raw(img, tmp_path / "out.raw")
    model = bytearray(SIZE)
    apply_model(model, ops)
    assert expected == bytes(model)
    assert run(read_all(img)) == expected
