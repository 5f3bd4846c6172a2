"""The ``raw`` format: the guest sees the file as it is, or a slice of it
(``offset`` / ``size``).  Requests pass straight to the ``file`` child."""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ..core.driver import (BlockDriver, BlockStatus, ChildRole, CreateOption, DriverInfo, Limits,
                      Perm, Prealloc, ReqFlag, Status)
from ..core.errors import BlockError, InvalidArgument, NotSupported
from ..core.options import OpenFlags, parse_size

if TYPE_CHECKING:
    from ..core.node import BlockNode

PROBE_SIZE = 512


class RawDriver(BlockDriver):
    format_name = "raw"
    is_format = True
    can_write_zeroes = True
    allocates_in_order = True
    can_discard = True
    can_block_status = True
    can_fua = True
    can_truncate = True
    open_options = ("offset", "size")
    # the format's own create option; preallocation, nocow and extent_size_hint are the
    # file protocol's (QEMU appends the protocol's list to the format's)
    create_options = (
        CreateOption("size", "size", "Virtual disk size"),
    )   # no defaults: qemu-img's "Formatting" line shows only what was set

    offset = 0
    size: int | None = None
    probed = False

    @classmethod
    def probe(cls, header: bytes, filename: str | None) -> int:
        return 1

    @classmethod
    async def create(cls, filename: str, options: dict[str, Any], *,
                     open_file: Any = None) -> None:
        from ..core.registry import get_driver, protocol_for
        await get_driver(protocol_for(filename)).create(filename, options)

    @classmethod
    async def measure(cls, options: dict[str, Any], source: Any = None) -> dict[str, int]:
        """``qemu-img measure``: a raw image needs its whole size (sectors)."""
        size = source.total_bytes if source is not None else int(options.get("size", 0))
        size = -(-size // 512) * 512
        return {"required": size, "fully-allocated": size}

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        if self.node.file is None:
            raise InvalidArgument("A 'raw' node needs a 'file' child")
        file_len = self.node.file.total_bytes
        self.offset = parse_size(options.get("offset", 0), "offset")
        if "size" in options:
            self.size = parse_size(options["size"], "size")
        if self.offset > file_len:
            raise InvalidArgument("The sum of offset (%d) and size (%d) has to be smaller or "
                                  "equal to the  actual size of the containing file (%d)"
                                  % (self.offset, self.size or 0, file_len))
        if self.size is not None and self.offset + self.size > file_len:
            raise InvalidArgument("The sum of offset (%d) and size (%d) has to be smaller or "
                                  "equal to the  actual size of the containing file (%d)"
                                  % (self.offset, self.size, file_len))
        self.probed = bool(options.get("x-probed", False))
        # QEMU: FUA only as the file supports it, else the request path flushes this node
        self.can_fua = self.node.file.driver.can_fua  # type: ignore[misc]

    def limits(self) -> Limits:
        file = self.node.file
        assert file is not None
        inner = file.driver.limits()
        return Limits(request_alignment=inner.request_alignment, max_transfer=inner.max_transfer,
                      opt_transfer=inner.opt_transfer,
                      pdiscard_alignment=inner.pdiscard_alignment,
                      pwrite_zeroes_alignment=inner.pwrite_zeroes_alignment,
                      min_mem_alignment=inner.min_mem_alignment,
                      opt_mem_alignment=inner.opt_mem_alignment)

    def child_perm(self, role: ChildRole, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        return perm, shared

    def _file(self):  # type: ignore[no-untyped-def]
        file = self.node.file
        assert file is not None
        return file

    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes:
        return await self._file().read(self.offset + offset, length, flags & ReqFlag.NONE)

    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        if self.probed and offset < PROBE_SIZE:
            self._check_probed_write(offset, data)
        await self._file().write(self.offset + offset, data, flags & ReqFlag.FUA)

    def _check_probed_write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """A probed raw image may not get a header that would probe as another format."""
        from ..core.registry import probe_format
        head = bytes(data[:PROBE_SIZE - offset])
        if offset == 0 and probe_format(head, None) != "raw":
            raise BlockError("write to block 0 of a probed raw image refused", errno.EPERM)

    async def write_zeroes(self, offset: int, length: int, flags: ReqFlag) -> None:
        await self._file().write_zeroes(self.offset + offset, length, flags)

    async def discard(self, offset: int, length: int) -> None:
        await self._file().discard(self.offset + offset, length)

    async def copy_range_from(self, offset: int, dst: BlockNode, dst_offset: int,
                              length: int, flags: ReqFlag) -> None:
        await self._file().copy_range(self.offset + offset, dst, dst_offset, length, flags)

    async def copy_range_to(self, src: BlockNode, src_offset: int, offset: int,
                            length: int, flags: ReqFlag) -> None:
        if self.probed and offset < PROBE_SIZE:     # the write path checks the data
            raise NotSupported("Copies into block 0 of a probed raw image are not offloaded")
        await self._file().copy_range_to(src, src_offset, self.offset + offset, length, flags)

    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        return BlockStatus(Status.RAW | Status.OFFSET_VALID, length, self.offset + offset,
                           self._file())

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        if self.size is not None or self.offset:
            raise NotSupported("Cannot resize fixed-size raw disks", errno.ENOTSUP)
        await self._file().truncate(size, exact, prealloc)

    async def get_length(self) -> int:
        if self.size is not None:
            return self.size
        return max(self._file().total_bytes - self.offset, 0)

    def has_zero_init(self) -> bool:
        return self._file().driver.has_zero_init()

    def get_info(self) -> DriverInfo:
        return DriverInfo()
