"""Resizing (grow with optional preallocation, shrink as ``qemu-img resize --shrink``),
reopening between read-only and read-write, the backing file name and emptying."""
from __future__ import annotations

import asyncio
import errno
import struct
from typing import TYPE_CHECKING

from ...core.driver import Prealloc
from ...core.errors import BlockError, ImageCorrupt, InvalidArgument, NotSupported
from . import layout as L
from .mapping import CT, L1E_OFFSET_MASK
from .refcount import Discard, last_used

if TYPE_CHECKING:
    from .alloc import _Cluster
    from .driver import Qcow2Driver


class ResizePath:
    """Mixed into :class:`~.driver.Qcow2Driver` (through :class:`~.alloc.WritePath`)."""

    # ---- resize ------------------------------------------------------------------------------
    async def truncate(self: "Qcow2Driver", size: int, exact: bool, prealloc: Prealloc) -> None:
        if self.reopened_rw:
            await self.finish_reopen_rw()
        h = self.header
        if size % 512:
            raise InvalidArgument("The new size must be a multiple of 512")
        old = h.size
        if size < old:
            if prealloc is not Prealloc.OFF:
                raise InvalidArgument("Preallocation can't be used for shrinking an image")
            await self._shrink(size)
        elif size > old:
            await self.grow_l1(self.geo.l1_size_for(size))
            if prealloc in (Prealloc.FALLOC, Prealloc.FULL) and not h.has_data_file:
                await self.preallocate_area(old, size, prealloc)
            elif prealloc is not Prealloc.OFF:
                await self.preallocate(old, size, prealloc)
            elif h.has_data_file and self.data_node is not None \
                    and self.data_node.total_bytes < size:
                await self.data_node.truncate(size, exact, prealloc)
        async with self.lock:
            await self.file.write(24, struct.pack(">Q", size))
            await self.file.flush()
            h.size = size
        self.metadata_prealloc = None

    async def _shrink(self: "Qcow2Driver", size: int) -> None:
        cs = self.cluster_size
        start = -(-size // cs) * cs
        await self.discard_clusters(start, self.header.size, Discard.ALWAYS, full=True)
        async with self.lock:
            new_l1 = self.geo.l1_size_for(size)
            l1 = self.mapping.l1
            for i in range(len(l1) - 1, new_l1 - 1, -1):
                off = l1[i] & L1E_OFFSET_MASK
                if off:
                    l1[i] = 0
                    await self.write_l1_entry(i)
                    await self.free_clusters(off, cs, Discard.ALWAYS)
            await self.l2_cache.write_back()
            await self.refcounts.shrink_table()
            await self.rb_cache.write_back()
            await self.file.flush()
            if not self.header.has_data_file:
                end = -(-self.file.total_bytes // cs)
                last = await self._last_used_cluster(end)
                if (last + 1) * cs < self.file.total_bytes:
                    await self.file.truncate((last + 1) * cs)
        if self.header.data_file_raw and self.data_node is not None:
            await self.data_node.truncate(size)

    async def _last_used_cluster(self: "Qcow2Driver", end: int) -> int:
        i = end - 1
        while i > 0:
            first = max(0, i - (i & (self.refcounts.block_entries - 1)))
            counts = await self.refcounts.get_run(first, i - first + 1)
            used = last_used(counts)
            if used >= 0:
                return first + used
            i = first - 1
        return 0

    async def grow_l1(self: "Qcow2Driver", new_size: int) -> None:
        """Move the L1 table to a bigger one of exactly ``new_size`` entries."""
        if new_size <= len(self.mapping.l1):
            return
        if new_size * 8 > L.MAX_L1_SIZE:
            raise BlockError("Image is too big", errno.EFBIG)
        async with self.lock:
            old_off, old_size = self.header.l1_table_offset, len(self.mapping.l1)
            table = L.empty_table(new_size * L.TABLE_ENTRY)
            table[:old_size] = self.mapping.l1
            new_off = await self.refcounts.alloc_clusters(new_size * 8)
            await self.rb_cache.flush()
            await self.file.write(new_off, L.build_table(table))
            await self.file.flush()
            await self.write_header_l1(new_off, new_size)
            self.mapping.l1 = table
            if old_size:
                await self.free_clusters(old_off, old_size * 8, Discard.OTHER)

    async def preallocate(self: "Qcow2Driver", start: int, end: int, mode: Prealloc) -> None:
        """Allocate clusters for ``[start, end)`` without writing data (QEMU's
        preallocate_co), then grow the file to hold them."""
        cs = self.cluster_size
        last_host = 0
        pos = start
        while pos < end:
            stop = min(end, self._table_end(pos))
            async with self.lock:
                plan = await self._plan_prealloc(pos, stop)
                if plan:
                    await self._link_l2(pos, plan)
                    last_host = max(last_host, max(c.host for c in plan) + cs)
            pos = stop
        async with self.lock:
            await self.l2_cache.write_back()
            await self.rb_cache.write_back()
        target = self.data_node if self.header.has_data_file else self.file
        if target is None:
            return
        if self.header.has_data_file:
            last_host = max(last_host, end)
        if last_host > target.total_bytes:
            fmode = Prealloc.OFF if mode is Prealloc.METADATA else mode
            await target.truncate(last_host, False, fmode)

    async def preallocate_area(self: "Qcow2Driver", start: int, end: int,
                               mode: Prealloc) -> None:
        """falloc/full growth as QEMU lays it out: new refcount structures after the
        last used cluster, then one contiguous data area, allocated in the file with
        ``mode``; the L2 tables go wherever the allocator finds room."""
        from .alloc import _Cluster
        cs, geo = self.cluster_size, self.geo
        first = -(-start // cs) * cs if start % cs else start
        async with self.lock:
            await self._mark_dirty()
            last = await self._last_used_cluster(-(-self.file.total_bytes // cs))
            nb_data = (-(-end // cs) * cs - first) // cs
            if nb_data <= 0:
                return
            nb_l2 = -(-nb_data // geo.l2_entries) + 1
            area = await self.refcounts.refcount_area((last + 1) * cs, nb_data + nb_l2)
            got = await self.refcounts.alloc_clusters_at(area, nb_data)
            if got != nb_data:
                raise BlockError("qcow2: preallocation area is not free", errno.EIO)
            await self.rb_cache.flush()
        try:
            await self.file.truncate(area + nb_data * cs, False, mode)
        except BlockError:
            async with self.lock:
                await self.refcounts.free_clusters(area, nb_data * cs, Discard.OTHER)
            raise
        host, guest = area, first
        while guest < first + nb_data * cs:
            n = min(first + nb_data * cs - guest, self._table_end(guest) - guest) // cs
            async with self.lock:
                entry = await self.l2_cache.get(await self.l2_for_write(guest))
                plan = []
                for i in range(n):
                    idx = geo.l2_index(guest + i * cs)
                    e, b = self._read_entry(entry, idx)
                    plan.append(_Cluster(idx, guest + i * cs, 0, cs, e, b,
                                         host=host + i * cs, alloc=True, new_bitmap=b))
                self.l2_cache.put(entry)
                await self._link_l2(guest, plan)
            guest += n * cs
            host += n * cs

    async def _plan_prealloc(self: "Qcow2Driver", pos: int, stop: int) -> list[_Cluster]:
        cs, geo = self.cluster_size, self.geo
        l2_off = await self.l2_for_write(pos)
        entry = await self.l2_cache.get(l2_off)
        plan: list[_Cluster] = []
        try:
            p = pos - pos % cs
            while p < stop:
                idx = geo.l2_index(p)
                e, b = self._read_entry(entry, idx)
                if geo.cluster_type(e) in (CT.UNALLOCATED, CT.ZERO_PLAIN):
                    from .alloc import _Cluster
                    # as QEMU: preallocated subclusters stay "unallocated" (they read
                    # from the backing file, or as zeroes)
                    plan.append(_Cluster(idx, p, 0, cs, e, b, alloc=True, new_bitmap=b))
                p += cs
        finally:
            self.l2_cache.put(entry)
        if plan:
            await self._mark_dirty()
            await self._allocate(plan)
        return plan

    # ---- reopen -------------------------------------------------------------------------
    reopened_rw = False

    async def reopen_prepare(self: "Qcow2Driver", options: dict, read_only: bool) -> object:
        if read_only and not self.node.read_only:
            from .driver import nested
            with nested():                   # become clean while the file is writable
                await self.flush_caches()
                if self.header.incompatible_features & L.INCOMPAT_DIRTY:
                    await self.set_incompatible(self.header.incompatible_features
                                                & ~L.INCOMPAT_DIRTY)
        if not read_only and self.node.read_only \
                and self.header.incompatible_features & L.INCOMPAT_CORRUPT:
            raise BlockError("qcow2: Image is corrupt; cannot be opened read/write",
                             errno.EACCES)
        return not read_only and self.node.read_only

    async def reopen_commit(self: "Qcow2Driver", state: object) -> None:
        # the file child becomes writable only after this: finish on the first change
        self.reopened_rw = bool(state)

    async def finish_reopen_rw(self: "Qcow2Driver") -> None:
        """What a read-write open does (repair a dirty image, clear unknown autoclear
        bits), done when a node reopened read-write first changes."""
        async with self.reopen_lock:
            if self.reopened_rw:
                from .driver import nested
                with nested():
                    await self._open_writable()
                self.reopened_rw = False

    @property
    def reopen_lock(self: "Qcow2Driver") -> asyncio.Lock:
        lock = self.__dict__.get("_reopen_lock")
        if lock is None:
            lock = self.__dict__["_reopen_lock"] = asyncio.Lock()
        return lock

    # ---- backing file and emptying -----------------------------------------------------
    async def change_backing_file(self: "Qcow2Driver", backing_file: str | None,
                                  backing_fmt: str | None) -> None:
        h = self.header
        if backing_file and h.data_file_raw:
            raise NotSupported("Cannot use a backing file with data-file-raw")
        if backing_file and len(backing_file.encode()) > L.MAX_BACKING_NAME:
            raise InvalidArgument("Backing file name too long")
        old = (h.backing_file, h.backing_format)
        h.backing_file = backing_file or None
        h.backing_format = (backing_fmt or None) if backing_file else None
        from .driver import nested
        try:
            with nested():
                await self.update_header()
                await self.file.flush()
        except BlockError:
            h.backing_file, h.backing_format = old
            raise
        self.node.backing_file, self.node.backing_format = h.backing_file, h.backing_format

    async def make_empty(self: "Qcow2Driver") -> None:
        """Drop every cluster of the active layer (what ``commit`` does after copying):
        where QEMU can, by rewriting the image as a new one of four clusters or so;
        otherwise by discarding every cluster."""
        from .driver import nested
        with nested():
            if self._can_empty_completely():
                await self._make_completely_empty()
                return
            await self.discard_clusters(0, self.header.size, Discard.SNAPSHOT, full=True)
            await self.flush_caches()

    def _l1_clusters(self: "Qcow2Driver") -> int:
        return -(-len(self.mapping.l1) * 8 // self.cluster_size)

    def _can_empty_completely(self: "Qcow2Driver") -> bool:
        """QEMU's conditions: v3 (the dirty bit covers the rewrite), nothing else that
        owns clusters (snapshots, bitmaps, a LUKS header), no data file, and the header,
        refcount table, one refcount block and the L1 table counted by that block."""
        h = self.header
        return (h.version >= 3 and not self.snapshots and h.bitmaps is None
                and h.crypt_method != L.CRYPT_LUKS and not h.has_data_file
                and 3 + self._l1_clusters() <= self.refcounts.block_entries)

    async def _make_completely_empty(self: "Qcow2Driver") -> None:
        """QEMU's make_completely_empty: under the dirty bit, zero the L1 table and the
        clusters after the header, point the header at a refcount table in cluster 1
        naming a refcount block in cluster 2 and an L1 table from cluster 3, count those
        clusters, clear the dirty bit and cut the file after the L1 table."""
        h, cs, rc = self.header, self.cluster_size, self.refcounts
        l1_clusters = self._l1_clusters()
        async with self.lock:
            await rc.process_discards()
            for cache in (self.l2_cache, self.rb_cache):
                await cache.flush()
                cache.entries.clear()
            await self.set_incompatible(h.incompatible_features | L.INCOMPAT_DIRTY)
            await self.file.write_zeroes(h.l1_table_offset, l1_clusters * cs)
            l1 = self.mapping.l1
            l1[:] = L.empty_table(len(l1) * 8)
            await self.file.write_zeroes(cs, (2 + l1_clusters) * cs)
            await self.file.write(40, struct.pack(">QQI", 3 * cs, cs, 1))
            await self.file.flush()
            h.l1_table_offset, h.refcount_table_offset, h.refcount_table_clusters = 3 * cs, cs, 1
            rc.table_offset, rc.table = cs, L.empty_table(cs)
            await self.file.write(cs, struct.pack(">Q", 2 * cs))
            await self.file.flush()
            rc.table[0] = 2 * cs
            rc.free_cluster_index = rc.free_byte_offset = 0
            first = await rc.alloc_clusters(3 * cs + len(l1) * 8)
            if first != 0:
                raise ImageCorrupt("qcow2: emptying the image allocated its header at "
                                   f"{first:#x}")
            self.metadata_prealloc = None
        await self.flush_caches()
        await self.file.flush()
        await self.set_incompatible(h.incompatible_features & ~L.INCOMPAT_DIRTY)
        await self.file.truncate((3 + l1_clusters) * cs)

