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
import os
from array import array
from dataclasses import dataclass, field

from ...core.driver import ReqFlag
from ...core.errors import BlockError, InvalidArgument, NotSupported
from .compress import compress_many
from .cache import Entry
from .mapping import CT, L2_BITMAP_ALL_ALLOC, L2E_OFFSET_MASK, OFLAG_COPIED, SC
from .refcount import Discard
from .state import Qcow2State

_CPUS = os.cpu_count() or 1       # compression jobs per compressed write
#: the pieces of a write allocated together at most (larger writes go in batches)
WRITE_BATCH = 16 << 20


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


@dataclass(slots=True)
class _Chunk:
    """The piece of a write inside one L2 table, and what was allocated for it."""

    offset: int
    data: memoryview
    fresh_host: int = -1           # a run of new clusters for all of it, at this host offset
    plan: list[_Cluster] | None = None

    @property
    def needs_link(self) -> bool:
        return self.plan is not None and any(c.update for c in self.plan)


class WritePath:
    """Allocating and compressed writes on the image state ``s`` (zeroes and discard
    are in :mod:`.zeroes`, resizing in :mod:`.resize`)."""

    def __init__(self, state: Qcow2State) -> None:
        self.s = state
        #: compressions started by :meth:`compress_ahead`: guest offset -> (data, task)
        self._compress_ahead: dict[int, tuple[object, asyncio.Future[list[bytes | None]]]] = {}

    # ---- write ----------------------------------------------------------------------------
    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        if flags and flags & ReqFlag.COMPRESSED:
            await self.write_compressed(offset, data)
            return
        self.s.data_file()          # EIO now when the data file is not open
        mv = memoryview(data)
        batch: list[_Chunk] = []
        pos, end, size = offset, offset + len(data), 0
        while pos < end:
            n = min(end, self.s.table_end(pos)) - pos
            if batch and size + n > WRITE_BATCH:
                await self._write_chunks(batch)
                batch, size = [], 0
            batch.append(_Chunk(pos, mv[pos - offset:pos - offset + n]))
            pos += n
            size += n
        await self._write_chunks(batch)

    async def _write_chunks(self, chunks: list[_Chunk]) -> None:
        """Write the pieces of one request (one per L2 table): every piece's clusters
        are allocated in one hold of the lock, in guest order, before any data moves;
        so the image comes out as if the pieces were written one after another, and
        a write that a caller starts before the previous one completes (a copy that
        keeps requests in flight) allocates after all of that one's clusters."""
        cs = self.s.cluster_size
        start = chunks[0].offset - chunks[0].offset % cs
        end = -(-(chunks[-1].offset + len(chunks[-1].data)) // cs) * cs
        async with self.s.ranges.exclusive(start, end):
            prepared: list[_Chunk] = []
            async with self.s.lock:
                try:
                    for chunk in chunks:
                        await self._prepare_chunk(chunk)
                        prepared.append(chunk)
                except BaseException:
                    await self._unprepare(prepared)
                    raise
            try:
                for chunk in chunks:
                    await self._put_chunk(chunk)
            except BaseException:
                async with self.s.lock:
                    await self._unprepare(chunks)
                raise
            if any(c.fresh_host >= 0 or c.needs_link for c in chunks):
                async with self.s.lock:
                    for chunk in chunks:
                        await self._link_chunk(chunk)

    async def _prepare_chunk(self, chunk: _Chunk) -> None:
        """Under the lock: allocate what the piece needs.  Whole clusters that are all
        unallocated (the common case of a copy into a new image) become one run with
        one allocation and, later, one L2 update; anything else gets a per-cluster plan."""
        cs, data, offset = self.s.cluster_size, chunk.data, chunk.offset
        if (len(data) >= 2 * cs and not offset % cs and not len(data) % cs
                and not self.s.geo.extended_l2):
            n = len(data) // cs
            i0 = self.s.geo.l2_index(offset)
            entry = await self.s.l2_cache.get(await self.s.l2_for_write(offset))
            try:
                fresh = entry.table[i0:i0 + n].count(0) == n
            finally:
                self.s.l2_cache.put(entry)
            if fresh:
                await self.s.mark_dirty()
                chunk.fresh_host = (await self.s.refcounts.alloc_clusters(n * cs)
                                    if not self.s.header.has_data_file else offset)
                return
        chunk.plan = await self.plan_write(offset, len(data))

    async def _put_chunk(self, chunk: _Chunk) -> None:
        """The piece's data (and copy-on-write parts) to the data file."""
        data, plan = chunk.data, chunk.plan
        if chunk.fresh_host >= 0:
            await self.s.data_overlap_check(chunk.fresh_host, len(data))
            await self.s.data_file().write(chunk.fresh_host, data)
        elif plan is not None and not chunk.needs_link:
            host = plan[0].host + plan[0].w_start
            await self.s.data_overlap_check(host, len(data))
            await self.s.data_file().write(host, data)       # all in place, contiguous
        elif plan is not None:
            await self._write_plan(chunk.offset, data, plan)

    async def _link_chunk(self, chunk: _Chunk) -> None:
        """Under the lock, after the data: the L2 entries point at the new clusters."""
        if chunk.fresh_host >= 0:
            cs, offset = self.s.cluster_size, chunk.offset
            n, i0 = len(chunk.data) // cs, self.s.geo.l2_index(offset)
            l2_off = await self.s.l2_for_write(offset)
            await self._link_new_clusters_after_their_refcounts()
            entry = await self.s.l2_cache.get(l2_off)
            try:
                first = chunk.fresh_host | OFLAG_COPIED
                entry.table[i0:i0 + n] = array("Q", range(first, first + n * cs, cs))
                self.s.l2_cache.mark_dirty(entry)
            finally:
                self.s.l2_cache.put(entry)
        elif chunk.plan is not None and chunk.needs_link:
            await self.link_l2(chunk.offset, chunk.plan)

    async def _unprepare(self, chunks: list[_Chunk]) -> None:
        """Under the lock: give back the clusters a failed write allocated (never
        linked)."""
        if self.s.header.has_data_file:
            return
        cs = self.s.cluster_size
        for chunk in chunks:
            if chunk.fresh_host >= 0:
                await self.s.refcounts.free_clusters(chunk.fresh_host, len(chunk.data),
                                                   Discard.NEVER)
            for c in chunk.plan or ():
                if c.alloc:
                    await self.s.refcounts.free_clusters(c.host, cs, Discard.NEVER)

    async def unallocate(self, plan: list[_Cluster]) -> None:
        """Give back the clusters a failed planned write allocated (never linked)."""
        async with self.s.lock:
            await self._unprepare([_Chunk(0, memoryview(b""), plan=plan)])

    async def _link_new_clusters_after_their_refcounts(self) -> None:
        """Before L2 entries point at newly allocated clusters: the refcounts that own
        them reach the file first (unless lazy refcounts left the image dirty, or the
        clusters live in a data file), and the data is flushed first."""
        if self.s.need_accurate_refcounts() and not self.s.header.has_data_file:
            await self.s.l2_cache.set_dependency(self.s.rb_cache)
        self.s.l2_cache.set_flush_dependency()

    async def plan_write(self, offset: int, length: int) -> list[_Cluster]:
        geo, cs = self.s.geo, self.s.cluster_size
        l2_off = await self.s.l2_for_write(offset)
        entry = await self.s.l2_cache.get(l2_off)
        plan: list[_Cluster] = []
        try:
            pos, end = offset, offset + length
            while pos < end:
                guest = geo.cluster_start(pos)
                w_end = min(end - guest, cs)
                idx = geo.l2_index(pos)
                ei, bi = self.s.l2_pos(idx)
                e = int(entry.table[ei])
                b = int(entry.table[bi]) if bi >= 0 else 0
                c = _Cluster(idx, guest, pos - guest, w_end, e, b)
                self._classify(c)
                plan.append(c)
                pos = guest + w_end
        finally:
            self.s.l2_cache.put(entry)
        # in-place clusters must be contiguous with each other to take the fast path
        if all(not c.update for c in plan):
            for before, after in zip(plan, plan[1:]):
                if after.host != before.host + cs:
                    before.update = True     # rewrite the entry unchanged: slow path is fine
        if any(c.alloc for c in plan):
            await self.s.mark_dirty()
            await self.allocate(plan)
        return plan

    def _classify(self, c: _Cluster) -> None:
        geo, cs = self.s.geo, self.s.cluster_size
        ct = geo.cluster_type(c.old_entry)
        host = c.old_entry & L2E_OFFSET_MASK
        copied = bool(c.old_entry & OFLAG_COPIED)
        reuse = ct in (CT.NORMAL, CT.ZERO_ALLOC) and (copied or self.s.header.has_data_file)
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

    async def allocate(self, plan: list[_Cluster]) -> None:
        cs = self.s.cluster_size
        i = 0
        while i < len(plan):
            if not plan[i].alloc:
                i += 1
                continue
            j = i
            while j < len(plan) and plan[j].alloc:
                j += 1
            if self.s.header.has_data_file:
                for c in plan[i:j]:
                    c.host = c.guest
            else:
                base = await self.s.refcounts.alloc_clusters((j - i) * cs)
                for k, c in enumerate(plan[i:j]):
                    c.host = base + k * cs
            i = j

    async def _write_plan(self, offset: int, data: memoryview,
                          plan: list[_Cluster]) -> None:
        """Write the data and the copied-on-write parts, merged into host runs."""
        if any(c.cow for c in plan):
            await self._zero_alloc_space(plan)
        if not any(c.cow for c in plan):
            await self._write_runs(offset, data, plan)
            return
        pieces: list[tuple[int, bytearray]] = []
        for c in plan:
            lo = min([c.w_start] + [a for a, _ in c.cow])
            hi = max([c.w_end] + [b for _, b in c.cow])
            buf = bytearray(hi - lo)
            for a, b in c.cow:
                buf[a - lo:b - lo] = await self.s.read_unlocked(c.guest + a, b - a)
            d0 = c.guest + c.w_start - offset
            buf[c.w_start - lo:c.w_end - lo] = data[d0:d0 + c.w_end - c.w_start]
            host = c.host + lo
            if pieces and pieces[-1][0] + len(pieces[-1][1]) == host:
                pieces[-1][1].extend(buf)
            else:
                pieces.append((host, buf))
        for host, buf in pieces:
            await self.s.data_overlap_check(host, len(buf))
            await self.s.data_file().write(host, buf)

    async def _zero_alloc_space(self, plan: list[_Cluster]) -> None:
        """QEMU's handle_alloc_space: a run of new clusters whose copy-on-write parts
        read as zeroes (nothing under them, or zero clusters) is zeroed whole on the
        data file (fallocate, no fallback) and only the data is written, instead of
        writing buffers of zeroes around it."""
        if self.s.geo.extended_l2:
            return
        cs = self.s.cluster_size
        i = 0
        while i < len(plan):
            j = i
            while (j < len(plan) and plan[j].alloc and
                   (j == i or plan[j].host == plan[j - 1].host + cs)):
                j += 1
            if j == i:
                i += 1
                continue
            run = plan[i:j]
            if any(c.cow for c in run) and all([await self._cow_is_zero(c) for c in run]):
                try:
                    await self.s.data_overlap_check(run[0].host, len(run) * cs)
                    await self.s.data_file().write_zeroes(run[0].host, len(run) * cs,
                                                          ReqFlag.NO_FALLBACK)
                except NotSupported:
                    pass
                else:
                    for c in run:
                        c.cow = []
            i = j

    async def _cow_is_zero(self, c: _Cluster) -> bool:
        """Whether the cluster's copy-on-write parts are known zeroes (QEMU's
        is_zero_cow: block status, no reading)."""
        if not c.cow:
            return True
        ct = self.s.geo.cluster_type(c.old_entry)
        if ct in (CT.ZERO_PLAIN, CT.ZERO_ALLOC):
            return True
        if ct is not CT.UNALLOCATED:
            return False
        backing = self.s.node.filtered_backing()
        if backing is None:
            return True
        for a, b in c.cow:
            pos, end = c.guest + a, c.guest + b
            while pos < end:
                st = await backing.block_status_above(None, pos, end - pos, False)
                if st.length == 0:       # beyond the backing file: zeroes
                    break
                if not st.zero:
                    return False
                pos += st.length
        return True

    async def _write_runs(self, offset: int, data: memoryview,
                          plan: list[_Cluster]) -> None:
        """No copy-on-write: each run of host-contiguous clusters is written straight
        from the caller's buffer."""
        i = 0
        while i < len(plan):
            j = i + 1
            while j < len(plan) and plan[j].host == plan[j - 1].host + self.s.cluster_size:
                j += 1
            first, last = plan[i], plan[j - 1]
            d0 = first.guest + first.w_start - offset
            d1 = last.guest + last.w_end - offset
            host = first.host + first.w_start
            await self.s.data_overlap_check(host, d1 - d0)
            await self.s.data_file().write(host, data[d0:d1])
            i = j

    async def link_l2(self, offset: int, plan: list[_Cluster]) -> None:
        """Point the L2 entries at the new clusters, then free what they replaced."""
        l2_off = await self.s.l2_for_write(offset)
        if any(c.alloc for c in plan):
            await self._link_new_clusters_after_their_refcounts()
        entry = await self.s.l2_cache.get(l2_off)
        try:
            for c in plan:
                if not c.update:
                    continue
                ei, bi = self.s.l2_pos(c.index)
                entry.table[ei] = c.host | OFLAG_COPIED
                if bi >= 0:
                    entry.table[bi] = c.new_bitmap
            self.s.l2_cache.mark_dirty(entry)
        finally:
            self.s.l2_cache.put(entry)
        for c in plan:
            if c.free_old:
                await self.s.free_any_cluster(c.old_entry, Discard.NEVER)

    # ---- compressed writes -------------------------------------------------------------
    def compress_ahead(self, offset: int, data: memoryview) -> None:
        """Start compressing ``data`` in the thread pool now; a compressed write of the
        same object at ``offset`` uses the result (so a copy loop can compress ahead
        of its in-order writes).  Anything else is compressed again at write time."""
        cs = self.s.cluster_size
        mv = memoryview(data)
        chunks = [mv[pos:pos + cs] for pos in range(0, len(data), cs)]
        self._compress_ahead[offset] = (data, asyncio.ensure_future(
            self._compress_clusters(chunks, ahead=True)))

    async def write_compressed(self, offset: int,
                               data: bytes | bytearray | memoryview) -> None:
        cs = self.s.cluster_size
        ahead = self._compress_ahead.pop(offset, None) if self._compress_ahead else None
        if self.s.header.has_data_file:
            raise NotSupported("Compression is not supported with an external data file",
                               errno.ENOTSUP)
        if offset % cs:
            raise InvalidArgument("Compressed writes must be cluster aligned")
        if len(data) % cs and offset + len(data) != self.s.header.size:
            raise InvalidArgument("Compressed writes must be whole clusters")
        mv = memoryview(data)
        chunks = [mv[pos:pos + cs] for pos in range(0, len(data), cs)]
        if ahead is not None and ahead[0] is data:
            outs = await ahead[1]
        else:
            outs = await self._compress_clusters(chunks)
        i = 0
        try:
            while i < len(chunks):
                if outs[i] is None:             # does not shrink: an ordinary write
                    await self.write(offset + i * cs, bytes(chunks[i]), ReqFlag.NONE)
                    i += 1
                    continue
                j = i
                while j < len(chunks) and outs[j] is not None:
                    j += 1
                await self._write_compressed_clusters(offset + i * cs,
                                                      [o for o in outs[i:j] if o is not None])
                i = j
        except BlockError as exc:
            # where a write of many clusters failed (QEMU's convert, one cluster per
            # request, names the cluster)
            if exc.guest_offset is None:
                exc.guest_offset = offset + i * cs
            raise

    async def end_compressed(self) -> None:
        """A run of compressed writes is over: the image file is made to end on a whole
        sector, as QEMU does on the empty compressed write that ends a convert."""
        length = self.s.file.total_bytes
        if length % 512:
            await self.s.file.truncate(-(-length // 512) * 512)

    async def _compress_clusters(self, chunks: list[memoryview],
                                 ahead: bool = False) -> list[bytes | None]:
        """Each cluster compressed (the last one padded to a cluster) in the loop's
        thread pool: split over the cores, or as one job when compressing ahead (the
        requests in flight keep the cores busy).  One cluster written now is compressed
        on the loop thread."""
        cs, kind = self.s.cluster_size, self.s.header.compression_type
        if len(chunks[-1]) < cs:
            chunks = chunks[:-1] + [memoryview(bytes(chunks[-1]).ljust(cs, b"\0"))]
        if len(chunks) == 1 and not ahead:
            return compress_many(kind, chunks, cs - 1)
        groups = 1 if ahead else min(len(chunks), _CPUS)
        step = -(-len(chunks) // groups)
        loop = asyncio.get_running_loop()
        parts = await asyncio.gather(*(
            loop.run_in_executor(None, compress_many, kind, chunks[k:k + step], cs - 1)
            for k in range(0, len(chunks), step)))
        return [out for part in parts for out in part]

    async def _write_compressed_clusters(self, offset: int,
                                         outs: list[bytes]) -> None:
        """Consecutive compressed clusters from ``offset``: allocated in order under
        one lock, written in as few requests as their packing allows, then linked."""
        geo, cs = self.s.geo, self.s.cluster_size
        placed: list[tuple[int, int, bytes]] = []       # (guest, host, compressed)
        error: BlockError | None = None
        async with self.s.ranges.exclusive(offset, offset + len(outs) * cs):
            async with self.s.lock:
                olds: list[int] = []
                for k, out in enumerate(outs):
                    guest = offset + k * cs
                    idx = geo.l2_index(guest)
                    if k == 0 or idx == 0:      # the entries this L2 table has for us
                        entry = await self.s.l2_cache.get(await self.s.l2_for_write(guest))
                        stride = 2 if geo.extended_l2 else 1
                        n = min(len(outs) - k, (len(entry.table) // stride) - idx)
                        olds = entry.table[stride * idx:stride * (idx + n):stride].tolist()
                        self.s.l2_cache.put(entry)
                        first = idx
                    if olds[idx - first] & L2E_OFFSET_MASK:
                        error = BlockError("Compression can't overwrite anything", errno.EIO)
                        error.guest_offset = guest
                        break
                    await self.s.mark_dirty()
                    placed.append((guest, await self.s.refcounts.alloc_bytes(len(out)), out))
            try:
                k = 0
                while k < len(placed):
                    j = k + 1
                    while j < len(placed) and placed[j][1] == placed[j - 1][1] + len(placed[j - 1][2]):
                        j += 1
                    buf = placed[k][2] if j == k + 1 else b"".join(p[2] for p in placed[k:j])
                    try:
                        await self.s.file.write(placed[k][1], buf)
                    except BlockError as exc:
                        exc.guest_offset = placed[k][0]
                        raise
                    k = j
            except BaseException:
                async with self.s.lock:
                    for _, coffset, out in placed:
                        await self.s.refcounts.free_clusters(coffset, len(out), Discard.NEVER)
                raise
            async with self.s.lock:
                await self.s.l2_cache.set_dependency(self.s.rb_cache)
                self.s.l2_cache.set_flush_dependency()
                table: Entry | None = None
                for guest, coffset, out in placed:
                    idx = geo.l2_index(guest)
                    if table is None or idx == 0:
                        if table is not None:
                            self.s.l2_cache.put(table)
                        table = await self.s.l2_cache.get(await self.s.l2_for_write(guest))
                        self.s.l2_cache.mark_dirty(table)
                    ei, bi = self.s.l2_pos(idx)
                    table.table[ei] = geo.compressed_entry(coffset, len(out))
                    if bi >= 0:
                        table.table[bi] = 0
                if table is not None:
                    self.s.l2_cache.put(table)
        if error is not None:
            raise error
