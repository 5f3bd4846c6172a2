"""The synchronous fast path of reads (``node_try_read``): taken for an aligned read of
a raw image over a file in page cache, accounted as the full path accounts, and left
whenever a serialising request is in flight (the read then waits for it)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from blocklayer.core import io as _io
from blocklayer.core.open import open_image


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
