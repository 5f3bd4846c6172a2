"""The ``vmdk`` format driver (QEMU's block/vmdk.c, rebuilt on the driver interface).

This first step handles one hosted sparse extent with its descriptor embedded
(``monolithicSparse``).  Grain tables are read when a request first needs them and
kept.  A write to an unallocated grain takes the allocation lock, gives it the next
grain at the end of the file (the file grows in the order writes arrive, as QEMU's),
writes the whole grain with zeroes around the data, then its entry in the grain table
and in the redundant one.
"""
from __future__ import annotations

import asyncio
import errno
import os
import random
from array import array
from typing import Any

from ...core.driver import (
    BlockDriver,
    BlockStatus,
    Cap,
    CheckMode,
    CheckResult,
    CreateOption,
    DriverInfo,
    Limits,
    Prealloc,
    ReqFlag,
    Status,
)
from ...core.errors import ImageCorrupt, InvalidArgument, NotSupported
from ...core.options import OpenFlags
from ..vdi.shared import (
    Kind,
    check_prealloc,
    create_on,
    file_child,
    no_resize,
    read_padded,
)
from . import flat as F
from . import layout as L
from .layout import Descriptor, Header
from .mapping import grain_runs

ADAPTERS = ("ide", "buslogic", "lsilogic", "legacyESX")
SUBFORMATS = ("monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized")


class VmdkDriver(BlockDriver):
    format_name = "vmdk"
    is_format = True
    supports_backing = True
    caps = Cap.BLOCK_STATUS | Cap.WRITE_ZEROES
    create_options = (
        CreateOption("size", "size", "Virtual disk size"),
        CreateOption("adapter_type", "string", "Virtual adapter type, can be one of ide "
                     "(default), lsilogic, buslogic or legacyESX"),
        CreateOption("backing_file", "string", "File name of a base image"),
        CreateOption("backing_fmt", "string", "Must be 'vmdk' if present"),
        CreateOption("compat6", "bool", "VMDK version 6 image", False),
        CreateOption("hwversion", "string", "VMDK hardware version", "undefined"),
        CreateOption("toolsversion", "string", "VMware guest tools version"),
        CreateOption("subformat", "string", "VMDK flat extent format, can be one of "
                     "{monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse "
                     "| twoGbMaxExtentFlat | streamOptimized} "),
        CreateOption("zeroed_grain", "bool", "Enable efficient zero writes using the "
                     "zeroed-grain GTE feature"),
    )
    create_defaults_shown = ("compat6", "hwversion")

    header: Header
    desc: Descriptor
    gd: array
    rgd: array | None
    flat: list[F.FlatExtent] | None = None
    next_grain = 0              # QEMU's next_cluster_sector, in bytes

    # ---- probe and create -------------------------------------------------------------
    @classmethod
    def probe(cls, header: bytes, filename: str | None) -> int:
        if len(header) < 4:
            return 0
        if header[:4] in (L.MAGIC, L.COWD_MAGIC):
            return 100
        return 100 if L.probe_text(header) else 0

    @classmethod
    async def create(cls, filename: str, options: dict[str, Any], *,
                     open_file: Any = None) -> None:
        check_prealloc(options)
        size = L.round_up(int(options.get("size", 0)), L.SECTOR)
        adapter = str(options.get("adapter_type") or "ide")
        subformat = str(options.get("subformat") or "monolithicSparse")
        compat6 = bool(options.get("compat6", False))
        hw = options.get("hwversion")
        hwversion = None if hw in (None, "undefined") else str(hw)
        if adapter not in ADAPTERS:
            raise InvalidArgument(f"invalid parameter value: {adapter}")
        if subformat not in SUBFORMATS:
            raise InvalidArgument(f"invalid parameter value: {subformat}")
        if compat6 and hwversion:
            raise InvalidArgument("compat6 cannot be enabled with hwversion set")
        if subformat != "monolithicSparse":
            raise NotSupported(f"vmdk subformat '{subformat}' is not supported yet")
        backing = options.get("backing_file")
        parent_cid = await _parent_cid(filename, str(backing)) if backing else 0xFFFFFFFF
        heads = 16 if adapter == "ide" else 255
        header = L.new_header(size, bool(options.get("zeroed_grain", False)))
        extent = f'RW {size // L.SECTOR} SPARSE "{os.path.basename(filename)}"\n'
        desc = L.build_descriptor(
            random.getrandbits(32), parent_cid, subformat, extent,
            str(backing) if backing else None,
            "6" if compat6 else hwversion or "4", size // L.SECTOR // (heads * 63),
            heads, adapter, str(options.get("toolsversion") or "2147483647"))

        async def fill(file: Any) -> None:
            await file.write(0, header.build())
            await file.truncate(header.grain_offset * L.SECTOR)
            await file.write(header.rgd_offset * L.SECTOR, L.initial_gd(header, header.rgd_offset))
            await file.write(header.gd_offset * L.SECTOR, L.initial_gd(header, header.gd_offset))
            await file.write(header.desc_offset * L.SECTOR, desc.encode())
        await create_on("vmdk", filename, open_file, fill)

    # ---- open ---------------------------------------------------------------------------
    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        file = file_child(self.node, "vmdk")
        raw = await read_padded(file, 0, L.SECTOR)
        self.lock = asyncio.Lock()
        self.cid_updated = False
        if raw[:4] != L.MAGIC and L.probe_text(raw):
            await self._open_descriptor_file(file, flags)
            return
        if raw[:4] != L.MAGIC:
            raise NotSupported("vmdk: only sparse extents and descriptor files are "
                               "supported")
        h = Header.parse(raw)
        L.validate_header(h)
        if h.compressed:
            raise NotSupported("vmdk: streamOptimized images are not supported yet")
        self.header = h
        text = b""
        if h.desc_offset and h.desc_size:
            n = min(h.desc_size, 2048) * L.SECTOR
            text = (await read_padded(file, h.desc_offset * L.SECTOR, n)).split(b"\0")[0]
        self.desc = L.parse_descriptor(text.decode("utf-8", "replace"))
        self.gd = await self._read_gd(h.gd_offset)
        self.rgd = await self._read_gd(h.rgd_offset) if h.flags & L.FLAG_RGD else None
        self.gts: dict[int, array] = {}
        self.next_grain = L.round_up(L.round_up(file.total_bytes, L.SECTOR),
                                     h.grain_bytes)

    async def _open_descriptor_file(self, file: Any, flags: OpenFlags) -> None:
        """A descriptor file naming flat extents (monolithicFlat, twoGbMaxExtentFlat)."""
        text = (await read_padded(file, 0, min(file.total_bytes, L.DESC_BYTES)))
        self.desc = L.parse_descriptor(text.split(b"\0")[0].decode("utf-8", "replace"))
        self.flat = await F.open_extents(self.node, self.desc, flags)
        total = sum(e.length for e in self.flat) // L.SECTOR
        self.header = Header(capacity=total)

    def limits(self) -> Limits:
        if self.flat is not None:
            return Limits(request_alignment=L.SECTOR)
        return Limits(request_alignment=L.SECTOR,
                      pwrite_zeroes_alignment=self.header.grain_bytes)

    async def _read_gd(self, sector: int) -> array:
        """The grain directory at ``sector``: the entries inside the file (those past
        its end read as 0, unallocated, as QEMU reads them; they are not kept)."""
        file = self.node.file
        assert file is not None
        at = sector * L.SECTOR
        count = max(0, min(self.header.gt_count, (file.total_bytes - at) // L.ENTRY))
        return L.from_le(await read_padded(file, at, count * L.ENTRY), count)

    # ---- grain tables ---------------------------------------------------------------------
    async def _load_gts(self, offset: int, length: int) -> None:
        """Read the grain tables of ``[offset, offset + length)`` not read yet.  They
        are kept by their sector, so a (hostile) directory naming one table many times
        costs it once."""
        h = self.header
        per = h.num_gtes_per_gt
        first = offset // h.grain_bytes // per
        last = min((offset + max(length, 1) - 1) // h.grain_bytes // per, len(self.gd) - 1)
        for l1 in range(first, last + 1):
            sector = self.gd[l1]
            if sector and sector not in self.gts:
                file = self.node.file
                assert file is not None
                buf = await read_padded(file, sector * L.SECTOR, per * L.ENTRY)
                self.gts.setdefault(sector, L.from_le(buf, per))

    def _gt(self, l1: int) -> array | None:
        return self.gts.get(self.gd[l1]) if l1 < len(self.gd) and self.gd[l1] else None

    def _gte(self, grain: int) -> int:
        l1, l2 = divmod(grain, self.header.num_gtes_per_gt)
        gt = self._gt(l1)
        return gt[l2] if gt is not None else 0

    async def _runs(self, offset: int, length: int) -> list:
        await self._load_gts(offset, length)
        return list(grain_runs(self.header, self._gte, offset, length))

    # ---- read ---------------------------------------------------------------------------
    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        if self.flat is not None:
            return await F.read(self.flat, offset, length)
        file = self.node.file
        assert file is not None
        out = bytearray(length)
        for run in await self._runs(offset, length):
            rel = run.guest - offset
            if run.kind is Kind.DATA:
                out[rel:rel + run.length] = await read_padded(file, run.host, run.length)
            elif self.node.backing is not None and self._gte(run.block) == 0:
                out[rel:rel + run.length] = await self._read_backing(run.guest, run.length)
        return out

    async def _read_backing(self, pos: int, length: int) -> bytes | bytearray:
        """The backing file's bytes, zeroes where it has none (or is shorter)."""
        backing = self.node.backing
        if backing is None or pos >= backing.total_bytes:
            return bytes(length)
        n = min(length, backing.total_bytes - pos)
        data = await backing.read(pos, n)
        return data if n == length else bytes(data) + bytes(length - n)

    # ---- write --------------------------------------------------------------------------
    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        file = self.node.file
        assert file is not None
        if self.flat is not None:
            return await F.write(self.flat, offset, data)
        view = memoryview(data)
        if not self.cid_updated:
            await self._write_cid(random.getrandbits(32))
        for run in await self._runs(offset, len(view)):
            piece = view[run.guest - offset:run.guest - offset + run.length]
            if run.kind is Kind.DATA:
                await file.write(run.host, piece)
            else:
                await self._allocate(run.block, run.guest, piece)

    async def write_zeroes(self, offset: int, length: int, flags: ReqFlag) -> None:
        """Whole grains become zeroed grains (GTE 1, in both tables, whether or not
        they were allocated) when the header allows it; else the request path writes
        zero buffers, as QEMU's does."""
        h = self.header
        gb = h.grain_bytes
        if self.flat is not None or not h.zero_grain or offset % gb or length % gb or \
                offset + length > h.capacity * L.SECTOR:
            raise NotSupported("vmdk: zeroed grains need whole grains", errno.ENOTSUP)
        if not self.cid_updated:
            await self._write_cid(random.getrandbits(32))
        await self._load_gts(offset, length)
        async with self.lock:
            for grain in range(offset // gb, (offset + length) // gb):
                l1, l2 = divmod(grain, h.num_gtes_per_gt)
                gt = self._gt(l1)
                if gt is None:
                    raise ImageCorrupt("vmdk: grain table of a written grain is missing")
                if gt[l2] != L.GTE_ZEROED:
                    gt[l2] = L.GTE_ZEROED
                    await self._update_gte(l1, l2, L.GTE_ZEROED)

    async def _write_cid(self, cid: int) -> None:
        """A new CID in the descriptor, as QEMU writes one before an image's first
        write after open (the whole descriptor area, rewritten as its C string)."""
        file, h = self.node.file, self.header
        assert file is not None
        async with self.lock:
            if self.cid_updated:
                return
            at = h.desc_offset * L.SECTOR
            old = await read_padded(file, at, L.DESC_BYTES)
            new = L.replace_cid(old, cid)
            if new is None:
                raise InvalidArgument("vmdk: the descriptor has no parentCID",
                                      errno.EINVAL)
            await file.write(at, new)
            self.cid_updated = True

    async def _allocate(self, grain: int, pos: int, piece: memoryview) -> None:
        """Give ``grain`` the next grain of the file, write it whole, then its GTEs."""
        file, h = self.node.file, self.header
        assert file is not None
        async with self.lock:
            l1, l2 = divmod(grain, h.num_gtes_per_gt)
            gt = self._gt(l1)
            if gt is None:
                raise ImageCorrupt("vmdk: grain table of a written grain is missing")
            within = pos % h.grain_bytes
            entry = gt[l2]
            if entry and not (entry == L.GTE_ZEROED and h.zero_grain):
                await file.write(entry * L.SECTOR + within, piece)
                return
            host = self.next_grain
            if host // L.SECTOR > 0xFFFFFFFF:
                raise ImageCorrupt("vmdk: the extent is full")
            if entry == 0 and self.node.backing is not None:
                # the rest of the grain comes from the backing file (QEMU's COW)
                buf = bytearray(await self._read_backing(pos - within, h.grain_bytes))
            else:
                buf = bytearray(h.grain_bytes)
            buf[within:within + len(piece)] = piece
            self.next_grain = host + h.grain_bytes
            await file.write(host, buf)
            gt[l2] = host // L.SECTOR
            await self._update_gte(l1, l2, gt[l2])

    async def _update_gte(self, l1: int, l2: int, value: int) -> None:
        file = self.node.file
        assert file is not None
        entry = value.to_bytes(L.ENTRY, "little")
        await file.write(self.gd[l1] * L.SECTOR + l2 * L.ENTRY, entry)
        if self.rgd is not None and l1 < len(self.rgd) and self.rgd[l1]:
            await file.write(self.rgd[l1] * L.SECTOR + l2 * L.ENTRY, entry)

    # ---- status, size, info ---------------------------------------------------------------
    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        """QEMU's answers, a grain at a time: unallocated grains are not allocated here
        (the backing file's, or zeroes), zeroed grains read as zeroes."""
        if self.flat is not None:
            return F.status(self.flat, offset, length)
        run = (await self._runs(offset, length))[0]
        if run.kind is Kind.ZERO:
            zeroed = self._gte(run.block) == L.GTE_ZEROED
            return BlockStatus(Status.ZERO if zeroed else Status.NONE, run.length)
        return BlockStatus(Status.DATA | Status.OFFSET_VALID, run.length, run.host,
                           self.node.file)

    async def get_length(self) -> int:
        return self.header.capacity * L.SECTOR

    async def get_allocated_file_size(self) -> int:
        """The descriptor's file and every extent file, as QEMU sums them."""
        total = 0
        nodes = [self.node.file] + [e.node for e in self.flat or []]
        for n in nodes:
            if n is not None:
                total += await n.allocated_file_size()
        return total

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        raise no_resize()

    def has_zero_init(self) -> bool:
        return not self.desc.parent_hint

    def backing_file_name(self) -> tuple[str | None, str | None]:
        hint = self.desc.parent_hint
        return (hint, "vmdk") if hint else (None, None)

    def get_info(self) -> DriverInfo:
        return DriverInfo(cluster_size=0 if self.flat is not None else self.header.grain_bytes)

    def get_specific_info(self) -> dict[str, Any] | None:
        h = self.header
        file = self.node.file
        name = file.filename if file is not None else ""
        extents: list[dict[str, Any]]
        if self.flat is not None:
            extents = [{"virtual-size": e.length,
                        "filename": e.node.filename if e.node is not None else "",
                        "format": e.kind} for e in self.flat]
        else:
            extents = [{"virtual-size": h.capacity * L.SECTOR, "filename": name,
                        "cluster-size": h.grain_bytes, "format": ""}]
        return {"type": "vmdk",
                "data": {"cid": self.desc.cid, "parent-cid": self.desc.parent_cid,
                         "create-type": self.desc.create_type, "extents": extents}}

    # ---- image management -------------------------------------------------------------------
    async def check(self, mode: CheckMode) -> CheckResult:
        """QEMU's check: every allocated grain must start inside the file; the first
        that does not is reported and ends the check with EINVAL.  It repairs nothing."""
        if mode & CheckMode.FIX_ALL:
            raise NotSupported("This image format does not support checks")
        file, h = self.node.file, self.header
        assert file is not None
        if self.flat is not None:
            return CheckResult()
        span = h.grain_bytes * h.num_gtes_per_gt
        for l1 in range(len(self.gd)):
            await self._load_gts(l1 * span, span)
            gt = self._gt(l1)
            if gt is None:
                continue
            for l2, entry in enumerate(gt):
                grain = l1 * h.num_gtes_per_gt + l2
                if grain >= h.grains:
                    break
                if entry and not (entry == L.GTE_ZEROED and h.zero_grain) \
                        and entry * L.SECTOR >= file.total_bytes:
                    err = InvalidArgument("Invalid argument", errno.EINVAL)
                    err.check_messages.append("ERROR: cluster offset for sector "
                                              f"{grain * h.granularity} points after EOF")
                    raise err
        return CheckResult()


async def _parent_cid(filename: str, backing: str) -> int:
    """The CID of the backing file a new image names (relative to the image's
    directory), which must be a vmdk image, as QEMU's create requires."""
    from ...core.open import open_image
    full = backing if os.path.isabs(backing) else \
        os.path.join(os.path.dirname(filename), backing)
    node = await open_image(full, read_only=True, backing=False)
    try:
        if not isinstance(node.driver, VmdkDriver):
            raise InvalidArgument("backing_file must be a vmdk image")
        return node.driver.desc.cid
    finally:
        await node.close()
