"""``blkdebug``: a pass-through filter whose limits and failures are set by options.

Used to test the request path: ``align`` sets the request alignment, ``max-transfer``
splits requests, ``opt-write-zero`` / ``max-write-zero`` / ``opt-discard`` /
``max-discard`` shape zeroing and discard, and QEMU's ``inject-error`` / ``set-state``
rules (``blkdebug_rules.py``: syntax, checks and the state machine) make chosen
requests fail.

Events: QEMU's format drivers and request path fire blkdebug events on their file
node; here the filter fires the generic ones itself, where QEMU would:

- ``none`` once the node is open;
- ``read_aio`` / ``write_aio`` when a read / write comes from a parent node (a format
  or filter above; QEMU's formats fire them before their data I/O, so a request made
  straight to the blkdebug node fires neither);
- ``pwritev`` / ``pwritev_zero`` before a write / write-zeroes request and
  ``pwritev_done`` after it;
- ``flush_to_os`` on every flush, ``flush_to_disk`` (and the flush's own check) only
  when something was written since the last successful flush, as QEMU's write
  generation does.

Every other QEMU event name (qcow2's ``l1_update``, ``l2_load``, ``refblock_alloc``,
``cluster_alloc``, ...) is accepted but never fires yet: that needs a hook for format
drivers to fire events on their file, left for later. Differences that follow: a
format's metadata reads and writes fire ``read_aio`` / ``write_aio`` too (QEMU fires them
for guest data only), and a request split at ``max-transfer`` fires once per piece.
"""
from __future__ import annotations

import asyncio
import errno as errnos
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..core.driver import BlockStatus, Cap, Limits, Prealloc, ReqFlag
from ..core.errors import BlockError, InvalidArgument, NotSupported
from ..core.filter import FilterDriver
from ..core.io import REQUEST_DEPTH
from ..core.options import OpenFlags, parse_size
from .blkdebug_rules import RuleSet, parse_rules

if TYPE_CHECKING:
    from ..core.node import BlockNode


class BlkdebugDriver(FilterDriver):
    format_name = "blkdebug"
    file_child_key = "image"
    # its own: zeroing and discard fire events and obey rules whatever the image can do
    caps = FilterDriver.caps | Cap.WRITE_ZEROES | Cap.DISCARD
    open_options = ("config", "x-image", "align", "max-transfer", "opt-write-zero",
                    "max-write-zero", "opt-discard", "max-discard", "inject-error",
                    "set-state", "take-child-perms", "unshare-child-perms")

    @classmethod
    def parse_filename(cls, filename: str) -> tuple[dict[str, Any], str]:
        """``blkdebug:[CONFIG]:IMAGE`` -> the ``config`` option and the image's filename."""
        config, sep, image = filename[len("blkdebug:"):].partition(":")
        if not sep:
            raise InvalidArgument("blkdebug requires both config file and image path")
        return ({"config": config} if config else {}), image

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        inner = self.child.limits

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
        config = options.get("config")
        self.rules = RuleSet(parse_rules(dict(options), str(config) if config else None))
        self.unflushed = False           # QEMU's write generation: written since a flush
        self.rules.fire("none")

    def capabilities(self) -> Cap:
        # a request may wait (a rule failing it later) before it reaches the image
        return super().capabilities() & ~Cap.ALLOCATES_IN_ORDER

    def limits(self) -> Limits:
        inner = self.child.limits
        return replace(inner, request_alignment=max(self.align, inner.request_alignment),
                       max_transfer=self.max_transfer or inner.max_transfer,
                       pwrite_zeroes_alignment=self.opt_write_zero,
                       max_pwrite_zeroes=self.max_write_zero,
                       pdiscard_alignment=self.opt_discard, max_pdiscard=self.max_discard)

    async def _check(self, iotype: str, offset: int, length: int) -> None:
        """Fail the request as an active rule says, else check what QEMU asserts."""
        rule = self.rules.check(iotype, offset, length)
        if rule is not None:
            if not rule.immediately:
                await asyncio.sleep(0)     # QEMU fails it from a later loop iteration
            raise BlockError(f"blkdebug: injected {iotype} error", rule.errno)
        align = self.align
        if iotype in ("read", "write") and (offset % align or length % align):
            raise BlockError(f"blkdebug: unaligned {iotype} at {offset}+{length}",
                             errnos.EINVAL)
        if self.max_transfer and iotype in ("read", "write") and length > self.max_transfer:
            raise BlockError(f"blkdebug: {iotype} of {length} over max-transfer", errnos.EINVAL)

    def _fire_from_parent(self, event: str) -> None:
        """``read_aio`` / ``write_aio``: QEMU's formats fire them on their file node."""
        if REQUEST_DEPTH.get() > 1:
            self.rules.fire(event)

    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        self._fire_from_parent("read_aio")
        await self._check("read", offset, length)
        return await super().read(offset, length, flags)

    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        self._fire_from_parent("write_aio")
        self.rules.fire("pwritev")
        self.unflushed = True
        try:
            await self._check("write", offset, len(data))
            await super().write(offset, data, flags)
        finally:
            self.rules.fire("pwritev_done")

    async def write_zeroes(self, offset: int, length: int, flags: ReqFlag) -> None:
        self.rules.fire("pwritev_zero")
        self.unflushed = True
        try:
            await self._check("write-zeroes", offset, length)
            await super().write_zeroes(offset, length, flags)
        finally:
            self.rules.fire("pwritev_done")

    async def discard(self, offset: int, length: int) -> None:
        self.unflushed = True
        await self._check("discard", offset, length)
        await super().discard(offset, length)

    async def flush_to_os(self) -> None:
        self.rules.fire("flush_to_os")

    async def flush_to_disk(self) -> None:
        if not self.unflushed:
            return
        self.rules.fire("flush_to_disk")
        await self._check("flush", 0, 0)
        self.unflushed = False

    async def copy_range_from(self, offset: int, dst: BlockNode, dst_offset: int,
                              length: int, flags: ReqFlag) -> None:
        raise NotSupported("blkdebug does not offload copies")    # as QEMU's

    async def copy_range_to(self, src: BlockNode, src_offset: int, offset: int,
                            length: int, flags: ReqFlag) -> None:
        raise NotSupported("blkdebug does not offload copies")

    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        await self._check("block-status", offset, length)
        return await super().block_status(offset, length, want_zero)

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        self.unflushed = True
        await super().truncate(size, exact, prealloc)
