"""``blkdebug``: a pass-through filter whose limits and failures are set by options.

Used to test the request path: ``align`` sets the request alignment, ``max-transfer``
splits requests, ``opt-write-zero`` / ``max-write-zero`` / ``opt-discard`` /
``max-discard`` shape zeroing and discard, and ``inject-error.*`` makes chosen requests
fail (``inject-error.iotype=read|write|flush|...``, ``errno``, ``once``,
``immediately``; offsets with ``inject-error.offset``).
"""
from __future__ import annotations

import errno as errnos
from dataclasses import dataclass
from typing import Any

from ..driver import BlockDriver, BlockStatus, Limits, Prealloc, ReqFlag, Status
from ..errors import BlockError, InvalidArgument
from ..options import OpenFlags, extract_prefix, parse_bool, parse_size


@dataclass
class InjectError:
    iotype: str = "read"
    errno: int = errnos.EIO
    offset: int = -1
    once: bool = False
    fired: bool = False

    def matches(self, kind: str, offset: int, length: int) -> bool:
        if self.iotype != kind or (self.once and self.fired):
            return False
        return self.offset < 0 or offset <= self.offset < offset + max(length, 1)


class BlkdebugDriver(BlockDriver):
    format_name = "blkdebug"
    is_filter = True
    protocol_prefixes = ("blkdebug",)
    file_child_key = "image"
    can_write_zeroes = True
    can_discard = True
    can_block_status = True
    can_fua = True
    can_truncate = True
    open_options = ("config", "x-image", "align", "max-transfer", "opt-write-zero",
                    "max-write-zero", "opt-discard", "max-discard", "inject-error",
                    "set-state", "take-child-perms", "unshare-child-perms")

    def _child(self):  # type: ignore[no-untyped-def]
        child = self.node.file
        assert child is not None
        return child

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        if self.node.file is None:
            raise InvalidArgument("blkdebug needs a 'file' child")
        inner = self._child().driver.limits()

        def size(key: str) -> int:
            return parse_size(options.get(key, 0), key)
        self.align = size("align") or inner.request_alignment
        if self.align & (self.align - 1):
            raise InvalidArgument("Cannot meet constraints with align " + str(self.align))
        self.max_transfer = size("max-transfer")
        self.opt_write_zero = size("opt-write-zero")
        self.max_write_zero = size("max-write-zero")
        self.opt_discard = size("opt-discard")
        self.max_discard = size("max-discard")
        self.errors = _parse_inject(options)

    def limits(self) -> Limits:
        inner = self._child().driver.limits()
        return Limits(request_alignment=max(self.align, inner.request_alignment),
                      max_transfer=self.max_transfer or inner.max_transfer,
                      pwrite_zeroes_alignment=self.opt_write_zero,
                      max_pwrite_zeroes=self.max_write_zero,
                      pdiscard_alignment=self.opt_discard, max_pdiscard=self.max_discard)

    def _check(self, kind: str, offset: int, length: int) -> None:
        for err in self.errors:
            if err.matches(kind, offset, length):
                err.fired = True
                raise BlockError(f"blkdebug: injected {kind} error", err.errno)
        align = self.align
        if kind in ("read", "write") and (offset % align or length % align):
            raise BlockError(f"blkdebug: unaligned {kind} at {offset}+{length}", errnos.EINVAL)
        if self.max_transfer and kind in ("read", "write") and length > self.max_transfer:
            raise BlockError(f"blkdebug: {kind} of {length} over max-transfer", errnos.EINVAL)

    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes:
        self._check("read", offset, length)
        return await self._child().read(offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        self._check("write", offset, len(data))
        await self._child().write(offset, data, flags & ReqFlag.FUA)

    async def write_zeroes(self, offset: int, length: int, flags: ReqFlag) -> None:
        self._check("write_zeroes", offset, length)
        await self._child().write_zeroes(offset, length, flags)

    async def discard(self, offset: int, length: int) -> None:
        self._check("discard", offset, length)
        await self._child().discard(offset, length)

    async def flush_to_disk(self) -> None:
        self._check("flush", 0, 0)

    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        self._check("block_status", offset, length)
        return BlockStatus(Status.RAW | Status.OFFSET_VALID, length, offset, self._child())

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        await self._child().truncate(size, exact, prealloc)

    async def get_length(self) -> int:
        return self._child().total_bytes

    def has_zero_init(self) -> bool:
        return self._child().driver.has_zero_init()


def _parse_inject(options: dict[str, Any]) -> list[InjectError]:
    errs: list[InjectError] = []
    sub = extract_prefix(dict(options), "inject-error")
    groups: dict[str, dict[str, Any]] = {}
    for key, value in sub.items():
        idx, _, field = key.partition(".")
        if not field:          # inject-error.iotype=... (a single rule)
            idx, field = "0", idx
        groups.setdefault(idx, {})[field] = value
    for rule in groups.values():
        errs.append(InjectError(
            iotype=str(rule.get("iotype", "read")),
            errno=int(rule.get("errno", errnos.EIO)),
            offset=int(rule.get("offset", -1)),
            once=parse_bool(rule.get("once", False), "once")))
    return errs
