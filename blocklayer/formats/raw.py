"""The ``raw`` format: the guest sees the file as it is, or a slice of it
(``offset`` / ``size``).  A :class:`FilterDriver` on its ``file`` child that changes only
the slice, resizing, and writes to block 0 of a probed image."""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ..core.driver import Cap, CreateOption, DriverInfo, Prealloc, ReqFlag
from ..core.errors import BlockError, InvalidArgument, NotSupported
from ..core.filter import FilterDriver
from ..core.io import node_try_read
from ..core.options import OpenFlags, parse_size

if TYPE_CHECKING:
    from ..core.node import BlockNode

PROBE_SIZE = 512


class RawDriver(FilterDriver):
    format_name = "raw"
    is_format = True
    is_filter = False       # a format: it names no backing chain to skip (QEMU's raw)
    caps = FilterDriver.caps | Cap.WRITE_ZEROES | Cap.DISCARD | Cap.ALLOCATES_IN_ORDER
    open_options = ("offset", "size")
    # the format's own create option; preallocation, nocow and extent_size_hint are the
    # file protocol's (QEMU appends the protocol's list to the format's)
    create_options = (
        CreateOption("size", "size", "Virtual disk size"),
    )   # no defaults: qemu-img's "Formatting" line shows only what was set

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
        file_len = self.child.total_bytes
        self.child_offset = parse_size(options.get("offset", 0), "offset")
        if "size" in options:
            self.size = parse_size(options["size"], "size")
        end = self.child_offset + (self.size or 0)
        if self.child_offset > file_len or end > file_len:
            raise InvalidArgument("The sum of offset (%d) and size (%d) has to be smaller or "
                                  "equal to the  actual size of the containing file (%d)"
                                  % (self.child_offset, self.size or 0, file_len))
        self.probed = bool(options.get("x-probed", False))

    def capabilities(self) -> Cap:
        # QEMU's raw neither compresses nor stores bitmaps, whatever its file can do
        return super().capabilities() & ~(Cap.COMPRESSED_WRITE | Cap.PERSISTENT_BITMAPS)

    def try_read(self, offset: int, length: int) -> bytes | bytearray | None:
        """The synchronous fast path (see ``node_try_read``): the slice's child's."""
        child = self.node.children.get("file")     # not ``self.child``: per request
        if child is None:
            return None
        return node_try_read(child.node, self.child_offset + offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        if self.probed and offset < PROBE_SIZE:
            self._check_probed_write(offset, data)
        await super().write(offset, data, flags)

    def _check_probed_write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """A probed raw image may not get a header that would probe as another format."""
        from ..core.registry import probe_format
        head = bytes(data[:PROBE_SIZE - offset])
        if offset == 0 and probe_format(head, None) != "raw":
            raise BlockError("write to block 0 of a probed raw image refused", errno.EPERM)

    async def copy_range_to(self, src: BlockNode, src_offset: int, offset: int,
                            length: int, flags: ReqFlag) -> None:
        if self.probed and offset < PROBE_SIZE:     # the write path checks the data
            raise NotSupported("Copies into block 0 of a probed raw image are not offloaded")
        await super().copy_range_to(src, src_offset, offset, length, flags)

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        if self.size is not None or self.child_offset:
            raise NotSupported("Cannot resize fixed-size raw disks", errno.ENOTSUP)
        await super().truncate(size, exact, prealloc)

    async def get_length(self) -> int:
        if self.size is not None:
            return self.size
        return await super().get_length()

    def get_info(self) -> DriverInfo:
        return DriverInfo()
