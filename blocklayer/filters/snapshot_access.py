"""The ``snapshot-access`` driver (QEMU's ``block/snapshot-access.c``): a read-only view
of the point in time a ``copy-before-write`` filter (its ``file``) keeps.  Reads and
block status come from the filter's snapshot side; a discard tells the filter that
range is no longer wanted (it stops copying it); writes are refused.
"""
from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Any

from blocklayer.core.driver import BlockStatus, Cap, ChildRole, Perm, ReqFlag
from blocklayer.core.errors import NotSupported
from blocklayer.core.filter import FilterDriver

from .copy_before_write import CopyBeforeWriteDriver

if TYPE_CHECKING:
    from blocklayer.core.options import OpenFlags


class SnapshotAccessDriver(FilterDriver):
    format_name = "snapshot-access"
    caps = FilterDriver.caps | Cap.DISCARD
    #: not a filter in a chain walk (QEMU's is not): an export's bitmap is not looked
    #: for below it
    is_filter = False

    def child_perm(self, role: ChildRole, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        return Perm.CONSISTENT_READ, Perm.ALL

    async def open(self, options: dict[str, Any], flags: "OpenFlags") -> None:
        await super().open(options, flags)
        self.node.filename = self.child.filename

    @property
    def cbw(self) -> CopyBeforeWriteDriver:
        """The filter whose snapshot this is (QEMU accepts any child at open; its
        requests then fail)."""
        cbw = self.child.driver
        if not isinstance(cbw, CopyBeforeWriteDriver):
            raise NotSupported("Child doesn't support snapshot access", _errno.ENOTSUP)
        return cbw

    def capabilities(self) -> Cap:
        return Cap.BLOCK_STATUS | Cap.DISCARD

    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        return await self.cbw.snapshot_read(offset, length)

    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        return await self.cbw.snapshot_status(offset, length)

    async def discard(self, offset: int, length: int) -> None:
        self.cbw.snapshot_discard(offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        raise NotSupported("snapshot-access is read-only", _errno.EPERM)

    async def write_zeroes(self, offset: int, length: int, flags: ReqFlag) -> None:
        raise NotSupported("snapshot-access is read-only", _errno.EPERM)

    async def truncate(self, size: int, exact: bool, prealloc: Any) -> None:
        raise NotSupported("snapshot-access cannot be resized", _errno.EPERM)
