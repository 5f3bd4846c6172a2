"""The conformance suite every driver and filter stack subclasses.

A subclass says how to make an image (``make``) and how to open it (``open_args``);
the suite checks what every writable node must do through the request path, including
a short random model test against a bytearray with requests in flight together.
"""
from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from blocklayer.core.driver import Status
from blocklayer.core.errors import BlockError, NotSupported, ReadOnlyError
from blocklayer.core.node import BlockNode
from blocklayer.core.open import open_image

MiB = 1 << 20


class DriverConformance:
    size = 4 * MiB
    can_discard_to_zero = False     # does discard make data read back as zeroes?
    stores_data = True              # False: writes are dropped, reads are zeroes (null-co)

    def kept(self, data: bytes) -> bytes:
        """What reads back after writing ``data``."""
        return data if self.stores_data else bytes(len(data))

    def make(self, tmp_path: Path) -> str:
        """Create an empty image of ``self.size`` bytes; return its filename."""
        raise NotImplementedError

    def open_args(self, filename: str) -> dict[str, Any]:
        """Keyword arguments for open_image (``fmt=...`` or ``options=...``)."""
        raise NotImplementedError

    def verify(self, filename: str) -> None:
        """After each test: an outside check of the image (QEMU's ``check``)."""

    async def open(self, filename: str, **kw: Any) -> BlockNode:
        args = self.open_args(filename)
        return await open_image(args.pop("filename", filename), **args, **kw)

    def run(self, tmp_path: Path, body: Any) -> None:
        filename = self.make(tmp_path)

        async def main() -> None:
            node = await self.open(filename)
            try:
                await body(node)
            finally:
                await node.close()
        asyncio.run(main())
        self.verify(filename)

    # ---- the checks --------------------------------------------------------------------
    def test_length_and_fresh_reads_are_zero(self, tmp_path: Path) -> None:
        async def body(node: BlockNode) -> None:
            assert node.total_bytes == self.size
            assert bytes(await node.read(0, 65536)) == bytes(65536)
            assert bytes(await node.read(self.size - 512, 512)) == bytes(512)
        self.run(tmp_path, body)

    def test_write_read_roundtrip_unaligned(self, tmp_path: Path) -> None:
        async def body(node: BlockNode) -> None:
            await node.write(1, b"\x01" * 70000)
            await node.write(131071, b"\x02" * 3)
            assert bytes(await node.read(0, 2)) == self.kept(b"\x00\x01")
            assert bytes(await node.read(69999, 4)) == self.kept(b"\x01\x01\x00\x00")
            assert bytes(await node.read(131070, 5)) == self.kept(b"\x00\x02\x02\x02\x00")
        self.run(tmp_path, body)

    def test_write_zeroes_and_block_status(self, tmp_path: Path) -> None:
        async def body(node: BlockNode) -> None:
            await node.write(0, b"\xff" * (2 * MiB))
            await node.write_zeroes(4096, 65536 * 4)
            await node.write_zeroes(100, 3)
            data = bytes(await node.read(0, 2 * MiB))
            assert data[99:104] == self.kept(b"\xff\x00\x00\x00\xff")
            assert data[4096:4096 + 262144] == bytes(262144)
            pos = 0
            while pos < self.size:     # block status covers the image with no gaps
                st = await node.block_status(pos, self.size - pos)
                assert st.length > 0
                if pos == 0:
                    assert st.flags & (Status.DATA | Status.ZERO)
                pos += st.length
            assert pos == self.size
        self.run(tmp_path, body)

    def test_discard_flush_and_reopen(self, tmp_path: Path) -> None:
        filename = self.make(tmp_path)

        async def main() -> None:
            node = await self.open(filename)
            await node.write(MiB, b"\x5a" * MiB)
            await node.discard(MiB, 65536)
            await node.flush()
            await node.close()
            node = await self.open(filename)
            data = bytes(await node.read(MiB, MiB))
            assert data[65536:] == self.kept(b"\x5a" * (MiB - 65536))
            if self.can_discard_to_zero:
                assert data[:65536] == bytes(65536)
            await node.close()
        asyncio.run(main())
        self.verify(filename)

    def test_out_of_range_and_read_only(self, tmp_path: Path) -> None:
        filename = self.make(tmp_path)

        async def main() -> None:
            node = await self.open(filename, read_only=True)
            with pytest.raises(BlockError):
                await node.read(self.size - 1, 2)
            with pytest.raises(BlockError):
                await node.write(0, b"x")
            with pytest.raises(BlockError):
                await node.read(-1, 1)
            await node.close()
        asyncio.run(main())

    def test_random_model_with_requests_in_flight(self, tmp_path: Path) -> None:
        rng = random.Random(2)
        model = bytearray(self.size)

        async def body(node: BlockNode) -> None:
            for _ in range(25):
                cuts = sorted(rng.sample(range(0, self.size, 512), 16)
                              + [rng.randrange(self.size) for _ in range(8)])
                ops = []
                for start, end in zip(cuts[::2], cuts[1::2]):
                    if end <= start:
                        continue
                    kind = rng.choice(["write", "write", "zero", "read"])
                    ops.append((kind, start, end - start, rng.randrange(1, 256)))

                async def one(kind: str, off: int, n: int, pat: int) -> None:
                    if kind == "write":
                        await node.write(off, bytes([pat]) * n)
                    elif kind == "zero":
                        await node.write_zeroes(off, n)
                    else:
                        assert bytes(await node.read(off, n)) == bytes(model[off:off + n])
                await asyncio.gather(*(one(*op) for op in ops))
                for kind, off, n, pat in ops:
                    if kind == "write" and self.stores_data:
                        model[off:off + n] = bytes([pat]) * n
                    elif kind == "zero":
                        model[off:off + n] = bytes(n)
            assert bytes(await node.read(0, self.size)) == bytes(model)
        self.run(tmp_path, body)

    def test_copy_range_copies_or_is_not_supported(self, tmp_path: Path) -> None:
        """Each copy into a second image of the same stack either lands whole or raises
        NotSupported (the caller then reads and writes): the content is the model's."""
        target_dir = tmp_path / "target"
        target_dir.mkdir()
        dst_name = self.make(target_dir)
        rng = random.Random(5)
        copies = [(0, 0, 65536), (65536, 3 * 65536, 2 * 65536), (4096, MiB + 4096, 8192),
                  (MiB - 512, 2 * MiB - 512, 70000), (2 * MiB, 5000, 1), (3 * MiB, 3 * MiB, MiB)]

        async def body(src: BlockNode) -> None:
            for off in range(0, self.size, MiB // 2):
                await src.write(off, bytes([rng.randrange(1, 256)]) * (MiB // 4))
            dst = await self.open(dst_name)
            try:
                await dst.write(MiB, b"\x33" * MiB)       # overwritten in place, or around
                model = bytearray(await dst.read(0, self.size))
                for s_off, d_off, n in copies:
                    data = bytes(await src.read(s_off, n))
                    try:
                        await asyncio.wait_for(src.copy_range(s_off, dst, d_off, n), 30)
                    except NotSupported:
                        await dst.write(d_off, data)
                    model[d_off:d_off + n] = data
                assert bytes(await dst.read(0, self.size)) == bytes(model)
                with pytest.raises(BlockError):
                    await src.copy_range(self.size - 512, dst, 0, 1024)
                with pytest.raises(BlockError):
                    await src.copy_range(0, dst, self.size - 512, 1024)
            finally:
                await dst.close()
            self.verify(dst_name)
        self.run(tmp_path, body)

    def test_copy_range_into_a_read_only_node_is_refused(self, tmp_path: Path) -> None:
        filename = self.make(tmp_path)

        async def main() -> None:
            node = await self.open(filename, read_only=True)
            try:
                with pytest.raises(ReadOnlyError):
                    await node.copy_range(0, node, MiB, 65536)
            finally:
                await node.close()
        asyncio.run(main())

    def test_copy_range_within_one_node(self, tmp_path: Path) -> None:
        """A copy inside one image never waits for itself."""
        async def body(node: BlockNode) -> None:
            await node.write(0, b"\x42" * 65536)
            try:
                await asyncio.wait_for(node.copy_range(0, node, 2 * MiB, 65536), 30)
            except NotSupported:
                await node.write(2 * MiB, b"\x42" * 65536)
            assert bytes(await node.read(2 * MiB, 65536)) == self.kept(b"\x42" * 65536)
        self.run(tmp_path, body)
