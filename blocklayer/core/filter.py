"""``FilterDriver``: the base of every driver with one child that holds the data.

Every operation, every limit and every capability passes to the filtered child (the
``file`` child, or whatever ``data_child_role`` names), optionally shifted by
``child_offset`` bytes (raw's ``offset``).  A filter overrides only what it changes
(nbdkit's filters): blkdebug checks requests and hides ``ALLOCATES_IN_ORDER``; raw
shifts, bounds the size and guards block 0 of a probed image.

Image management (check, amend, snapshots, backing files) belongs to formats and is
refused here as in :class:`BlockDriver`; a filter that wants it overrides it.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from .driver import (BlockDriver, BlockStatus, Cap, ChildRole, Limits, Perm, Prealloc, ReqFlag,
                     Status)
from .errors import InvalidArgument

if TYPE_CHECKING:
    from .node import BlockNode
    from .options import OpenFlags

#: request flags a filter passes on with a write (COPY_ON_READ and the zeroing flags
#: belong to the node they were given to)
WRITE_FLAGS = ReqFlag.FUA | ReqFlag.COMPRESSED


class FilterDriver(BlockDriver):
    """A pass-through filter.  Subclasses set ``format_name`` and override what differs."""

    is_filter = True
    #: a filter answers block status itself (its child's, through RAW)
    caps = Cap.BLOCK_STATUS
    #: where guest offset 0 is in the child
    child_offset = 0

    @property
    def child(self) -> "BlockNode":
        """The filtered child (opened before this node)."""
        child = self.node.data_child
        if child is None:
            raise InvalidArgument(f"A '{self.format_name}' node needs a "
                                  f"'{self.file_child_key}' child")
        return child

    async def open(self, options: dict[str, Any], flags: "OpenFlags") -> None:
        _ = self.child      # InvalidArgument when there is none

    # ---- what the node can do: the child's ------------------------------------------
    def capabilities(self) -> Cap:
        return Cap(self.child.caps) | self.caps

    def limits(self) -> Limits:
        return replace(self.child.limits)

    def child_perm(self, role: ChildRole, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        if role is self.data_child_role:
            return perm, shared
        return super().child_perm(role, perm, shared)

    # ---- I/O ------------------------------------------------------------------------
    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        return await self.child.read(self.child_offset + offset, length)

    #: whether the class overrides :meth:`before_change` (set for each subclass: the
    #: pass-through write of raw and the others awaits nothing extra)
    changes_hooked: ClassVar[bool] = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.changes_hooked = cls.before_change is not FilterDriver.before_change

    async def before_change(self, offset: int, length: int) -> None:
        """Awaited before a write, write-zeroes or discard of ``[offset, offset+length)``
        passes to the child: a filter that acts on the guest's changes (throttle,
        copy-before-write) overrides this rather than the three operations."""

    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        if self.changes_hooked:
            await self.before_change(offset, len(data))
        await self.child.write(self.child_offset + offset, data, flags & WRITE_FLAGS)

    async def write_zeroes(self, offset: int, length: int, flags: ReqFlag) -> None:
        if self.changes_hooked:
            await self.before_change(offset, length)
        await self.child.write_zeroes(self.child_offset + offset, length, flags)

    async def discard(self, offset: int, length: int) -> None:
        if self.changes_hooked:
            await self.before_change(offset, length)
        await self.child.discard(self.child_offset + offset, length)

    async def copy_range_from(self, offset: int, dst: "BlockNode", dst_offset: int,
                              length: int, flags: ReqFlag) -> None:
        await self.child.copy_range(self.child_offset + offset, dst, dst_offset, length, flags)

    async def copy_range_to(self, src: "BlockNode", src_offset: int, offset: int,
                            length: int, flags: ReqFlag) -> None:
        await self.child.copy_range_to(src, src_offset, self.child_offset + offset, length,
                                       flags)

    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        return BlockStatus(Status.RAW | Status.OFFSET_VALID, length,
                           self.child_offset + offset, self.child)

    def set_status_shape(self, shape: Any) -> None:
        self.child.driver.set_status_shape(shape)

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        await self.child.truncate(self.child_offset + size, exact, prealloc)

    async def get_length(self) -> int:
        return max(self.child.total_bytes - self.child_offset, 0)

    def has_zero_init(self) -> bool:
        return self.child.driver.has_zero_init()

    async def get_allocated_file_size(self) -> int:
        return await self.child.allocated_file_size()

    # ---- compressed writes and persistent bitmaps: the child's ------------------------
    def compress_ahead(self, offset: int, data: memoryview) -> None:
        self.child.driver.compress_ahead(self.child_offset + offset, data)

    async def end_compressed(self) -> None:
        await self.child.driver.end_compressed()

    def bitmap_list(self) -> list[dict[str, Any]]:
        return self.child.driver.bitmap_list()

    async def bitmap_add(self, name: str, granularity: int | None = None,
                         persistent: bool = True, disabled: bool = False) -> None:
        await self.child.driver.bitmap_add(name, granularity, persistent, disabled)

    async def bitmap_remove(self, name: str) -> None:
        await self.child.driver.bitmap_remove(name)

    async def bitmap_clear(self, name: str) -> None:
        await self.child.driver.bitmap_clear(name)

    async def bitmap_set_enabled(self, name: str, enabled: bool) -> None:
        await self.child.driver.bitmap_set_enabled(name, enabled)

    async def bitmap_merge(self, target: str, source: Any) -> None:
        await self.child.driver.bitmap_merge(target, source)

    def bitmap_find(self, name: str) -> Any:
        return self.child.driver.bitmap_find(name)

    def bitmap_get(self, name: str) -> Any:
        return self.child.driver.bitmap_get(name)

    def bitmap_set(self, name: str, offset: int, length: int, value: bool = True) -> None:
        self.child.driver.bitmap_set(name, offset, length, value)
