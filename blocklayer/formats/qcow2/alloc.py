"""The qcow2 write path: allocating writes with copy-on-write, zero clusters, discard,
compressed writes, L2 table and L1 table allocation.

Order of a write that allocates (so a crash at any point leaves at most leaks):
refcounts are raised (in the refcount cache), the data and the copied-on-write parts
reach the data file, then the L2 entries change; the L2 cache is written only after the
refcount cache and a flush of the file.  Clusters are freed only after the L2 entries
that referenced them are gone (the refcount cache then depends on the L2 cache).
"""
from __future__ import annotations

import asyncio
import errno
import struct
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator

import numpy as np

from ...driver import Prealloc, ReqFlag
from ...errors import BlockError, InvalidArgument, NotSupported
from . import layout as L
from .compress import compress
from .mapping import (CT, L1E_OFFSET_MASK, L2_BITMAP_ALL_ALLOC, L2_BITMAP_ALL_ZEROES,
                      L2E_OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO, SC)
from .refcount import Discard

if TYPE_CHECKING:
    from .driver import Qcow2Driver


# ---------------------------------------------------------------------------------------
# Guest range lock
# ---------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Hold:
    start: int
    end: int
    exclusive: bool
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RangeLock:
    """Shared/exclusive holds on guest byte ranges (cluster aligned by the callers)."""

    def __init__(self) -> None:
        self.holds: list[_Hold] = []

    @asynccontextmanager
    async def _hold(self, start: int, end: int, exclusive: bool) -> AsyncIterator[None]:
        while True:
            other = next((h for h in self.holds if h.start < end and start < h.end
                          and (h.exclusive or exclusive)), None)
            if other is None:
                break
            await other.done.wait()
        hold = _Hold(start, end, exclusive)
        self.holds.append(hold)
        try:
            yield
        finally:
            self.holds.remove(hold)
            hold.done.set()

    def shared(self, start: int, end: int):  # type: ignore[no-untyped-def]
        return self._hold(start, end, False)

    def exclusive(self, start: int, end: int):  # type: ignore[no-untyped-def]
        return self._hold(start, end, True)


@dataclass(slots=True)
class _Cluster:
    """What one allocating write does to one guest cluster."""

    index: int                     # L2 index
    guest: int                     # guest offset of the cluster
    w_start: int                   # data range within the cluster
    w_end: int
    old_entry: int
    old_bitmap: int
    host: int = 0
    alloc: bool = False            # a new host cluster is needed
    update: bool = True            # the L2 entry changes
    cow: list[tuple[int, int]] = field(default_factory=list)
    new_bitmap: int = 0
    free_old: bool = False


class WritePath:
    """Mixed into :class:`~.driver.Qcow2Driver`."""

    # ---- helpers --------------------------------------------------------------------------
    def _need_accurate_refcounts(self: "Qcow2Driver") -> bool:
        return not self.header.incompatible_features & L.INCOMPAT_DIRTY

    async def _mark_dirty(self: "Qcow2Driver") -> None:
        """Lazy refcounts: set the dirty bit before the first unflushed refcount."""
        if not self.lazy_refcounts or not self._need_accurate_refcounts():
            return
        await self.rb_cache.write_back()
        await self.file.flush()
        await self.set_incompatible(self.header.incompatible_features | L.INCOMPAT_DIRTY)

    def _l2_pos(self: "Qcow2Driver", index: int) -> tuple[int, int]:
        """(entry word, bitmap word) positions of L2 index ``index``."""
        if self.geo.extended_l2:
            return 2 * index, 2 * index + 1
        return index, -1

    async def write_l1_entry(self: "Qcow2Driver", index: int) -> None:
        start = index & ~63
        end = min(start + 64, len(self.mapping.l1))
        buf = self.mapping.l1[start:end].astype(">u8").tobytes()
        await self.file.write(self.header.l1_table_offset + start * 8, buf)
        await self.file.flush()

    async def l2_for_write(self: "Qcow2Driver", offset: int) -> int:
        """The L2 table covering ``offset``, allocated (or copied, if shared) now."""
        l1_index = self.geo.l1_index(offset)
        if l1_index >= len(self.mapping.l1):
            raise BlockError("qcow2: write beyond the L1 table", errno.EIO)
        l2_off = await self.mapping.l2_offset(l1_index)
        l1e = int(self.mapping.l1[l1_index])
        if l2_off and l1e & OFLAG_COPIED:
            return l2_off
        await self._mark_dirty()
        new = await self.refcounts.alloc_clusters(self.cluster_size)
        if self._need_accurate_refcounts():
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

    async def free_clusters(self: "Qcow2Driver", offset: int, size: int,
                            kind: Discard) -> None:
        await self.rb_cache.set_dependency(self.l2_cache)
        await self.refcounts.free_clusters(offset, size, kind)

    async def free_any_cluster(self: "Qcow2Driver", entry: int, kind: Discard) -> None:
        """Drop the reference an L2 entry held (QEMU's qcow2_free_any_cluster)."""
        ct = self.geo.cluster_type(entry)
        if ct is CT.COMPRESSED:
            coffset, csize = self.geo.compressed(entry)
            await self.free_clusters(coffset, csize, kind)
        elif ct in (CT.NORMAL, CT.ZERO_ALLOC):
            off = entry & L2E_OFFSET_MASK
            if off % self.cluster_size:
                await self._corrupt(f"Cannot free unaligned cluster {off:#x}", off,
                                    self.cluster_size)
            if self.header.has_data_file:
                if self.refcounts.discard_passthrough.get(kind) and self.data_node:
                    try:
                        await self.data_node.discard(off, self.cluster_size)
                    except BlockError:
                        pass
            else:
                await self.free_clusters(off, self.cluster_size, kind)

    def _table_end(self: "Qcow2Driver", pos: int) -> int:
        shift = self.geo.cluster_bits + self.geo.l2_bits
        return ((pos >> shift) + 1) << shift

    # ---- write ----------------------------------------------------------------------------
    async def write(self: "Qcow2Driver", offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        if self.reopened_rw:
            await self.finish_reopen_rw()
        if flags & ReqFlag.COMPRESSED:
            await self.write_compressed(offset, data)
            return
        if self.data_node is None:
            raise BlockError("qcow2: the data file is not open", errno.EIO)
        mv = memoryview(data)
        pos, end = offset, offset + len(data)
        while pos < end:
            n = min(end, self._table_end(pos)) - pos
            await self._write_chunk(pos, mv[pos - offset:pos - offset + n])
            pos += n

    async def _write_chunk(self: "Qcow2Driver", offset: int, data: memoryview) -> None:
        cs = self.cluster_size
        start, end = offset - offset % cs, -(-(offset + len(data)) // cs) * cs
        async with self.ranges.exclusive(start, end):
            async with self.lock:
                plan = await self._plan_write(offset, len(data))
            if not any(c.update for c in plan):
                host = plan[0].host + plan[0].w_start
                await self.data_node.write(host, data)       # all in place, contiguous
                return
            try:
                await self._write_plan(offset, data, plan)
            except BaseException:
                async with self.lock:
                    for c in plan:
                        if c.alloc and not self.header.has_data_file:
                            await self.refcounts.free_clusters(c.host, cs, Discard.NEVER)
                raise
            async with self.lock:
                await self._link_l2(offset, plan)

    async def _plan_write(self: "Qcow2Driver", offset: int, length: int) -> list[_Cluster]:
        geo, cs = self.geo, self.cluster_size
        l2_off = await self.l2_for_write(offset)
        entry = await self.l2_cache.get(l2_off)
        plan: list[_Cluster] = []
        try:
            pos, end = offset, offset + length
            while pos < end:
                guest = geo.cluster_start(pos)
                w_end = min(end - guest, cs)
                idx = geo.l2_index(pos)
                ei, bi = self._l2_pos(idx)
                e = int(entry.table[ei])
                b = int(entry.table[bi]) if bi >= 0 else 0
                c = _Cluster(idx, guest, pos - guest, w_end, e, b)
                self._classify(c)
                plan.append(c)
                pos = guest + w_end
        finally:
            self.l2_cache.put(entry)
        # in-place clusters must be contiguous with each other to take the fast path
        if all(not c.update for c in plan):
            for a, b in zip(plan, plan[1:]):
                if b.host != a.host + cs:
                    a.update = True     # rewrite the entry unchanged: slow path is fine
        if any(c.alloc for c in plan):
            await self._mark_dirty()
            await self._allocate(plan)
        return plan

    def _classify(self: "Qcow2Driver", c: _Cluster) -> None:
        geo, cs = self.geo, self.cluster_size
        ct = geo.cluster_type(c.old_entry)
        host = c.old_entry & L2E_OFFSET_MASK
        copied = bool(c.old_entry & OFLAG_COPIED)
        reuse = ct in (CT.NORMAL, CT.ZERO_ALLOC) and (copied or self.header.has_data_file)
        whole = [(0, c.w_start), (c.w_end, cs)]
        if not geo.extended_l2:
            if reuse and ct is CT.NORMAL:
                c.host, c.update = host, False
                return
            c.cow = [r for r in whole if r[1] > r[0]]
            if reuse:
                c.host = host
            else:
                c.alloc = True
                c.free_old = ct in (CT.COMPRESSED, CT.NORMAL, CT.ZERO_ALLOC)
            return
        scs = geo.subcluster_size
        s0, s1 = c.w_start // scs, -(-c.w_end // scs)
        touched = ((1 << s1) - 1) & ~((1 << s0) - 1)
        if reuse or ct is CT.UNALLOCATED:
            c.new_bitmap = (c.old_bitmap & ~(touched << 32)) | touched
            head = geo.subcluster_type(c.old_entry, c.old_bitmap, s0)
            tail = geo.subcluster_type(c.old_entry, c.old_bitmap, s1 - 1)
            if head is not SC.NORMAL and c.w_start > s0 * scs:
                c.cow.append((s0 * scs, c.w_start))
            if tail is not SC.NORMAL and c.w_end < s1 * scs:
                c.cow.append((c.w_end, s1 * scs))
            if reuse:
                c.host = host
                c.update = c.new_bitmap != c.old_bitmap
            else:
                c.alloc = True
            return
        # compressed or shared: copy the whole cluster
        c.cow = [r for r in whole if r[1] > r[0]]
        c.new_bitmap = L2_BITMAP_ALL_ALLOC
        c.alloc = c.free_old = True

    async def _allocate(self: "Qcow2Driver", plan: list[_Cluster]) -> None:
        cs = self.cluster_size
        i = 0
        while i < len(plan):
            if not plan[i].alloc:
                i += 1
                continue
            j = i
            while j < len(plan) and plan[j].alloc:
                j += 1
            if self.header.has_data_file:
                for c in plan[i:j]:
                    c.host = c.guest
            else:
                base = await self.refcounts.alloc_clusters((j - i) * cs)
                for k, c in enumerate(plan[i:j]):
                    c.host = base + k * cs
            i = j

    async def _write_plan(self: "Qcow2Driver", offset: int, data: memoryview,
                          plan: list[_Cluster]) -> None:
        """Write the data and the copied-on-write parts, merged into host runs."""
        pieces: list[tuple[int, bytearray]] = []
        for c in plan:
            lo = min([c.w_start] + [a for a, _ in c.cow])
            hi = max([c.w_end] + [b for _, b in c.cow])
            buf = bytearray(hi - lo)
            for a, b in c.cow:
                buf[a - lo:b - lo] = await self.read_unlocked(c.guest + a, b - a)
            d0 = c.guest + c.w_start - offset
            buf[c.w_start - lo:c.w_end - lo] = data[d0:d0 + c.w_end - c.w_start]
            host = c.host + lo
            if pieces and pieces[-1][0] + len(pieces[-1][1]) == host:
                pieces[-1][1].extend(buf)
            else:
                pieces.append((host, buf))
        for host, buf in pieces:
            await self.data_node.write(host, buf)

    async def _link_l2(self: "Qcow2Driver", offset: int, plan: list[_Cluster]) -> None:
        """Point the L2 entries at the new clusters, then free what they replaced."""
        l2_off = await self.l2_for_write(offset)
        if any(c.alloc for c in plan):
            if self._need_accurate_refcounts() and not self.header.has_data_file:
                await self.l2_cache.set_dependency(self.rb_cache)
            self.l2_cache.set_flush_dependency()
        entry = await self.l2_cache.get(l2_off)
        try:
            for c in plan:
                if not c.update:
                    continue
                ei, bi = self._l2_pos(c.index)
                entry.table[ei] = c.host | OFLAG_COPIED
                if bi >= 0:
                    entry.table[bi] = c.new_bitmap
            self.l2_cache.mark_dirty(entry)
        finally:
            self.l2_cache.put(entry)
        for c in plan:
            if c.free_old:
                await self.free_any_cluster(c.old_entry, Discard.NEVER)

    # ---- compressed writes -------------------------------------------------------------
    async def write_compressed(self: "Qcow2Driver", offset: int,
                               data: bytes | bytearray | memoryview) -> None:
        cs = self.cluster_size
        if self.header.has_data_file:
            raise NotSupported("Compression is not supported with an external data file",
                               errno.ENOTSUP)
        if offset % cs:
            raise InvalidArgument("Compressed writes must be cluster aligned")
        if len(data) % cs and offset + len(data) != self.header.size:
            raise InvalidArgument("Compressed writes must be whole clusters")
        mv = memoryview(data)
        for pos in range(0, len(data), cs):
            chunk = bytes(mv[pos:pos + cs])
            out = compress(self.header.compression_type, chunk.ljust(cs, b"\0"), cs - 1)
            if out is None:
                await self.write(offset + pos, chunk, ReqFlag.NONE)
            else:
                await self._write_compressed_cluster(offset + pos, out)

    async def _write_compressed_cluster(self: "Qcow2Driver", offset: int,
                                        out: bytes) -> None:
        geo = self.geo
        async with self.ranges.exclusive(offset, offset + self.cluster_size):
            async with self.lock:
                l2_off = await self.l2_for_write(offset)
                ei, bi = self._l2_pos(geo.l2_index(offset))
                entry = await self.l2_cache.get(l2_off)
                old = int(entry.table[ei])
                self.l2_cache.put(entry)
                if old & L2E_OFFSET_MASK:
                    raise BlockError("Compression can't overwrite anything", errno.EIO)
                await self._mark_dirty()
                coffset = await self.refcounts.alloc_bytes(len(out), self.compress_state)
            try:
                await self.file.write(coffset, out)
            except BaseException:
                async with self.lock:
                    await self.refcounts.free_clusters(coffset, len(out), Discard.NEVER)
                raise
            async with self.lock:
                await self.l2_cache.set_dependency(self.rb_cache)
                self.l2_cache.set_flush_dependency()
                entry = await self.l2_cache.get(await self.l2_for_write(offset))
                entry.table[ei] = geo.compressed_entry(coffset, len(out))
                if bi >= 0:
                    entry.table[bi] = 0
                self.l2_cache.mark_dirty(entry)
                self.l2_cache.put(entry)

    # ---- write zeroes -----------------------------------------------------------------------
    async def write_zeroes(self: "Qcow2Driver", offset: int, length: int,
                           flags: ReqFlag) -> None:
        if self.reopened_rw:
            await self.finish_reopen_rw()
        size = self.header.size
        scs = self.geo.subcluster_size
        head = offset % scs
        tail = -(offset + length) % scs
        if offset + length == size:
            tail = 0
        if head or tail:
            if not (await self._reads_zero(offset - head, head)
                    and await self._reads_zero(offset + length, tail)):
                raise NotSupported("write zeroes of a partial subcluster")
            offset -= head
            length = min(scs, size - offset)
            async with self.lock:
                run = await self.mapping.lookup(offset, length)
            if run.kind not in (SC.UNALLOCATED_PLAIN, SC.UNALLOCATED_ALLOC, SC.ZERO_PLAIN,
                                SC.ZERO_ALLOC):
                raise NotSupported("write zeroes of a partial subcluster")
        if self.header.data_file_raw and self.data_node is not None:
            await self.data_node.write_zeroes(offset, length, flags)
        if self.header.version < 3:
            raise NotSupported("zero clusters need qcow2 v3")
        await self.zeroize(offset, length, flags)

    async def _reads_zero(self: "Qcow2Driver", offset: int, length: int) -> bool:
        if length == 0:
            return True
        length = min(length, self.header.size - offset)
        if length <= 0:
            return True
        st = await self.node.block_status_above(None, offset, length)
        return st.zero and st.length >= length

    async def zeroize(self: "Qcow2Driver", offset: int, length: int, flags: ReqFlag) -> None:
        """Make subcluster-aligned ``[offset, offset+length)`` zero clusters (v3)."""
        cs, geo = self.cluster_size, self.geo
        end = offset + length
        if geo.extended_l2:
            head_end = min(end, -(-offset // cs) * cs)
            tail_start = end if end >= self.header.size else max(head_end, end - end % cs)
        else:
            head_end, tail_start = offset, offset + -(-(end - offset) // cs) * cs
        await self._update_clusters(offset, head_end, self._zero_subclusters, flags)
        await self._update_clusters(head_end, tail_start, self._zero_cluster, flags)
        await self._update_clusters(tail_start, end, self._zero_subclusters, flags)

    async def _update_clusters(self: "Qcow2Driver", start: int, end: int, fn,  # type: ignore[no-untyped-def]
                               arg: object) -> None:
        """Call ``fn(table, index, offset, n, arg)`` for each cluster of the range,
        L2 table by L2 table, with the range held and the metadata locked."""
        cs = self.cluster_size
        pos = start
        while pos < end:
            stop = min(end, self._table_end(pos))
            a, b = pos - pos % cs, -(-stop // cs) * cs
            async with self.ranges.exclusive(a, b):
                async with self.lock:
                    l1_index = self.geo.l1_index(pos)
                    if not await self.mapping.l2_offset(l1_index) and \
                            not await fn(None, 0, pos, stop - pos, arg):
                        pos = stop
                        continue
                    entry = await self.l2_cache.get(await self.l2_for_write(pos))
                    try:
                        p = pos
                        while p < stop:
                            n = min(stop, p - p % cs + cs) - p
                            await fn(entry, self.geo.l2_index(p), p, n, arg)
                            p += n
                    finally:
                        self.l2_cache.put(entry)
            pos = stop

    async def _set_entry(self: "Qcow2Driver", entry, index: int, old_e: int,  # type: ignore[no-untyped-def]
                         old_b: int, new_e: int, new_b: int, free_kind: Discard | None) -> None:
        if (old_e, old_b) == (new_e, new_b):
            return
        ei, bi = self._l2_pos(index)
        entry.table[ei] = new_e
        if bi >= 0:
            entry.table[bi] = new_b
        self.l2_cache.mark_dirty(entry)
        if free_kind is not None:
            await self.free_any_cluster(old_e, free_kind)

    def _read_entry(self: "Qcow2Driver", entry, index: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
        ei, bi = self._l2_pos(index)
        return int(entry.table[ei]), int(entry.table[bi]) if bi >= 0 else 0

    async def _zero_cluster(self: "Qcow2Driver", entry, index: int, offset: int, n: int,  # type: ignore[no-untyped-def]
                            flags: ReqFlag) -> bool:
        if entry is None:
            return True           # an L2 table is needed to record zeroes
        old_e, old_b = self._read_entry(entry, index)
        ct = self.geo.cluster_type(old_e)
        allocated = ct in (CT.NORMAL, CT.ZERO_ALLOC, CT.COMPRESSED)
        unmap = ct is CT.COMPRESSED or (bool(flags & ReqFlag.MAY_UNMAP) and allocated)
        new_e = 0 if unmap else old_e
        if self.geo.extended_l2:
            new_b = L2_BITMAP_ALL_ZEROES
        else:
            new_e |= OFLAG_ZERO
            new_b = old_b
        await self._set_entry(entry, index, old_e, old_b, new_e, new_b,
                              Discard.REQUEST if unmap else None)
        return True

    async def _zero_subclusters(self: "Qcow2Driver", entry, index: int, offset: int, n: int,  # type: ignore[no-untyped-def]
                                flags: ReqFlag) -> bool:
        if entry is None:
            return self.node.backing is not None
        old_e, old_b = self._read_entry(entry, index)
        ct = self.geo.cluster_type(old_e)
        if ct is CT.COMPRESSED:
            raise NotSupported("cannot zero part of a compressed cluster")
        if ct is CT.UNALLOCATED and self.node.backing is None:
            return True
        scs = self.geo.subcluster_size
        s0 = self.geo.sc_index(offset)
        s1 = s0 + -(-n // scs)
        mask = ((1 << s1) - 1) & ~((1 << s0) - 1)
        new_b = (old_b | (mask << 32)) & ~mask
        await self._set_entry(entry, index, old_e, old_b, old_e, new_b, None)
        return True

    # ---- discard ----------------------------------------------------------------------------
    async def discard(self: "Qcow2Driver", offset: int, length: int) -> None:
        if self.reopened_rw:
            await self.finish_reopen_rw()
        cs = self.cluster_size
        if (offset | length) % cs:
            if offset % cs or offset + length != self.header.size:
                raise NotSupported("discard of a partial cluster")
        await self.discard_clusters(offset, offset + length, Discard.REQUEST, full=False)

    async def discard_clusters(self: "Qcow2Driver", start: int, end: int, kind: Discard,
                               full: bool) -> None:
        self.refcounts.cache_discards = True
        try:
            await self._update_clusters(start, end, self._discard_cluster, (kind, full))
        finally:
            self.refcounts.cache_discards = False
            async with self.lock:
                await self.refcounts.process_discards()

    async def _discard_cluster(self: "Qcow2Driver", entry, index: int, offset: int, n: int,  # type: ignore[no-untyped-def]
                               arg: tuple[Discard, bool]) -> bool:
        kind, full = arg
        if entry is None:         # nothing allocated here: only a backing file matters
            return not full and self.node.backing is not None
        old_e, old_b = self._read_entry(entry, index)
        ct = self.geo.cluster_type(old_e)
        allocated = ct in (CT.NORMAL, CT.ZERO_ALLOC, CT.COMPRESSED)
        if full:
            new_e, new_b = 0, 0
        elif self.node.backing is not None or allocated:
            if self.geo.extended_l2:
                new_e, new_b = 0, L2_BITMAP_ALL_ZEROES
            else:
                new_e, new_b = (OFLAG_ZERO if self.header.version >= 3 else 0), old_b
        else:
            return True
        await self._set_entry(entry, index, old_e, old_b, new_e, new_b, kind)
        return True

    # ---- resize ------------------------------------------------------------------------------
    async def truncate(self: "Qcow2Driver", size: int, exact: bool, prealloc: Prealloc) -> None:
        if self.reopened_rw:
            await self.finish_reopen_rw()
        h = self.header
        if h.nb_snapshots:
            raise NotSupported("Can't resize an image which has snapshots")
        if size % 512:
            raise InvalidArgument("The new size must be a multiple of 512")
        old = h.size
        if size < old:
            if prealloc is not Prealloc.OFF:
                raise InvalidArgument("Preallocation can't be used for shrinking an image")
            await self._shrink(size)
        elif size > old:
            await self.grow_l1(self.geo.l1_size_for(size))
            if prealloc is not Prealloc.OFF:
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
                off = int(l1[i]) & L1E_OFFSET_MASK
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
            nz = np.flatnonzero(counts)
            if nz.size:
                return first + int(nz[-1])
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
            table = np.zeros(new_size, np.uint64)
            table[:old_size] = self.mapping.l1
            new_off = await self.refcounts.alloc_clusters(new_size * 8)
            await self.rb_cache.flush()
            await self.file.write(new_off, table.astype(">u8").tobytes())
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
                    plan.append(_Cluster(idx, p, 0, cs, e, b, alloc=True,
                                         new_bitmap=L2_BITMAP_ALL_ALLOC))
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
        """Drop every cluster of the active layer (what ``commit`` does after copying)."""
        from .driver import nested
        with nested():
            await self.discard_clusters(0, self.header.size, Discard.SNAPSHOT, full=True)
            await self.flush_caches()
