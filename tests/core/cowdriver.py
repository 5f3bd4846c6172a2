"""A tiny copy-on-write format for tests of the graph and request path.

Layout: a 512-byte header ``TCOW`` + u64 size + u16 name length + backing name, then
one allocation byte per 4 KiB block at offset 512, data blocks at 64 KiB + block*4 KiB.
Small on purpose: it is also the proof that a format driver is quick to add.
"""
from __future__ import annotations

import struct
from typing import Any

from blocklayer.core.driver import BlockDriver, BlockStatus, Cap, Limits, ReqFlag, Status
from blocklayer.core.errors import ImageCorrupt
from blocklayer.core.options import OpenFlags

MAGIC = b"TCOW"
BLOCK = 4096
MAP_OFF = 512
DATA_OFF = 65536


class CowDriver(BlockDriver):
    format_name = "test-cow"
    is_format = True
    supports_backing = True
    caps = Cap.BLOCK_STATUS

    @classmethod
    def probe(cls, header: bytes, filename: str | None) -> int:
        return 100 if header[:4] == MAGIC else 0

    @classmethod
    async def create(cls, filename: str, options: dict[str, Any], *, open_file: Any = None) -> None:
        node = await open_file(filename)
        name = (options.get("backing_file") or "").encode()
        size = int(options["size"])
        await node.write(0, MAGIC + struct.pack(">QH", size, len(name)) + name)
        await node.write(MAP_OFF, bytes(-(-size // BLOCK)))
        await node.close()

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        file = self.node.file
        head = await file.read(0, 512)
        if head[:4] != MAGIC:
            raise ImageCorrupt("not a test-cow image")
        self.size, n = struct.unpack(">QH", head[4:14])
        self.backing_name = head[14:14 + n].decode() or None
        self.map = bytearray(await file.read(MAP_OFF, -(-self.size // BLOCK)))

    def backing_file_name(self) -> tuple[str | None, str | None]:
        return self.backing_name, None

    def limits(self) -> Limits:
        return Limits(request_alignment=BLOCK)

    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes:
        out = bytearray()
        for blk in range(offset // BLOCK, (offset + length) // BLOCK):
            if self.map[blk]:
                out += await self.node.file.read(DATA_OFF + blk * BLOCK, BLOCK)
            elif self.node.backing is not None:
                out += await self.node.backing.read(blk * BLOCK, BLOCK) \
                    if blk * BLOCK < self.node.backing.total_bytes else bytes(BLOCK)
            else:
                out += bytes(BLOCK)
        return bytes(out)

    async def write(self, offset: int, data: Any, flags: ReqFlag) -> None:
        await self.node.file.write(DATA_OFF + offset, data)
        for blk in range(offset // BLOCK, (offset + len(data)) // BLOCK):
            if not self.map[blk]:
                self.map[blk] = 1
                await self.node.file.write(MAP_OFF + blk, b"\x01")

    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        blk = offset // BLOCK
        state = self.map[blk]
        n = 1
        while (blk + n) * BLOCK < offset + length and self.map[blk + n] == state:
            n += 1
        if state:
            return BlockStatus(Status.DATA | Status.OFFSET_VALID, n * BLOCK,
                               DATA_OFF + offset, self.node.file)
        return BlockStatus(Status.NONE, n * BLOCK)

    async def change_backing_file(self, backing_file: str | None, backing_fmt: str | None) -> None:
        name = (backing_file or "").encode()
        await self.node.file.write(4, struct.pack(">QH", self.size, len(name)) + name)
        self.backing_name = backing_file

    async def get_length(self) -> int:
        return self.size
