"""The state of an open qcow2 image, declared in one place, and the metadata operations
every part of the driver shares.

:class:`Qcow2State` holds what QEMU keeps in BDRVQcow2State: the parsed header, the
geometry, the caches, the mapping (L1 table), the refcounts, the locks and what open
decided (data file, lazy refcounts, discard pass-through).  The driver is built on it;
the components (:mod:`.alloc`, :mod:`.zeroes`, :mod:`.resize`, :mod:`.copyrange`,
:mod:`.bitmap`) receive it as an explicit reference and reach each other only through
the references they are given.

The shared operations here are the ones whose order on disk every component relies on:
header fields (by name, offsets from :mod:`.layout`), the L1 table, the L2 table for a
write (allocated or copied), freeing clusters, the corruption signal and the overlap
checks, and the read path under the mapping (copy-on-write reads through it).
"""
from __future__ import annotations

import asyncio
import errno
from typing import TYPE_CHECKING, Any

from ...core.errors import BlockError, ImageCorrupt
from . import layout as L
from .compress import decompress
from .mapping import CT, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED, SC
from .refcount import Discard

if TYPE_CHECKING:
    from ...core.node import BlockNode
    from ...core.options import OpenFlags
    from .bitmap import Bitmap
    from .cache import MetadataCache
    from .mapping import Geometry, Mapping
    from .overlap import MetadataClusters
    from .ranges import RangeLock
    from .refcount import Refcounts
    from .snapshot import Snapshot


class Qcow2State:
    """Everything an open image holds (set by :meth:`~.driver.Qcow2Driver.open`)."""

    node: BlockNode
    #: the image file, and where guest data lives (the file itself, or the data file;
    #: None when a metadata-only open left the data file closed)
    file: BlockNode
    data_node: BlockNode | None
    flags: OpenFlags
    header: L.Header
    geo: Geometry
    cluster_size: int
    #: metadata lock (QEMU's s->lock); guest ranges held while data moves without it
    lock: asyncio.Lock
    ranges: RangeLock
    l2_cache: MetadataCache
    rb_cache: MetadataCache
    mapping: Mapping
    refcounts: Refcounts
    metadata_clusters: MetadataClusters
    lazy_refcounts: bool
    #: QEMU's metadata preallocation detection, computed on the first block status
    metadata_prealloc: bool | None
    #: the internal snapshots, and the bytes their table takes on disk
    snapshots: list[Snapshot]
    snapshots_size: int
    #: the dirty bitmaps (persistent and not), and ``qemu-img info``'s view of them
    bitmaps: list[Bitmap]
    bitmap_info: list[dict[str, Any]] | None
    #: reopened read-write: what a writable open does is still to be done
    reopened_rw: bool = False
    corrupt_reported: bool = False

    # ---- the header -----------------------------------------------------------------
    async def update_header(self) -> None:
        """Rewrite cluster 0 from ``self.header`` (QEMU's qcow2_update_header)."""
        buf = self.header.build()
        await self.file.write(0, buf + bytes(self.cluster_size - len(buf)))

    async def write_header_fields(self, **fields: int) -> None:
        """Write these header fields in place (one write per contiguous run), flush,
        then take them into ``self.header``."""
        for offset, data in L.header_field_writes(fields):
            await self.file.write(offset, data)
        await self.file.flush()
        for name, value in fields.items():
            setattr(self.header, name, value)

    async def write_header_reftable(self, offset: int, clusters: int) -> None:
        await self.write_header_fields(refcount_table_offset=offset,
                                       refcount_table_clusters=clusters)

    async def set_incompatible(self, value: int) -> None:
        await self.write_header_fields(incompatible_features=value)

    async def corrupt(self, message: str, offset: int, size: int) -> None:
        """QEMU's qcow2_signal_corruption: mark a writable image corrupt, fail with EIO."""
        fatal = not self.node.read_only
        if fatal and not self.header.incompatible_features & L.INCOMPAT_CORRUPT:
            try:
                await self.set_incompatible(self.header.incompatible_features
                                            | L.INCOMPAT_CORRUPT)
            except BlockError:
                pass
        if not self.corrupt_reported:
            self.corrupt_reported = True
            self.node.graph.emit("BLOCK_IMAGE_CORRUPTED", {
                "device": "", "node-name": self.node.name, "msg": message,
                "offset": offset, "size": size, "fatal": fatal})
        raise ImageCorrupt(f"qcow2: Image is corrupt: {message}", errno.EIO)

    # ---- overlap checks -------------------------------------------------------------
    async def overlap_check(self, offset: int, length: int) -> None:
        """Refuse metadata writes over the header, the L1 or the refcount table."""
        h = self.header
        for start, n in ((0, self.cluster_size),
                         (h.l1_table_offset, h.l1_size * 8),
                         (h.refcount_table_offset,
                          h.refcount_table_clusters * self.cluster_size)):
            if n and offset < start + n and start < offset + length:
                await self.corrupt(f"Preventing invalid write on metadata (overlaps with "
                                   f"active table at {start:#x})", offset, length)

    async def data_overlap_check(self, offset: int, length: int) -> None:
        """Refuse guest data writes over any active metadata (QEMU's overlap check,
        ``cached`` template): a hostile L2 entry must not aim guest data at tables."""
        if self.header.has_data_file or length <= 0:
            return
        await self.overlap_check(offset, length)
        start = offset - offset % self.cluster_size
        l1, reftable = self.mapping.l1, self.refcounts.table
        if not self.metadata_clusters.overlap(l1, reftable, start, offset + length):
            return
        for name, offsets in (("L2", [e & L1E_OFFSET_MASK for e in l1]),
                              ("refcount block", reftable)):
            # the first in table order, as QEMU names it
            where = next((t for t in offsets if start <= t < offset + length), None)
            if where is not None:
                await self.corrupt(f"Preventing invalid write on metadata (overlaps with "
                                   f"active {name} table at {where:#x})", offset, length)

    # ---- caches ---------------------------------------------------------------------
    async def flush_caches(self) -> None:
        async with self.lock:
            await self.l2_cache.write_back()
            await self.rb_cache.write_back()
            await self.refcounts.process_discards()

    def need_accurate_refcounts(self) -> bool:
        return not self.header.incompatible_features & L.INCOMPAT_DIRTY

    async def mark_dirty(self) -> None:
        """Lazy refcounts: set the dirty bit before the first unflushed refcount."""
        if not self.lazy_refcounts or not self.need_accurate_refcounts():
            return
        await self.rb_cache.write_back()
        await self.file.flush()
        await self.set_incompatible(self.header.incompatible_features | L.INCOMPAT_DIRTY)

    # ---- L1 and L2 tables -----------------------------------------------------------
    def l2_pos(self, index: int) -> tuple[int, int]:
        """(entry word, bitmap word) positions of L2 index ``index``."""
        if self.geo.extended_l2:
            return 2 * index, 2 * index + 1
        return index, -1

    def table_end(self, pos: int) -> int:
        """The guest offset where the L2 table covering ``pos`` stops."""
        shift = self.geo.cluster_bits + self.geo.l2_bits
        return ((pos >> shift) + 1) << shift

    async def write_l1_entry(self, index: int) -> None:
        start = index & ~63
        end = min(start + 64, len(self.mapping.l1))
        buf = L.build_table(self.mapping.l1, start, end)
        await self.file.write(self.header.l1_table_offset + start * 8, buf)
        await self.file.flush()

    async def write_header_l1(self, offset: int, size: int) -> None:
        await self.write_header_fields(l1_size=size, l1_table_offset=offset)

    async def l2_for_write(self, offset: int) -> int:
        """The L2 table covering ``offset``, allocated (or copied, if shared) now."""
        l1_index = self.geo.l1_index(offset)
        if l1_index >= len(self.mapping.l1):
            raise BlockError("qcow2: write beyond the L1 table", errno.EIO)
        l2_off = await self.mapping.l2_offset(l1_index)
        l1e = self.mapping.l1[l1_index]
        if l2_off and l1e & OFLAG_COPIED:
            return l2_off
        await self.mark_dirty()
        new = await self.refcounts.alloc_clusters(self.cluster_size)
        if self.need_accurate_refcounts():
            await self.rb_cache.flush()
        entry = await self.l2_cache.get(new, empty=True)
        try:
            if l2_off:
                old = await self.l2_cache.get(l2_off)
                entry.table[:] = old.table
                self.l2_cache.put(old)
            self.l2_cache.mark_dirty(entry)
        finally:
            self.l2_cache.put(entry)
        await self.l2_cache.flush()
        self.mapping.l1[l1_index] = new | OFLAG_COPIED
        await self.write_l1_entry(l1_index)
        if l2_off:
            await self.free_clusters(l2_off, self.cluster_size, Discard.OTHER)
        return new

    # ---- freeing ----------------------------------------------------------------------
    async def free_clusters(self, offset: int, size: int, kind: Discard) -> None:
        await self.rb_cache.set_dependency(self.l2_cache)
        await self.refcounts.free_clusters(offset, size, kind)

    async def free_any_cluster(self, entry: int, kind: Discard) -> None:
        """Drop the reference an L2 entry held (QEMU's qcow2_free_any_cluster)."""
        ct = self.geo.cluster_type(entry)
        if ct is CT.COMPRESSED:
            coffset, csize = self.geo.compressed(entry)
            await self.free_clusters(coffset, csize, kind)
        elif ct in (CT.NORMAL, CT.ZERO_ALLOC):
            off = entry & L2E_OFFSET_MASK
            if off % self.cluster_size:
                await self.corrupt(f"Cannot free unaligned cluster {off:#x}", off,
                                   self.cluster_size)
            if self.header.has_data_file:
                if self.refcounts.discard_passthrough.get(kind) and self.data_node:
                    try:
                        await self.data_node.discard(off, self.cluster_size)
                    except BlockError:
                        pass
            else:
                await self.free_clusters(off, self.cluster_size, kind)

    # ---- reading through the mapping -----------------------------------------------------
    def data_file(self) -> BlockNode:
        """Where guest data lives; EIO when the data file is not open."""
        if self.data_node is None:
            raise BlockError("qcow2: the data file is not open", errno.EIO)
        return self.data_node

    async def read_unlocked(self, offset: int, length: int) -> bytes | bytearray:
        """Read through the mapping; the caller holds the guest range."""
        if length <= 0:
            return bytearray()
        async with self.lock:
            run = await self.mapping.lookup(offset, length)
        if run.length == length and run.kind is SC.NORMAL and self.data_node is not None:
            assert run.host is not None
            return await self.data_node.read(run.host, length)    # one run: no copy
        out = bytearray(length)
        view = memoryview(out)
        pos, end = offset, offset + length
        while True:
            n = run.length
            dst = view[pos - offset:pos - offset + n]
            if run.kind in (SC.UNALLOCATED_PLAIN, SC.UNALLOCATED_ALLOC):
                await self._read_backing(pos, dst)
            elif run.kind is SC.NORMAL:
                assert run.host is not None
                dst[:] = await self.data_file().read(run.host, n)
            elif run.kind is SC.COMPRESSED:
                cluster = await self.read_compressed(run.entry)
                skip = self.geo.into_cluster(pos)
                dst[:] = cluster[skip:skip + n]
            pos += n
            if pos >= end:
                return out
            async with self.lock:
                run = await self.mapping.lookup(pos, end - pos)

    async def _read_backing(self, pos: int, dst: memoryview) -> None:
        backing = self.node.backing
        if backing is None:
            return
        n = min(len(dst), max(backing.total_bytes - pos, 0))
        if n > 0:
            dst[:n] = await backing.read(pos, n)

    async def read_compressed(self, entry: int) -> bytes:
        coffset, csize = self.geo.compressed(entry)
        data = await self.file.read(coffset, csize)
        return decompress(self.header.compression_type, data, self.cluster_size)
