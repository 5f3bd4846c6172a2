"""``null-co`` and ``null-aio``: a device of a given size that drops writes and reads
zeroes (or leaves reads unfilled with ``read-zeroes=off``).  The smallest driver, the
one to copy for a new protocol driver."""
from __future__ import annotations

import asyncio
from typing import Any

from ..core.driver import BlockDriver, BlockStatus, Cap, Prealloc, ReqFlag, Status
from ..core.options import OpenFlags, parse_bool, parse_size


class NullDriver(BlockDriver):
    format_name = "null-co"
    is_protocol = True
    caps = Cap.WRITE_ZEROES | Cap.BLOCK_STATUS | Cap.ALLOCATES_IN_ORDER
    open_options = ("filename", "size", "latency-ns", "read-zeroes")

    size = 1 << 30
    latency_ns = 0

    @classmethod
    def exact_filename(cls, options: dict[str, Any]) -> str | None:
        """``null-co://`` while no option that changes what it reads is given (QEMU's
        strong run-time options: size and read-zeroes), else None (a ``json:`` name)."""
        if any(k in options for k in ("size", "read-zeroes")):
            return None
        return f"{cls.format_name}://"
    read_zeroes = False

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        self.size = parse_size(options.get("size", 1 << 30), "size")
        self.latency_ns = int(options.get("latency-ns", 0))
        self.read_zeroes = parse_bool(options.get("read-zeroes", False), "read-zeroes")

    async def _latency(self) -> None:
        if self.latency_ns:
            await asyncio.sleep(self.latency_ns / 1e9)

    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes:
        await self._latency()
        return bytes(length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        await self._latency()

    async def write_zeroes(self, offset: int, length: int, flags: ReqFlag) -> None:
        await self._latency()

    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        flags = Status.OFFSET_VALID | (Status.ZERO if self.read_zeroes else Status.NONE)
        return BlockStatus(flags, length, offset, self.node)

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        self.size = size

    async def get_length(self) -> int:
        return self.size

    async def get_allocated_file_size(self) -> int:
        return 0

    def has_zero_init(self) -> bool:
        return self.read_zeroes


class NullAioDriver(NullDriver):
    format_name = "null-aio"
