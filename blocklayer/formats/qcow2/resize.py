"""Resizing (grow with optional preallocation, shrink as ``qemu-img resize --shrink``),
the backing file name and emptying."""
from __future__ import annotations

import errno

from ...core.driver import Prealloc
from ...core.errors import BlockError, ImageCorrupt, InvalidArgument, NotSupported
from ...core.io import metadata_io
from . import layout as L
from .alloc import WritePath, _Cluster
from .mapping import CT, L1E_OFFSET_MASK
from .refcount import Discard, last_used
from .state import Qcow2State
from .zeroes import ZeroPath


class ResizePath:
    """Resizing the image of state ``s``: its L1 table grows through the write path's
    planning (``writes``), shrinking discards through ``zeroes``."""

    def __init__(self, state: Qcow2State, writes: WritePath, zeroes: ZeroPath) -> None:
        self.s = state
        self.writes = writes
        self.zeroes = zeroes

    # ---- resize ------------------------------------------------------------------------------
    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        h = self.s.header
        if size % 512:
            raise InvalidArgument("The new size must be a multiple of 512")
        old = h.size
        if size < old:
            if prealloc is not Prealloc.OFF:
                raise InvalidArgument("Preallocation can't be used for shrinking an image")
            await self._shrink(size)
        elif size > old:
            await self.grow_l1(self.s.geo.l1_size_for(size))
            if prealloc in (Prealloc.FALLOC, Prealloc.FULL) and not h.has_data_file:
                await self.preallocate_area(old, size, prealloc)
            elif prealloc is not Prealloc.OFF:
                await self.preallocate(old, size, prealloc)
            elif h.has_data_file and self.s.data_node is not None \
                    and self.s.data_node.total_bytes < size:
                await self.s.data_node.truncate(size, exact, prealloc)
        async with self.s.lock:
            await self.s.write_header_fields(size=size)
        self.s.metadata_prealloc = None

    async def _shrink(self, size: int) -> None:
        cs = self.s.cluster_size
        start = -(-size // cs) * cs
        await self.zeroes.discard_clusters(start, self.s.header.size, Discard.ALWAYS, full=True)
        async with self.s.lock:
            new_l1 = self.s.geo.l1_size_for(size)
            l1 = self.s.mapping.l1
            for i in range(len(l1) - 1, new_l1 - 1, -1):
                off = l1[i] & L1E_OFFSET_MASK
                if off:
                    l1[i] = 0
                    await self.s.write_l1_entry(i)
                    await self.s.free_clusters(off, cs, Discard.ALWAYS)
            await self.s.l2_cache.write_back()
            await self.s.refcounts.shrink_table()
            await self.s.rb_cache.write_back()
            await self.s.file.flush()
            if not self.s.header.has_data_file:
                end = -(-self.s.file.total_bytes // cs)
                last = await self._last_used_cluster(end)
                if (last + 1) * cs < self.s.file.total_bytes:
                    await self.s.file.truncate((last + 1) * cs)
        if self.s.header.data_file_raw and self.s.data_node is not None:
            await self.s.data_node.truncate(size)

    async def _last_used_cluster(self, end: int) -> int:
        i = end - 1
        while i > 0:
            first = max(0, i - (i & (self.s.refcounts.block_entries - 1)))
            counts = await self.s.refcounts.get_run(first, i - first + 1)
            used = last_used(counts)
            if used >= 0:
                return first + used
            i = first - 1
        return 0

    async def grow_l1(self, new_size: int) -> None:
        """Move the L1 table to a bigger one of exactly ``new_size`` entries."""
        if new_size <= len(self.s.mapping.l1):
            return
        if new_size * 8 > L.MAX_L1_SIZE:
            raise BlockError("Image is too big", errno.EFBIG)
        async with self.s.lock:
            old_off, old_size = self.s.header.l1_table_offset, len(self.s.mapping.l1)
            table = L.empty_table(new_size * L.TABLE_ENTRY)
            table[:old_size] = self.s.mapping.l1
            new_off = await self.s.refcounts.alloc_clusters(new_size * 8)
            await self.s.rb_cache.flush()
            await self.s.file.write(new_off, L.build_table(table))
            await self.s.file.flush()
            await self.s.write_header_l1(new_off, new_size)
            self.s.mapping.l1 = table
            if old_size:
                await self.s.free_clusters(old_off, old_size * 8, Discard.OTHER)

    async def preallocate(self, start: int, end: int, mode: Prealloc) -> None:
        """Allocate clusters for ``[start, end)`` without writing data (QEMU's
        preallocate_co), then grow the file to hold them."""
        cs = self.s.cluster_size
        last_host = 0
        pos = start
        while pos < end:
            stop = min(end, self.s.table_end(pos))
            async with self.s.lock:
                plan = await self._plan_prealloc(pos, stop)
                if plan:
                    await self.writes.link_l2(pos, plan)
                    last_host = max(last_host, max(c.host for c in plan) + cs)
            pos = stop
        async with self.s.lock:
            await self.s.l2_cache.write_back()
            await self.s.rb_cache.write_back()
        target = self.s.data_node if self.s.header.has_data_file else self.s.file
        if target is None:
            return
        if self.s.header.has_data_file:
            last_host = max(last_host, end)
        if last_host > target.total_bytes:
            fmode = Prealloc.OFF if mode is Prealloc.METADATA else mode
            await target.truncate(last_host, False, fmode)

    async def preallocate_area(self, start: int, end: int,
                               mode: Prealloc) -> None:
        """falloc/full growth as QEMU lays it out: new refcount structures after the
        last used cluster, then one contiguous data area, allocated in the file with
        ``mode``; the L2 tables go wherever the allocator finds room."""
        from .alloc import _Cluster
        cs, geo = self.s.cluster_size, self.s.geo
        first = -(-start // cs) * cs if start % cs else start
        async with self.s.lock:
            await self.s.mark_dirty()
            last = await self._last_used_cluster(-(-self.s.file.total_bytes // cs))
            nb_data = (-(-end // cs) * cs - first) // cs
            if nb_data <= 0:
                return
            nb_l2 = -(-nb_data // geo.l2_entries) + 1
            area = await self.s.refcounts.refcount_area((last + 1) * cs, nb_data + nb_l2)
            got = await self.s.refcounts.alloc_clusters_at(area, nb_data)
            if got != nb_data:
                raise BlockError("qcow2: preallocation area is not free", errno.EIO)
            await self.s.rb_cache.flush()
        try:
            await self.s.file.truncate(area + nb_data * cs, False, mode)
        except BlockError:
            async with self.s.lock:
                await self.s.refcounts.free_clusters(area, nb_data * cs, Discard.OTHER)
            raise
        host, guest = area, first
        while guest < first + nb_data * cs:
            n = min(first + nb_data * cs - guest, self.s.table_end(guest) - guest) // cs
            async with self.s.lock:
                entry = await self.s.l2_cache.get(await self.s.l2_for_write(guest))
                plan = []
                for i in range(n):
                    idx = geo.l2_index(guest + i * cs)
                    e, b = self.zeroes.read_entry(entry, idx)
                    plan.append(_Cluster(idx, guest + i * cs, 0, cs, e, b,
                                         host=host + i * cs, alloc=True, new_bitmap=b))
                self.s.l2_cache.put(entry)
                await self.writes.link_l2(guest, plan)
            guest += n * cs
            host += n * cs

    async def _plan_prealloc(self, pos: int, stop: int) -> list[_Cluster]:
        cs, geo = self.s.cluster_size, self.s.geo
        l2_off = await self.s.l2_for_write(pos)
        entry = await self.s.l2_cache.get(l2_off)
        plan: list[_Cluster] = []
        try:
            p = pos - pos % cs
            while p < stop:
                idx = geo.l2_index(p)
                e, b = self.zeroes.read_entry(entry, idx)
                if geo.cluster_type(e) in (CT.UNALLOCATED, CT.ZERO_PLAIN):
                    # as QEMU: preallocated subclusters stay "unallocated" (they read
                    # from the backing file, or as zeroes)
                    plan.append(_Cluster(idx, p, 0, cs, e, b, alloc=True, new_bitmap=b))
                p += cs
        finally:
            self.s.l2_cache.put(entry)
        if plan:
            await self.s.mark_dirty()
            await self.writes.allocate(plan)
        return plan

    # ---- backing file and emptying -----------------------------------------------------
    async def change_backing_file(self, backing_file: str | None,
                                  backing_fmt: str | None) -> None:
        h = self.s.header
        if backing_file and h.data_file_raw:
            raise NotSupported("Cannot use a backing file with data-file-raw")
        if backing_file and len(backing_file.encode()) > L.MAX_BACKING_NAME:
            raise InvalidArgument("Backing file name too long")
        old = (h.backing_file, h.backing_format)
        h.backing_file = backing_file or None
        h.backing_format = (backing_fmt or None) if backing_file else None
        try:
            with metadata_io():
                await self.s.update_header()
                await self.s.file.flush()
        except BlockError:
            h.backing_file, h.backing_format = old
            raise
        self.s.node.backing_file, self.s.node.backing_format = h.backing_file, h.backing_format

    async def make_empty(self) -> None:
        """Drop every cluster of the active layer (what ``commit`` does after copying):
        where QEMU can, by rewriting the image as a new one of four clusters or so;
        otherwise by discarding every cluster."""
        with metadata_io():
            if self._can_empty_completely():
                await self._make_completely_empty()
                return
            await self.zeroes.discard_clusters(0, self.s.header.size, Discard.SNAPSHOT, full=True)
            await self.s.flush_caches()

    def _l1_clusters(self) -> int:
        return -(-len(self.s.mapping.l1) * 8 // self.s.cluster_size)

    def _can_empty_completely(self) -> bool:
        """QEMU's conditions: v3 (the dirty bit covers the rewrite), nothing else that
        owns clusters (snapshots, bitmaps, a LUKS header), no data file, and the header,
        refcount table, one refcount block and the L1 table counted by that block."""
        h = self.s.header
        return (h.version >= 3 and not self.s.snapshots and h.bitmaps is None
                and h.crypt_method != L.CRYPT_LUKS and not h.has_data_file
                and 3 + self._l1_clusters() <= self.s.refcounts.block_entries)

    async def _make_completely_empty(self) -> None:
        """QEMU's make_completely_empty: under the dirty bit, zero the L1 table and the
        clusters after the header, point the header at a refcount table in cluster 1
        naming a refcount block in cluster 2 and an L1 table from cluster 3, count those
        clusters, clear the dirty bit and cut the file after the L1 table."""
        h, cs, rc = self.s.header, self.s.cluster_size, self.s.refcounts
        l1_clusters = self._l1_clusters()
        async with self.s.lock:
            await rc.process_discards()
            for cache in (self.s.l2_cache, self.s.rb_cache):
                await cache.flush()
                cache.entries.clear()
            await self.s.set_incompatible(h.incompatible_features | L.INCOMPAT_DIRTY)
            await self.s.file.write_zeroes(h.l1_table_offset, l1_clusters * cs)
            l1 = self.s.mapping.l1
            l1[:] = L.empty_table(len(l1) * 8)
            await self.s.file.write_zeroes(cs, (2 + l1_clusters) * cs)
            await self.s.write_header_fields(l1_table_offset=3 * cs, refcount_table_offset=cs,
                                             refcount_table_clusters=1)
            rc.table_offset, rc.table = cs, L.empty_table(cs)
            await self.s.file.write(cs, L.build_entries(2 * cs))
            await self.s.file.flush()
            rc.table[0] = 2 * cs
            rc.free_cluster_index = rc.free_byte_offset = 0
            first = await rc.alloc_clusters(3 * cs + len(l1) * 8)
            if first != 0:
                raise ImageCorrupt("qcow2: emptying the image allocated its header at "
                                   f"{first:#x}")
            self.s.metadata_prealloc = None
        await self.s.flush_caches()
        await self.s.file.flush()
        await self.s.set_incompatible(h.incompatible_features & ~L.INCOMPAT_DIRTY)
        await self.s.file.truncate((3 + l1_clusters) * cs)

