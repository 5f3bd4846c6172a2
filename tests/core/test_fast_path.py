"""The synchronous fast path of reads (``node_try_read``): taken for an aligned read of
a raw image over a file in page cache, accounted as the full path accounts, and left
whenever a serialising request is in flight (the read then waits for it)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from blocklayer.core import io as _io
from blocklayer.core.driver import Status
from blocklayer.core.open import open_image
from blocklayer.protocols import file as file_mod


def _image(tmp_path: Path) -> str:
    path = tmp_path / "a.raw"
    path.write_bytes(bytes(range(256)) * 256)      # 64 KiB
    return str(path)


def test_an_aligned_cached_read_never_enters_the_async_driver(tmp_path: Path) -> None:
    async def main() -> None:
        node = await open_image(_image(tmp_path), fmt="raw", read_only=True)
        file = node.file
        assert file is not None

        async def no_read(*args: object) -> bytes:
            raise AssertionError("the async read ran")
        file.driver.read = no_read      # type: ignore[method-assign]
        node.driver.read = no_read      # type: ignore[method-assign]
        data = await node.read(4096, 4096)
        assert bytes(data) == (bytes(range(256)) * 16)
        for n in (node, file):
            assert n.stats.read.ops == 1 and n.stats.read.bytes == 4096
            assert n.state.in_flight == 0 and n.state.tracked == []
        await node.close()
    asyncio.run(main())


def test_a_read_waits_for_an_overlapping_serialising_request(tmp_path: Path) -> None:
    async def main() -> None:
        node = await open_image(_image(tmp_path), fmt="raw")
        file = node.file
        assert file is not None
        release = asyncio.Event()
        entered = asyncio.Event()

        async def rmw() -> None:      # what an unaligned write holds while it merges
            async with _io.tracked(file, 0, 8192, serialising=True):
                entered.set()
                await release.wait()
                await file.driver.write(0, b"\xff" * 8192, _io.ReqFlag.NONE)
        holder = asyncio.create_task(rmw())
        await entered.wait()
        reader = asyncio.create_task(node.read(4096, 4096))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not reader.done()        # the fast path would have read the old data
        release.set()
        await holder
        assert bytes(await reader) == b"\xff" * 4096
        assert file.state.serialising == 0
        await node.close()
    asyncio.run(main())


def test_block_status_walks_once_and_sees_every_change(tmp_path: Path) -> None:
    """One walk answers many extents; a write, a discard or a write through another
    node of the same file is seen by the next answer."""
    path = tmp_path / "frag.raw"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
        for i in range(0, 256, 2):
            f.seek(i * 4096)
            f.write(b"x" * 4096)

    async def main() -> None:
        node = await open_image(str(path), fmt="raw", options={"discard": "unmap"})
        other = await open_image(str(path), fmt="raw", read_only=True,
                                 options={"file.locking": "off"})
        file = node.file
        assert file is not None
        walks = 0
        real_walk = file_mod.walk

        def counting(*args: object) -> object:
            nonlocal walks
            walks += 1
            return real_walk(*args)    # type: ignore[arg-type]
        file_mod.walk = counting       # type: ignore[assignment]
        try:
            async def kinds(n: object) -> list[bool]:
                out, pos = [], 0
                while pos < 1 << 20:
                    st = await n.block_status(pos, (1 << 20) - pos)   # type: ignore[attr-defined]
                    out.append(bool(st.flags & Status.DATA))
                    pos += st.length
                return out
            assert await kinds(node) == [True, False] * 128
            assert walks < 20          # budgets of 16, 64, 256 extents
            last = 254 * 4096       # data, then a hole to the end: inside the last walk
            await node.write(last + 4096, b"y" * 4096)
            st = await other.block_status(last, 8192)
            assert st.flags & Status.DATA and st.length == 8192
            await node.discard(last, 8192)
            st = await other.block_status(last, 8192)
            assert not st.flags & Status.DATA and st.length == 8192
        finally:
            file_mod.walk = real_walk   # type: ignore[assignment]
        await other.close()
        await node.close()
    asyncio.run(main())
