"""The ``vpc`` format driver (VHD; QEMU's block/vpc.c, rebuilt on the driver interface).

A fixed image is the guest data followed by the footer: reads and writes pass through.
A dynamic image maps each block through the BAT.  Metadata changes take the lock, as
QEMU's do, and each is made durable before the next (QEMU's ``bdrv_pwrite_sync``):
allocating a block writes its sector bitmap (all ones) where the footer was, the footer
one block further on, then the BAT entry; the first write to an allocated block after
open rewrites its bitmap as all ones.  The data itself is written outside the lock.
"""
from __future__ import annotations

import asyncio
import errno
import time
import uuid
from array import array
from typing import Any

from ...core.driver import (BlockDriver, Cap, BlockStatus, CreateOption, DriverInfo, Limits,
                            Prealloc, ReqFlag, Status)
from ...core.errors import BlockError, ImageCorrupt, InvalidArgument
from ...core.options import OpenFlags
from ..vdi.shared import (Kind, Run, check_prealloc, create_on, file_child, no_resize,
                          read_padded)
from . import layout as L
from .layout import DynHeader, Footer
from .mapping import block_run


class VpcDriver(BlockDriver):
    format_name = "vpc"
    is_format = True
    caps = Cap.BLOCK_STATUS
    create_options = (
        CreateOption("size", "size", "Virtual disk size"),
        CreateOption("subformat", "string", "Type of virtual hard disk format. Supported "
                     "formats are {dynamic (default) | fixed} "),
        CreateOption("force_size", "bool", "Force disk size calculation to use the actual "
                     "size specified, rather than using the nearest CHS-based calculation"),
    )
    create_defaults_shown = ()
    open_options = ("force_size_calc",)

    footer: Footer
    fixed: bool
    bat: array
    block_size = 0
    bitmap_size = 0
    bat_offset = 0
    free_offset = 0                 # QEMU's free_data_block_offset: where the footer is
    last_bitmap = -1                # QEMU's last_bitmap_offset
    total_sectors = 0

    # ---- probe and create -------------------------------------------------------------
    @classmethod
    def probe(cls, header: bytes, filename: str | None) -> int:
        return 100 if header[:8] == L.CREATOR else 0

    @classmethod
    async def create(cls, filename: str, options: dict[str, Any], *,
                     open_file: Any = None) -> None:
        check_prealloc(options)
        sub = str(options.get("subformat", "dynamic"))
        if sub not in ("dynamic", "fixed"):
            raise InvalidArgument(f"Parameter 'subformat' does not accept value '{sub}'")
        force = bool(options.get("force_size", False))
        size = L.round_up(int(options.get("size", 0)), L.SECTOR)
        try:
            size, chs = L.rounded_size(size, force)
        except L.SizeTooLarge:
            # qemu-img says this for any EFBIG from a driver's create
            raise BlockError("The image size is too large for file format 'vpc'",
                             errno.EFBIG) from None
        fixed = sub == "fixed"
        footer = Footer(
            data_offset=L.NO_OFFSET if fixed else L.FOOTER_SIZE,
            timestamp=(int(time.time()) - L.TIMESTAMP_BASE) & 0xFFFFFFFF,
            creator_app=b"qem2" if force else b"qemu", orig_size=size, current_size=size,
            cyls=chs[0], heads=chs[1], secs_per_cyl=chs[2],
            type=L.TYPE_FIXED if fixed else L.TYPE_DYNAMIC,
            uuid=uuid.uuid4().bytes).with_checksum().build()

        async def fill(file: Any) -> None:
            if fixed:
                await file.truncate(size + L.FOOTER_SIZE)
                await file.write(size, footer)
            else:
                await _create_dynamic(file, footer, size // L.SECTOR)
        await create_on("vpc", filename, open_file, fill)

    # ---- open ---------------------------------------------------------------------------
    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        file_child(self.node, "vpc")
        calc = options.get("force_size_calc")
        if calc not in (None, "chs", "current_size"):
            raise InvalidArgument(f"Invalid size calculation mode: '{calc}'")
        self.lock = asyncio.Lock()
        self.footer, self.fixed = await self._read_footer()
        if not self.footer.checksum_ok():
            raise InvalidArgument("Incorrect header checksum")
        sectors = L.guest_sectors(self.footer, calc == "chs", calc == "current_size")
        if sectors > L.MAX_SECTORS:
            # QEMU sets no message: the generic one, twice
            raise BlockError(f"Could not open '{self.node.filename}': File too large",
                             errno.EFBIG)
        self.total_sectors = sectors
        if not self.fixed:
            await self._open_dynamic()
        self.fixed = self.footer.type == L.TYPE_FIXED   # QEMU's I/O asks the footer

    async def _read_footer(self) -> tuple[Footer, bool]:
        """The footer copy at offset 0, else the footer at the end (a fixed image)."""
        file = self.node.file
        assert file is not None
        footer = Footer.parse(await read_padded(file, 0, L.FOOTER_SIZE))
        if footer.creator == L.CREATOR:
            return footer, False
        size = L.round_up(file.total_bytes, L.SECTOR)     # QEMU's bdrv_getlength
        if size < L.FOOTER_SIZE:
            raise InvalidArgument("File too small for a VHD header")
        footer = Footer.parse(await read_padded(file, size - L.FOOTER_SIZE, L.FOOTER_SIZE))
        if footer.creator != L.CREATOR or footer.type != L.TYPE_FIXED:
            raise InvalidArgument("invalid VPC image")
        return footer, True

    async def _open_dynamic(self) -> None:
        file = self.node.file
        assert file is not None
        if self.footer.data_offset >= 1 << 63:
            raise BlockError("Error reading dynamic VHD header", errno.EIO)
        dyn = DynHeader.parse(await read_padded(file, self.footer.data_offset,
                                                L.DYN_HEADER_SIZE))
        if dyn.magic != L.DYN_MAGIC:
            raise InvalidArgument("Invalid header magic")
        bs = dyn.block_size
        if bs < L.SECTOR or bs & (bs - 1):
            raise InvalidArgument(f"Invalid block size {bs}")
        guest = self.total_sectors * L.SECTOR
        if guest // bs > 0xFFFFFFFF:
            raise InvalidArgument("Too many blocks")
        entries = dyn.max_table_entries
        signed = entries - (1 << 32) if entries >= 1 << 31 else entries
        if (signed % (1 << 64)) * bs % (1 << 64) < guest:
            raise InvalidArgument("Page table too small")
        if signed < 0 or signed > ((1 << 31) - 1) // 4:
            raise InvalidArgument(f"Max Table Entries too large ({signed})")
        bat_bytes = entries * L.ENTRY
        self.block_size, self.bitmap_size = bs, L.bitmap_size(bs)
        self.bat_offset = dyn.table_offset
        free = L.round_up(dyn.table_offset + bat_bytes, L.SECTOR)
        file_size = L.round_up(file.total_bytes, L.SECTOR)     # QEMU's bdrv_getlength
        if free > file_size:                # checked before reading it: bounded memory
            raise _truncated()
        self.bat = L.parse_bat(await read_padded(file, dyn.table_offset, bat_bytes), entries)
        ends = [L.SECTOR * e + self.bitmap_size + bs for e in self.bat if e != L.UNALLOCATED]
        self.free_offset = max([free, *ends])
        if self.free_offset > file_size:
            raise _truncated()

    def limits(self) -> Limits:
        return Limits(request_alignment=1, opt_transfer=self.block_size)

    # ---- read and write -----------------------------------------------------------------
    def _run(self, offset: int, length: int) -> Run:
        return block_run(self.bat, self.block_size, self.bitmap_size, offset, length)

    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        file = self.node.file
        assert file is not None
        if self.fixed:
            return await file.read(offset, length)
        run = self._run(offset, length)
        if run.length == length:
            return await file.read(run.host, length) if run.kind is Kind.DATA \
                else bytes(length)
        out = bytearray(length)
        pos, end = offset, offset + length
        while pos < end:
            run = self._run(pos, end - pos)
            if run.kind is Kind.DATA:
                out[pos - offset:pos - offset + run.length] = \
                    await file.read(run.host, run.length)
            pos += run.length
        return out

    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        file = self.node.file
        assert file is not None
        if self.fixed:
            await file.write(offset, data)
            return
        view = memoryview(data)
        pos, end = offset, offset + len(view)
        while pos < end:
            async with self.lock:
                run = self._run(pos, end - pos)
                if run.kind is Kind.DATA:
                    await self._refresh_bitmap(run)
                else:
                    run = await self._alloc_block(run)
            await file.write(run.host, view[pos - offset:pos - offset + run.length])
            pos += run.length

    async def _write_sync(self, offset: int, data: bytes) -> None:
        file = self.node.file
        assert file is not None
        await file.write(offset, data)
        await file.flush()

    async def _refresh_bitmap(self, run: Run) -> None:
        """The first write to a block since the last one elsewhere marks every sector of
        it used (QEMU does, so Virtual PC reads none of it as absent)."""
        bitmap = L.SECTOR * self.bat[run.block]
        if bitmap != self.last_bitmap:
            self.last_bitmap = bitmap
            await self._write_sync(bitmap, b"\xff" * self.bitmap_size)

    async def _alloc_block(self, run: Run) -> Run:
        """A new block where the footer was: bitmap, footer after it, then the BAT entry."""
        if run.guest > self.total_sectors * L.SECTOR:
            raise InvalidArgument("Write beyond the end of the VHD image")
        index = run.block
        if index >= len(self.bat):
            raise ImageCorrupt("VHD BAT has no entry for this block")
        start = self.free_offset
        self.bat[index] = start // L.SECTOR
        try:
            await self._write_sync(start, b"\xff" * self.bitmap_size)
            self.free_offset = start + self.bitmap_size + self.block_size
            await self._write_sync(self.free_offset, self.footer.build())
            await self._write_sync(self.bat_offset + L.ENTRY * index,
                                   L.build_entry(self.bat[index]))
        except BaseException:
            self.bat[index] = L.UNALLOCATED
            self.free_offset = start
            raise
        return self._run(run.guest, run.length)

    # ---- status, size, info ---------------------------------------------------------------
    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        if self.fixed:
            return BlockStatus(Status.DATA | Status.OFFSET_VALID | Status.RECURSE, length,
                               offset, self.node.file)
        run = self._run(offset, length)
        if run.kind is Kind.DATA:
            return BlockStatus(Status.DATA | Status.OFFSET_VALID, run.length, run.host,
                               self.node.file)
        n = run.length
        while n < length:                   # unallocated blocks in a row answer together
            nxt = self._run(offset + n, length - n)
            if nxt.kind is Kind.DATA:
                break
            n += nxt.length
        return BlockStatus(Status.ZERO, n)

    async def get_length(self) -> int:
        return self.total_sectors * L.SECTOR

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        raise no_resize()

    def has_zero_init(self) -> bool:
        if self.fixed:
            file = self.node.file
            return file is not None and file.driver.has_zero_init()
        return True

    def get_info(self) -> DriverInfo:
        return DriverInfo(cluster_size=0 if self.fixed else self.block_size)


def _truncated() -> InvalidArgument:
    return InvalidArgument("block-vpc: free_data_block_offset points after the end of "
                           "file. The image has been truncated.")


async def _create_dynamic(file: Any, footer: bytes, total_sectors: int) -> None:
    """Footer at 0 and after the BAT, the BAT all unallocated, then the dynamic header,
    in QEMU's order."""
    entries = -(-total_sectors // (L.DEFAULT_BLOCK_SIZE // L.SECTOR))
    bat_bytes = L.round_up(entries * L.ENTRY, L.SECTOR)
    await file.write(0, footer)
    await file.write(L.BAT_OFFSET + bat_bytes, footer)
    if bat_bytes:
        await file.write(L.BAT_OFFSET, b"\xff" * bat_bytes)
    dyn = DynHeader(max_table_entries=entries).with_checksum()
    await file.write(L.FOOTER_SIZE, dyn.build())
