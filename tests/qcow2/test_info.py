"""Information, block status and hostile headers."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from blocklayer.core.driver import Status
from blocklayer.core.errors import BlockError
from blocklayer.formats.qcow2 import layout as L
from tests.conftest import qemu_img, qemu_io, run

from .helpers import KIB, MIB, assert_clean, open_qcow2, our_ops, qemu_ops, read_all


async def _specific(path: Path, read_only: bool = True) -> dict:
    node = await open_qcow2(path, read_only=read_only)
    try:
        return node.driver.get_specific_info()
    finally:
        await node.close()


def _theirs(path: Path) -> dict:
    return json.loads(qemu_img("info", "--output=json", str(path)).stdout)["format-specific"]


@pytest.mark.parametrize("opts", ["compat=0.10", "lazy_refcounts=on,refcount_bits=64",
                                  "compression_type=zstd,extended_l2=on",
                                  "data_file=d.raw,data_file_raw=on"])
def test_specific_info_matches(tmp_path: Path, opts: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, str(img), "16M")
    assert run(_specific(img)) == _theirs(img)


def test_bitmaps_listed_and_kept(tmp_path: Path) -> None:
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), "16M")
    qemu_img("bitmap", "--add", str(img), "b1")
    qemu_img("bitmap", "--add", "-g", "128k", str(img), "b2")
    assert run(_specific(img)) == _theirs(img)

    async def write() -> None:
        node = await open_qcow2(img)
        try:
            await our_ops(node, [("write", 0, 70000, 3)])
        finally:
            await node.close()
    run(write())
    assert run(_specific(img)) == _theirs(img)
    assert_clean(img)


def test_block_status_like_qemu_map(tmp_path: Path) -> None:
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", str(img), "8M")
    qemu_ops(img, [("write", 0, 64 * KIB, 1), ("zero", 64 * KIB, 8 * KIB, 0),
                   ("compress", MIB, 8 * KIB, 2), ("write", 2 * MIB, 4 * KIB, 3)])
    qemu_io("-f", "qcow2", "-c", f"write -z {2 * MIB} 4k", str(img))
    theirs = json.loads(qemu_img("map", "--output=json", str(img)).stdout)

    async def ours() -> list[dict]:
        node = await open_qcow2(img, read_only=True)
        out: list[dict] = []
        try:
            pos = 0
            while pos < node.total_bytes:
                st = await node.block_status(pos, node.total_bytes - pos)
                item = {"start": pos, "length": st.length,
                        "present": bool(st.flags & Status.ALLOCATED),
                        "zero": bool(st.flags & Status.ZERO),
                        "data": bool(st.flags & Status.DATA)}
                if st.flags & Status.OFFSET_VALID:
                    item["offset"] = st.offset
                prev = out[-1] if out else None
                if prev and all(prev[k] == item[k] for k in ("present", "zero", "data")) \
                        and ("offset" in prev) == ("offset" in item) \
                        and ("offset" not in item
                             or prev["offset"] + prev["length"] == item["offset"]):
                    prev["length"] += item["length"]
                else:
                    out.append(item)
                pos += st.length
        finally:
            await node.close()
        return out
    simple = [{k: e[k] for k in ("start", "length", "present", "zero", "data", "offset")
               if k in e}
              for e in theirs]
    assert run(ours()) == simple


def test_corrupt_image_is_read_only(tmp_path: Path) -> None:
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), "1M")
    qemu_ops(img, [("write", 0, 4096, 7)])
    with open(img, "r+b") as f:
        f.seek(72)
        f.write(struct.pack(">Q", L.INCOMPAT_CORRUPT))
    with pytest.raises(BlockError, match="qcow2: Image is corrupt; cannot be opened "
                                         "read/write"):
        run(open_qcow2(img))
    assert run(read_all(img))[:4096] == b"\x07" * 4096


def _patch(path: Path, offset: int, fmt: str, *values: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


@pytest.mark.parametrize("offset,fmt,value,message", [
    (20, ">I", 22, "Unsupported cluster size: 2^22"),
    (20, ">I", 8, "Unsupported cluster size: 2^8"),
    (4, ">I", 4, "Unsupported qcow2 version 4"),
    (72, ">Q", 1 << 5, "Unsupported qcow2 feature(s): Unknown incompatible feature: 20"),
    (96, ">I", 7, "Reference count entry width too large; may not exceed 64 bits"),
    (100, ">I", 100, "qcow2 header too short"),
    (36, ">I", 0, "L1 table is too small"),
    (36, ">I", 1 << 23, "Active L1 table too large"),
    (40, ">Q", 12345, "Active L1 table offset invalid"),
    (48, ">Q", 777, "Reference count table offset invalid"),
    (56, ">I", 1 << 20, "Reference count table too large"),
    (60, ">I", 1 << 20, "Snapshot table too large"),
    (32, ">I", 9, "Unsupported encryption method: 9"),
    (104, ">B", 1, "qcow2: Compression type incompatible feature bit must be set"),
])
def test_hostile_headers_refused(tmp_path: Path, offset: int, fmt: str, value: int,
                                 message: str) -> None:
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), "1M")
    _patch(img, offset, fmt, value)
    with pytest.raises(BlockError) as exc:
        run(open_qcow2(img, read_only=True))
    assert exc.value.message == message


def test_unknown_feature_named_from_table(tmp_path: Path) -> None:
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), "1M")
    _patch(img, 72, ">Q", (1 << 4) | (1 << 9))
    with pytest.raises(BlockError) as exc:   # bit 4 is known; take it away by name check
        run(open_qcow2(img, read_only=True))
    assert exc.value.message == "Unsupported qcow2 feature(s): Unknown incompatible " \
        "feature: 200"


def test_hostile_l2_entries_fail_cleanly(tmp_path: Path) -> None:
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), "1M")
    qemu_ops(img, [("write", 0, 4096, 7)])
    h = L.parse_header(img.read_bytes()[:65536])
    l1 = struct.unpack(">Q", img.read_bytes()[h.l1_table_offset:h.l1_table_offset + 8])[0]
    l2 = l1 & 0x00FFFFFFFFFFFE00
    _patch(img, l2, ">Q", (1 << 63) | 0x12345)           # unaligned data cluster
    with pytest.raises(BlockError, match="unaligned"):
        run(read_all(img))
    _patch(img, l2, ">Q", (1 << 62) | (0xFF << 54) | 0x70000)  # compressed, garbage
    with pytest.raises(BlockError):
        run(read_all(img))


def test_header_roundtrip() -> None:
    h = L.Header(cluster_bits=16, size=1 << 30, l1_size=2, l1_table_offset=3 << 16,
                 refcount_table_offset=1 << 16, refcount_table_clusters=1,
                 backing_format="qcow2", backing_file="base.qcow2", data_file="x",
                 feature_table=list(L.QEMU_FEATURE_TABLE), has_feature_table=True,
                 unknown_extensions=[(0x12345678, b"hello")],
                 bitmaps=L.BitmapsExt(1, 0, 64, 5 << 16),
                 incompatible_features=L.INCOMPAT_DATA_FILE,
                 autoclear_features=L.AUTOCLEAR_BITMAPS)
    buf = h.build()
    back = L.parse_header(buf.ljust(65536, b"\0"))
    assert back == h


def test_guest_write_aimed_at_metadata_refused(tmp_path: Path) -> None:
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), "1M")
    qemu_ops(img, [("write", 0, 4096, 7)])
    h = L.parse_header(img.read_bytes()[:65536])
    l1 = struct.unpack(">Q", img.read_bytes()[h.l1_table_offset:h.l1_table_offset + 8])[0]
    l2 = l1 & 0x00FFFFFFFFFFFE00
    _patch(img, l2, ">Q", (1 << 63) | h.refcount_table_offset)   # data "is" the reftable

    async def write() -> None:
        node = await open_qcow2(img)
        try:
            await node.write(0, b"\xff" * 512)
        finally:
            await node.close()
    with pytest.raises(BlockError, match="Preventing invalid write on metadata"):
        run(write())
    info = json.loads(qemu_img("info", "--output=json", str(img)).stdout)
    assert info["format-specific"]["data"]["corrupt"] is True
    with pytest.raises(BlockError, match="Image is corrupt; cannot be opened read/write"):
        run(open_qcow2(img))
