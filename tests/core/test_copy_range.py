"""copy_range: the request path around copy offloading (accounting, notifiers, drain),
the qcow2 layout it gives, and the cases that must answer NotSupported."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from blocklayer.protocols.file import _copy_file_range
from blocklayer.core.errors import NotSupported
from blocklayer.core.node import BlockNode
from blocklayer.core.open import open_image
from blocklayer.core.options import CacheMode, OpenFlags
from tests.conftest import qemu_img, qemu_io

MiB = 1 << 20


def _raw_with_data(path: Path, size: int = 4 * MiB) -> Path:
    qemu_img("create", "-q", "-f", "raw", str(path), str(size))
    qemu_io("-f", "raw", "-c", "write -P 7 0 1M", "-c", "write -P 9 2M 1M", str(path))
    return path


def _qcow2(path: Path, size: str = "4M", *opts: str) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", *opts, str(path), size)
    return path


def test_a_copy_is_a_read_of_the_source_and_a_write_of_the_target(tmp_path: Path) -> None:
    src_path = _raw_with_data(tmp_path / "s.raw")
    dst_path = _qcow2(tmp_path / "d.qcow2")
    seen: list[tuple[str, int, int]] = []

    async def before_write(node: BlockNode, offset: int, length: int) -> None:
        seen.append(("before", offset, length))

    async def main() -> None:
        src = await open_image(str(src_path), fmt="raw", read_only=True)
        dst = await open_image(str(dst_path), fmt="qcow2")
        dst.write_threshold = MiB
        dst.on_write_threshold = lambda node, over, at: seen.append(("threshold", over, at))
        dst.before_write.append(before_write)
        dst.write_observers.append(lambda node, off, n: seen.append(("written", off, n)))
        try:
            await src.copy_range(65536, dst, MiB - 65536, 3 * 65536)
            assert bytes(await dst.read(MiB - 65536, 3 * 65536)) == b"\x07" * (3 * 65536)
            n = 3 * 65536
            assert (src.stats.read.bytes, src.stats.copy_range.bytes) == (n, n)
            assert (dst.stats.write.bytes, dst.stats.copy_range.bytes) == (n, n)
            assert dst.file is not None and src.file is not None
            assert dst.file.stats.copy_range.bytes == n      # the host file got the copy
            assert src.file.stats.copy_range.bytes == n
            assert dst.stats.wr_highest_offset == MiB + 2 * 65536
        finally:
            await dst.close()
            await src.close()
    asyncio.run(main())
    assert seen == [("threshold", 2 * 65536, MiB), ("before", MiB - 65536, 3 * 65536),
                    ("written", MiB - 65536, 3 * 65536)]


def test_a_writethrough_target_is_flushed_after_the_copy(tmp_path: Path) -> None:
    src_path = _raw_with_data(tmp_path / "s.raw")
    dst_path = _raw_with_data(tmp_path / "d.raw")

    async def main() -> None:
        src = await open_image(str(src_path), fmt="raw", read_only=True)
        dst = await open_image(str(dst_path), fmt="raw",
                               flags=OpenFlags(cache=CacheMode.parse("writethrough")))
        try:
            await src.copy_range(0, dst, MiB, 65536)
            assert dst.stats.flush.ops == 1
        finally:
            await dst.close()
            await src.close()
    asyncio.run(main())


# ---- qcow2: the layout of a copy is the layout of a write ---------------------------------

COPIES = [(0, 2 * 65536), (200 * 1024, 10 * 1024), (MiB + 512, 3 * MiB // 2),
          (5 * 65536 + 4096, 4096), (5 * 65536 + 8192, 65536)]


@pytest.mark.parametrize("opts", [(), ("-o", "cluster_size=4k"), ("-o", "extended_l2=on"),
                                  ("-o", "compat=0.10,cluster_size=512")],
                         ids=["64k", "4k", "extended_l2", "v2-512"])
def test_qcow2_copies_lay_out_clusters_as_writes(tmp_path: Path, opts: tuple[str, ...]) -> None:
    """The same requests as writes and as copies give byte-identical image files,
    copy-on-write from a backing file included."""
    src_path = _raw_with_data(tmp_path / "s.raw")
    base = _qcow2(tmp_path / "base.qcow2")
    qemu_io("-c", "write -P 5 0 4M", str(base))
    images = []
    for name in ("written.qcow2", "copied.qcow2"):
        images.append(_qcow2(tmp_path / name, "4M", *opts, "-b", "base.qcow2", "-F", "qcow2"))

    async def main() -> None:
        src = await open_image(str(src_path), fmt="raw", read_only=True)
        written = await open_image(str(images[0]), fmt="qcow2")
        copied = await open_image(str(images[1]), fmt="qcow2")
        try:
            for off, n in COPIES:
                await written.write(off, await src.read(off, n))
                await src.copy_range(off, copied, off, n)
            assert copied.stats.copy_range.bytes == sum(n for _, n in COPIES)
        finally:
            for node in (copied, written, src):
                await node.close()
    asyncio.run(main())
    assert images[0].read_bytes() == images[1].read_bytes()
    res = qemu_img("check", str(images[1]), check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_qcow2_source_passes_backing_data_on(tmp_path: Path) -> None:
    """Unallocated clusters are copied from the backing file, within its size."""
    base = _qcow2(tmp_path / "base.qcow2", "1M")
    qemu_io("-c", "write -P 5 0 1M", str(base))
    top = _qcow2(tmp_path / "top.qcow2", "2M", "-b", "base.qcow2", "-F", "qcow2")
    qemu_io("-c", "write -P 6 64k 64k", str(top))
    dst_path = tmp_path / "d.raw"
    qemu_img("create", "-q", "-f", "raw", str(dst_path), "2M")

    async def main() -> None:
        src = await open_image(str(top), fmt="qcow2", read_only=True)
        dst = await open_image(str(dst_path), fmt="raw")
        try:
            await src.copy_range(0, dst, 0, MiB)
            assert src.backing is not None and src.backing.stats.copy_range.bytes == MiB - 65536
            with pytest.raises(NotSupported):         # beyond the backing file: zeroes
                await src.copy_range(MiB, dst, MiB, 65536)
        finally:
            await dst.close()
            await src.close()
    asyncio.run(main())
    data = dst_path.read_bytes()
    assert data[:MiB] == b"\x05" * 65536 + b"\x06" * 65536 + b"\x05" * (MiB - 2 * 65536)


# ---- what cannot be offloaded ---------------------------------------------------------------

async def _expect_not_supported(src_name: str, src_opts: dict[str, Any], dst_name: str,
                                offset: int, length: int) -> None:
    src = await open_image(src_name, src_opts, read_only=True)
    dst = await open_image(dst_name, fmt="raw")
    try:
        with pytest.raises(NotSupported):
            await src.copy_range(offset, dst, offset, length)
        assert src.stats.read.failed == 0 and dst.stats.write.failed == 0
        assert src.state.in_flight == 0 and dst.state.in_flight == 0
    finally:
        await dst.close()
        await src.close()


@pytest.mark.parametrize("case", ["compressed", "zero-cluster", "blkdebug", "unaligned-direct"])
def test_what_cannot_be_offloaded_is_not_supported(tmp_path: Path, case: str) -> None:
    raw = _raw_with_data(tmp_path / "s.raw")
    dst = tmp_path / "d.raw"
    qemu_img("create", "-q", "-f", "raw", str(dst), "4M")
    offset, length = 0, 65536
    opts: dict[str, Any]
    if case == "compressed":
        src = tmp_path / "z.qcow2"
        qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(src))
        opts = {"driver": "qcow2"}
    elif case == "zero-cluster":
        src = _qcow2(tmp_path / "z.qcow2")
        qemu_io("-c", "write -z 0 64k", str(src))
        opts = {"driver": "qcow2"}
    elif case == "blkdebug":
        src = raw
        opts = {"driver": "raw", "file.driver": "blkdebug", "file.image.driver": "file",
                "file.image.filename": str(raw)}
    else:
        src, offset, length = raw, 4096 + 100, 512
        opts = {"driver": "raw", "cache.direct": "on"}
    filename = str(src) if "file.image.filename" not in opts else None
    asyncio.run(_expect_not_supported(filename, opts, str(dst), offset, length))  # type: ignore[arg-type]


def test_copy_file_range_helper_refuses_what_the_kernel_cannot(tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.write_bytes(b"\x01" * 8192)
    dst = tmp_path / "d"
    dst.write_bytes(b"")
    a, b = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDWR)
    try:
        _copy_file_range(a, 0, b, 0, 8192)
        assert dst.read_bytes() == b"\x01" * 8192
        with pytest.raises(NotSupported):              # the source ends inside the range
            _copy_file_range(a, 4096, b, 0, 8192)
        with pytest.raises(NotSupported):              # overlapping, within one file
            _copy_file_range(b, 0, b, 512, 4096)
    finally:
        os.close(a)
        os.close(b)


def test_a_copy_waits_while_the_target_is_drained(tmp_path: Path) -> None:
    src_path = _raw_with_data(tmp_path / "s.raw")
    dst_path = _raw_with_data(tmp_path / "d.raw")

    async def main() -> None:
        src = await open_image(str(src_path), fmt="raw", read_only=True)
        dst = await open_image(str(dst_path), fmt="raw")
        try:
            async with dst.drained():
                task = asyncio.create_task(src.copy_range(0, dst, 3 * MiB, 65536))
                await asyncio.sleep(0.05)
                assert not task.done()
                assert bytes(await dst.read(3 * MiB, 4)) == bytes(4)
            await asyncio.wait_for(task, 10)
            assert bytes(await dst.read(3 * MiB, 4)) == b"\x07" * 4
        finally:
            await dst.close()
            await src.close()
    asyncio.run(main())
