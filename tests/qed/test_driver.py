"""The QED driver's lifecycle and management operations, and hostile headers."""
from __future__ import annotations

import asyncio
import json
import shutil
import struct
from pathlib import Path

import pytest

from blocklayer.core.driver import CheckMode, Prealloc, Status
from blocklayer.core.errors import BlockError, NotSupported
from blocklayer.formats.qed import driver as qed_driver
from blocklayer.formats.qed import layout
from blocklayer.core.registry import probe_format
from tests.conftest import qemu_img, qemu_io, run

from .helpers import create, open_qed, our_check, qemu_check, read_all

MIB = 1 << 20


def _header(path: Path) -> layout.Header:
    return layout.Header.parse(path.read_bytes()[:64])


def test_need_check_set_then_cleared_by_timer(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qed_driver, "NEED_CHECK_TIMEOUT", 0.05)
    img = tmp_path / "img.qed"
    run(create(img, MIB))

    async def go() -> None:
        node = await open_qed(img)
        await node.write(0, b"x" * 100)
        assert _header(img).has(layout.F_NEED_CHECK)      # flushed before the write
        await node.write(10, b"y")                         # in place: no effect on the bit
        await asyncio.sleep(0.3)
        assert not _header(img).has(layout.F_NEED_CHECK)
        await node.write(1 << 19, b"z" * 10)
        assert _header(img).has(layout.F_NEED_CHECK)
        await node.close()                                 # clean close clears it
        assert not _header(img).has(layout.F_NEED_CHECK)
    run(go())
    assert qemu_check(img)["allocated-clusters"] == 2


def test_dirty_image_checked_and_repaired_on_open(tmp_path: Path) -> None:
    img = tmp_path / "img.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "cluster_size=4k", str(img), "1M")
    qemu_io("-f", "qed", "-c", "write -P 5 8k 4k", "-c", "write -P 7 20k 100", str(img))
    buf = bytearray(img.read_bytes())
    struct.pack_into("<Q", buf, 16, layout.F_NEED_CHECK)
    struct.pack_into("<Q", buf, 0x6000 + 5 * 8, 1 << 30)          # an offset past the file
    img.write_bytes(bytes(buf) + bytes(4096))                        # and a leak
    ro = run(our_check(img))                      # read-only opens leave it alone
    assert ro["corruptions"] == 1 and ro["leaks"] == 2      # the orphaned cluster too
    assert ro == qemu_check(img)
    node = run(open_qed(img))                     # read-write: checked and repaired
    assert run(node.read(8192, 2)) == b"\x05\x05"
    assert run(node.read(20480, 2)) == b"\x00\x00"  # the bad entry was cleared
    run(node.close())
    assert not _header(img).has(layout.F_NEED_CHECK)
    assert qemu_check(img)["corruptions"] == 0
    assert qemu_check(img)["leaks"] == 2           # QED cannot give clusters back


def test_repair_matches_qemu(tmp_path: Path) -> None:
    img = tmp_path / "img.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "cluster_size=4k", str(img), "1M")
    qemu_io("-f", "qed", "-c", "write -P 5 8k 12k", str(img))
    buf = bytearray(img.read_bytes())
    struct.pack_into("<Q", buf, 0x8000 + 3 * 8, 0x6000 + 512)
    img.write_bytes(bytes(buf))
    theirs = tmp_path / "theirs.qed"
    shutil.copy(img, theirs)
    qemu_img("check", "-f", "qed", "-r", "all", str(theirs), check=False)

    async def repair() -> None:
        node = await open_qed(img)
        result = await node.driver.check(CheckMode.FIX_ALL)
        assert result.corruptions_fixed == 1 and result.corruptions == 0
        await node.close()
    run(repair())
    assert img.read_bytes() == theirs.read_bytes()


def test_resize_backing_change_make_empty(tmp_path: Path) -> None:
    img, base = tmp_path / "img.qed", tmp_path / "base.raw"
    base.write_bytes(b"\xab" * MIB)
    run(create(img, MIB, cluster_size=4096))

    async def go() -> None:
        node = await open_qed(img)
        assert node.driver.has_zero_init()
        await node.write(4096, b"q" * 4096)
        with pytest.raises(BlockError, match="Shrinking images is currently not supported"):
            await node.truncate(512 * 1024)
        with pytest.raises(BlockError, match="Unsupported preallocation mode 'full'"):
            await node.truncate(2 * MIB, prealloc=Prealloc.FULL)
        with pytest.raises(BlockError, match="Invalid image size specified"):
            await node.truncate(2 * MIB + 1)
        await node.truncate(2 * MIB)
        assert node.total_bytes == 2 * MIB
        await node.driver.change_backing_file(base.name, "raw")
        assert node.driver.backing_file_name() == (base.name, "raw")
        st = await node.block_status(4096, 8192)
        assert st.flags & Status.DATA and st.length == 4096 and st.offset is not None
        with pytest.raises(NotSupported):    # QEMU's QED can't be emptied: commit keeps it
            await node.driver.make_empty()
        await node.close()
    run(go())
    info = json.loads(qemu_img("info", "--output=json", str(img)).stdout)
    assert info["virtual-size"] == 2 * MIB and info["backing-filename"] == base.name
    assert info["backing-filename-format"] == "raw"
    data = run(read_all(img))
    assert data[4096:8192] == b"q" * 4096 and data[8192:MIB] == b"\xab" * (MIB - 8192)
    assert qemu_check(img)["leaks"] == 0

    async def unset() -> None:
        node = await open_qed(img)
        assert not node.driver.has_zero_init()
        await node.driver.change_backing_file(None, None)
        await node.close()
    run(unset())
    assert "backing-filename" not in json.loads(
        qemu_img("info", "--output=json", str(img)).stdout)


def test_block_status_matches_qemu_map(tmp_path: Path) -> None:
    img = tmp_path / "img.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "cluster_size=4k", str(img), "1M")
    qemu_io("-f", "qed", "-c", "write -z 0 8k", "-c", "write -P 5 8k 8k", str(img))
    node = run(open_qed(img, read_only=True))
    try:
        st = [run(node.block_status(o, MIB)) for o in (0, 8192, 16384)]
    finally:
        run(node.close())
    assert st[0].flags & Status.ZERO and st[0].length == 8192
    assert st[1].flags & Status.DATA and st[1].length == 8192 and st[1].offset == 0x9000
    assert not st[2].allocated


def test_probe_and_info(tmp_path: Path) -> None:
    img = tmp_path / "img.qed"
    run(create(img, MIB, cluster_size=1 << 20))
    assert probe_format(img.read_bytes()[:2048], str(img)) == "qed"
    node = run(open_qed(img, read_only=True))
    assert node.driver.get_info().cluster_size == 1 << 20
    assert not node.driver.get_info().is_dirty
    run(node.close())


@pytest.mark.parametrize("opts,message", [
    ({"cluster_size": 1024}, "QED cluster size must be within range [4096, 67108864] and power of 2"),
    ({"table_size": 3}, "QED table size must be within range [1, 16] and power of 2"),
    ({"size": 1 << 50}, "QED image size must be a non-zero multiple of cluster size and less than 70368744177664 bytes"),
    ({"preallocation": "metadata"}, "Unsupported preallocation mode: metadata"),
])
def test_create_refusals(tmp_path: Path, opts: dict, message: str) -> None:
    size = opts.pop("size", MIB)
    with pytest.raises(BlockError) as exc:
        run(create(tmp_path / "x.qed", size, **opts))
    assert str(exc.value) == message


def _hdr(**kw: int) -> bytes:
    fields = dict(magic=layout.MAGIC, cluster_size=65536, table_size=4, header_size=1,
                  l1_table_offset=65536, image_size=MIB)
    fields.update(kw)
    return layout.Header(**fields).build()


@pytest.mark.parametrize("fields,file_size,message", [
    ({"magic": 1}, 327680, "Image not in QED format"),
    ({"features": 8, "cluster_size": 5}, 327680, "Unsupported QED features: 8"),
    ({"cluster_size": 1000}, 327680, "QED cluster size is invalid"),
    ({"cluster_size": 1 << 27}, 327680, "QED cluster size is invalid"),
    ({"table_size": 3}, 327680, "QED table size is invalid"),
    ({"table_size": 32}, 327680, "QED table size is invalid"),
    ({"image_size": 1000}, 327680, "QED image size is invalid"),
    ({"image_size": 1 << 60}, 327680, "QED image size is invalid"),
    ({"l1_table_offset": 65537}, 327680, "QED table offset is invalid"),
    ({"l1_table_offset": 655360}, 327680, "QED table offset is invalid"),
    ({"l1_table_offset": 0}, 327680, "QED table offset is invalid"),
    ({"l1_table_offset": (1 << 64) - 65536}, 327680, "QED table offset is invalid"),
    ({}, 300000, "QED table offset is invalid"),
    ({"header_size": 100}, 327680, "QED table offset is invalid"),
    ({"header_size": 70000, "l1_table_offset": 70000 * 65536}, 70004 * 65536,
     "QED header size is too large"),
    ({"features": 1, "backing_filename_offset": 65530, "backing_filename_size": 100}, 327680,
     "QED backing filename offset is invalid"),
])
def test_hostile_headers(tmp_path: Path, fields: dict, file_size: int, message: str) -> None:
    img = tmp_path / "bad.qed"
    with open(img, "wb") as f:
        f.write(_hdr(**fields))
        f.truncate(file_size)
    with pytest.raises(BlockError) as exc:
        run(open_qed(img, read_only=True))
    assert message in str(exc.value)
    if file_size < 1 << 30:
        out = qemu_img("info", "-f", "qed", str(img), check=False)
        assert message in out.stderr


def test_hostile_tables(tmp_path: Path) -> None:
    """Bad L2 and data offsets are refused at use, not followed."""
    img = tmp_path / "img.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "cluster_size=4k", str(img), "20M")
    qemu_io("-f", "qed", "-c", "write -P 5 0 4k", "-c", "write -P 6 16M 4k", str(img))
    good = img.read_bytes()
    for off, value in ((0x1000, 0x6000 + 8), (0x1000, 1 << 62), (0x6000, 0x123),
                       (0x6000, 0x10_0000_0000), (0x6000, 0xffff_ffff_ffff_f000)):
        buf = bytearray(good)
        struct.pack_into("<Q", buf, off, value)
        img.write_bytes(bytes(buf))

        async def go() -> None:
            node = await open_qed(img)
            try:
                with pytest.raises(BlockError, match="invalid"):
                    await node.read(0, 4096)
                with pytest.raises(BlockError, match="invalid"):
                    await node.write(0, b"x")
                assert await node.read(16 << 20, 4) == b"\x06" * 4
            finally:
                await node.close()
        run(go())


def test_reopen_read_only_clears_need_check(tmp_path: Path) -> None:
    from blocklayer.core.reopen import reopen_set_read_only
    img = tmp_path / "img.qed"
    run(create(img, MIB))

    async def go() -> None:
        node = await open_qed(img)
        await node.write(0, b"x" * 100)
        assert _header(img).has(layout.F_NEED_CHECK)
        await reopen_set_read_only(node, True)
        assert not _header(img).has(layout.F_NEED_CHECK)
        assert await node.read(0, 100) == b"x" * 100
        await reopen_set_read_only(node, False)
        await node.write(MIB // 2, b"y")
        assert _header(img).has(layout.F_NEED_CHECK)
        await node.close()
    run(go())
    assert not _header(img).has(layout.F_NEED_CHECK)


def test_concurrent_allocating_writes_to_one_cluster(tmp_path: Path) -> None:
    """Disjoint writes into the same unallocated clusters, all at once: the first
    allocates, the others find the cluster allocated and write in place."""
    img, base = tmp_path / "img.qed", tmp_path / "base.raw"
    base.write_bytes(b"\x5a" * MIB)
    run(create(img, MIB, cluster_size=65536, backing_file=base.name, backing_fmt="raw"))

    async def go() -> bytes:
        node = await open_qed(img)
        await asyncio.gather(*(node.write(i * 1000, bytes([i + 1]) * 900) for i in range(64)))
        data = await node.read(0, 65536)
        await node.close()
        return data
    data = run(go())
    expect = bytearray(b"\x5a" * 65536)
    for i in range(64):
        expect[i * 1000:i * 1000 + 900] = bytes([i + 1]) * 900
    assert data == expect
    assert qemu_check(img)["allocated-clusters"] == 1
