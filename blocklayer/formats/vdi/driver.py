"""The ``vdi`` format driver (QEMU's block/vdi.c, rebuilt on the driver interface).

Reads translate block by block through the block map and never wait.  A write to an
allocated block goes straight to the file.  A write to an unallocated (or discarded)
block takes the allocation lock, gives the block the next data block
(``blocks_allocated``, so the file grows at its end in the order writes arrive), writes
the whole block with zeroes around the data, and once the request's blocks are all
written, the header and the changed sectors of the block map, as QEMU does.
"""
from __future__ import annotations

import asyncio
import errno
import uuid
from array import array
from typing import Any

from ...core.driver import (BlockDriver, Cap, BlockStatus, CheckMode, CheckResult, CreateOption,
                            DriverInfo, Limits, Prealloc, ReqFlag, Status)
from ...core.errors import ImageCorrupt, NotSupported
from ...core.options import OpenFlags
from . import layout as L
from .check import check_bmap
from .layout import Header
from .mapping import block_runs
from .shared import Kind, check_prealloc, create_on, file_child, no_resize, read_padded


class VdiDriver(BlockDriver):
    format_name = "vdi"
    is_format = True
    caps = Cap.BLOCK_STATUS
    create_options = (
        CreateOption("size", "size", "Virtual disk size"),
        CreateOption("static", "bool", "VDI static (pre-allocated) image", False),
    )
    #: qemu-img's Formatting line shows static's default
    create_defaults_shown = ("static",)

    header: Header
    bmap: array

    # ---- probe and create -------------------------------------------------------------
    @classmethod
    def probe(cls, header: bytes, filename: str | None) -> int:
        if len(header) < L.HEADER_SIZE:
            return 0
        return 100 if int.from_bytes(header[0x40:0x44], "little") == L.SIGNATURE else 0

    @classmethod
    async def create(cls, filename: str, options: dict[str, Any], *,
                     open_file: Any = None) -> None:
        check_prealloc(options)
        size = L.round_up(int(options.get("size", 0)), L.SECTOR)
        static = bool(options.get("static", False))
        if size > L.DISK_SIZE_MAX:
            raise NotSupported("Unsupported VDI image size (size is 0x%x, max supported is "
                               "0x%x)" % (size, L.DISK_SIZE_MAX))
        blocks = -(-size // L.BLOCK_SIZE)
        bmap = L.initial_bmap(blocks, static)
        header = Header(
            image_type=L.TYPE_STATIC if static else L.TYPE_DYNAMIC,
            offset_data=L.BMAP_OFFSET + len(bmap), disk_size=size,
            blocks_in_image=blocks, blocks_allocated=blocks if static else 0,
            uuid_image=uuid.uuid4().bytes_le, uuid_last_snap=uuid.uuid4().bytes_le)

        async def fill(file: Any) -> None:
            await file.write(0, header.build() + bmap)
            if static:
                await file.truncate(header.offset_data + blocks * L.BLOCK_SIZE)
        await create_on("vdi", filename, open_file, fill)

    # ---- open ---------------------------------------------------------------------------
    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        file = file_child(self.node, "vdi")
        raw = await read_padded(file, 0, L.HEADER_SIZE)
        self.header = L.validate_header(Header.parse(raw), file.total_bytes)
        h = self.header
        data = await read_padded(file, h.offset_bmap, h.bmap_bytes)
        self.bmap = L.parse_bmap(data, h.blocks_in_image)
        self.lock = asyncio.Lock()

    def limits(self) -> Limits:
        return Limits(request_alignment=1, opt_transfer=self.header.block_size)

    # ---- read ---------------------------------------------------------------------------
    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        file = self.node.file
        assert file is not None
        runs = list(block_runs(self.header, self.bmap, offset, length))
        if len(runs) == 1:
            run = runs[0]
            return await file.read(run.host, length) if run.kind is Kind.DATA \
                else bytes(length)
        out = bytearray(length)
        for run in runs:
            if run.kind is Kind.DATA:
                rel = run.guest - offset
                out[rel:rel + run.length] = await file.read(run.host, run.length)
        return out

    # ---- write --------------------------------------------------------------------------
    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        file = self.node.file
        assert file is not None
        view = memoryview(data)
        changed: list[int] = []
        for run in block_runs(self.header, self.bmap, offset, len(view)):
            piece = view[run.guest - offset:run.guest - offset + run.length]
            if run.kind is Kind.DATA:
                await file.write(run.host, piece)
            elif not await self._allocate(run.block, run.guest, piece):
                changed.append(run.block)
        if changed:
            await self._write_metadata(changed[0], changed[-1])

    async def _allocate(self, block: int, pos: int, piece: memoryview) -> bool:
        """Give ``block`` the next data block and write it whole; True if another write
        allocated it first (then ``piece`` went in place)."""
        file, bs = self.node.file, self.header.block_size
        assert file is not None
        async with self.lock:
            entry = self.bmap[block]
            within = pos % bs
            if L.is_allocated(entry):
                await file.write(self.header.data_offset(entry) + within, piece)
                return True
            entry = self.header.blocks_allocated
            if entry >= min(self.header.blocks_in_image, L.DISCARDED):
                # QEMU writes past the map's reach and the file refuses (EFBIG)
                raise ImageCorrupt("VDI image has no free block left (blocks_allocated "
                                   f"is {entry})", errno.EFBIG)
            self.bmap[block] = entry
            self.header = self.header.with_(blocks_allocated=entry + 1)
            buf = bytearray(bs)
            buf[within:within + len(piece)] = piece
            try:
                await file.write(self.header.data_offset(entry), buf)
            except BaseException:
                self.bmap[block] = L.UNALLOCATED
                self.header = self.header.with_(blocks_allocated=entry)
                raise
            return False

    async def _write_metadata(self, first: int, last: int) -> None:
        """The header, then the block map sectors from ``first`` to ``last``."""
        file = self.node.file
        assert file is not None
        async with self.lock:
            await file.write(0, self.header.build())
            rel, data = L.bmap_sectors(self.bmap, first, last)
            await file.write(self.header.offset_bmap + rel, data)

    # ---- status, size, info ---------------------------------------------------------------
    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        run = next(block_runs(self.header, self.bmap, offset, length))
        if run.kind is Kind.ZERO:
            return BlockStatus(Status.ZERO, run.length)
        flags = Status.DATA | Status.OFFSET_VALID
        if self.header.is_static:
            flags |= Status.RECURSE
        return BlockStatus(flags, run.length, run.host, self.node.file)

    async def get_length(self) -> int:
        return self.header.disk_size

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        raise no_resize()

    def has_zero_init(self) -> bool:
        if self.header.is_static:
            file = self.node.file
            return file is not None and file.driver.has_zero_init()
        return True

    def get_info(self) -> DriverInfo:
        return DriverInfo(cluster_size=self.header.block_size)

    # ---- image management -------------------------------------------------------------------
    async def check(self, mode: CheckMode) -> CheckResult:
        if mode & CheckMode.FIX_ALL:
            raise NotSupported("This image format does not support checks")
        return check_bmap(self.header, self.bmap)

    async def make_empty(self) -> None:
        """QEMU's vdi_make_empty does nothing and succeeds."""
