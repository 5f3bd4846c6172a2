"""Zero clusters and discard (QEMU's qcow2_subcluster_zeroize / qcow2_cluster_discard):
L2 entries change under the guest range and metadata locks, then what they pointed to
is freed (the refcount cache then waits for the L2 cache)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ...core.driver import ReqFlag
from ...core.errors import NotSupported
from .cache import Entry
from .mapping import CT, L2_BITMAP_ALL_ZEROES, OFLAG_ZERO, SC
from .refcount import Discard
from .state import Qcow2State

#: what :meth:`ZeroPath._update_clusters` calls for each cluster: (L2 table or None,
#: index, guest offset, bytes, argument) -> whether an L2 table is needed
ClusterFn = Callable[[Entry | None, int, int, int, Any], Awaitable[bool]]


class ZeroPath:
    """Zero clusters and discard on the image state ``s``."""

    def __init__(self, state: Qcow2State) -> None:
        self.s = state

    # ---- write zeroes -----------------------------------------------------------------------
    async def write_zeroes(self, offset: int, length: int,
                           flags: ReqFlag) -> None:
        size = self.s.header.size
        scs = self.s.geo.subcluster_size
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
            async with self.s.lock:
                run = await self.s.mapping.lookup(offset, length)
            if run.kind not in (SC.UNALLOCATED_PLAIN, SC.UNALLOCATED_ALLOC, SC.ZERO_PLAIN,
                                SC.ZERO_ALLOC):
                raise NotSupported("write zeroes of a partial subcluster")
        if self.s.header.data_file_raw and self.s.data_node is not None:
            await self.s.data_node.write_zeroes(offset, length, flags)
        if self.s.header.version < 3:
            # no zero flag in v2: without a backing file a discard reads as zeroes
            if self.s.node.backing is not None:
                raise NotSupported("zero clusters need qcow2 v3")
            await self.discard_clusters(offset, offset + length, Discard.REQUEST, full=False)
            return
        await self.zeroize(offset, length, flags)

    async def _reads_zero(self, offset: int, length: int) -> bool:
        if length == 0:
            return True
        length = min(length, self.s.header.size - offset)
        if length <= 0:
            return True
        st = await self.s.node.block_status_above(None, offset, length)
        return st.zero and st.length >= length

    async def zeroize(self, offset: int, length: int, flags: ReqFlag) -> None:
        """Make subcluster-aligned ``[offset, offset+length)`` zero clusters (v3)."""
        cs, geo = self.s.cluster_size, self.s.geo
        end = offset + length
        if geo.extended_l2:
            head_end = min(end, -(-offset // cs) * cs)
            tail_start = end if end >= self.s.header.size else max(head_end, end - end % cs)
        else:
            head_end, tail_start = offset, offset + -(-(end - offset) // cs) * cs
        await self._update_clusters(offset, head_end, self._zero_subclusters, flags)
        await self._update_clusters(head_end, tail_start, self._zero_cluster, flags)
        await self._update_clusters(tail_start, end, self._zero_subclusters, flags)

    async def _update_clusters(self, start: int, end: int, fn: ClusterFn,
                               arg: object) -> None:
        """Call ``fn(table, index, offset, n, arg)`` for each cluster of the range,
        L2 table by L2 table, with the range held and the metadata locked."""
        cs = self.s.cluster_size
        pos = start
        while pos < end:
            stop = min(end, self.s.table_end(pos))
            a, b = pos - pos % cs, -(-stop // cs) * cs
            async with self.s.ranges.exclusive(a, b):
                async with self.s.lock:
                    l1_index = self.s.geo.l1_index(pos)
                    if not await self.s.mapping.l2_offset(l1_index) and \
                            not await fn(None, 0, pos, stop - pos, arg):
                        pos = stop
                        continue
                    entry = await self.s.l2_cache.get(await self.s.l2_for_write(pos))
                    try:
                        p = pos
                        while p < stop:
                            n = min(stop, p - p % cs + cs) - p
                            await fn(entry, self.s.geo.l2_index(p), p, n, arg)
                            p += n
                    finally:
                        self.s.l2_cache.put(entry)
            pos = stop

    async def _set_entry(self, entry: Entry, index: int, old_e: int,
                         old_b: int, new_e: int, new_b: int, free_kind: Discard | None) -> None:
        if (old_e, old_b) == (new_e, new_b):
            return
        ei, bi = self.s.l2_pos(index)
        entry.table[ei] = new_e
        if bi >= 0:
            entry.table[bi] = new_b
        self.s.l2_cache.mark_dirty(entry)
        if free_kind is not None:
            await self.s.free_any_cluster(old_e, free_kind)

    def read_entry(self, entry: Entry, index: int) -> tuple[int, int]:
        ei, bi = self.s.l2_pos(index)
        return int(entry.table[ei]), int(entry.table[bi]) if bi >= 0 else 0

    async def _zero_cluster(self, entry: Entry | None, index: int, offset: int, n: int,
                            flags: ReqFlag) -> bool:
        if entry is None:
            return True           # an L2 table is needed to record zeroes
        old_e, old_b = self.read_entry(entry, index)
        ct = self.s.geo.cluster_type(old_e)
        allocated = ct in (CT.NORMAL, CT.ZERO_ALLOC, CT.COMPRESSED)
        unmap = ct is CT.COMPRESSED or (bool(flags & ReqFlag.MAY_UNMAP) and allocated)
        new_e = 0 if unmap else old_e
        if self.s.geo.extended_l2:
            new_b = L2_BITMAP_ALL_ZEROES
        else:
            new_e |= OFLAG_ZERO
            new_b = old_b
        await self._set_entry(entry, index, old_e, old_b, new_e, new_b,
                              Discard.REQUEST if unmap else None)
        return True

    async def _zero_subclusters(self, entry: Entry | None, index: int, offset: int, n: int,
                                flags: ReqFlag) -> bool:
        if entry is None:
            return True           # QEMU 7.2 records the zero bits even with no backing
        old_e, old_b = self.read_entry(entry, index)
        ct = self.s.geo.cluster_type(old_e)
        if ct is CT.COMPRESSED:
            raise NotSupported("cannot zero part of a compressed cluster")
        scs = self.s.geo.subcluster_size
        s0 = self.s.geo.sc_index(offset)
        s1 = s0 + -(-n // scs)
        mask = ((1 << s1) - 1) & ~((1 << s0) - 1)
        new_b = (old_b | (mask << 32)) & ~mask
        await self._set_entry(entry, index, old_e, old_b, old_e, new_b, None)
        return True

    # ---- discard ----------------------------------------------------------------------------
    async def discard(self, offset: int, length: int) -> None:
        cs = self.s.cluster_size
        if (offset | length) % cs:
            if offset % cs or offset + length != self.s.header.size:
                raise NotSupported("discard of a partial cluster")
        await self.discard_clusters(offset, offset + length, Discard.REQUEST, full=False)

    async def discard_clusters(self, start: int, end: int, kind: Discard,
                               full: bool) -> None:
        self.s.refcounts.cache_discards = True
        try:
            await self._update_clusters(start, end, self._discard_cluster, (kind, full))
        finally:
            self.s.refcounts.cache_discards = False
            async with self.s.lock:
                await self.s.refcounts.process_discards()

    async def _discard_cluster(self, entry: Entry | None, index: int, offset: int, n: int,
                               arg: tuple[Discard, bool]) -> bool:
        kind, full = arg
        if entry is None:         # nothing allocated here: only a backing file matters
            return not full and self.s.node.backing is not None
        old_e, old_b = self.read_entry(entry, index)
        ct = self.s.geo.cluster_type(old_e)
        allocated = ct in (CT.NORMAL, CT.ZERO_ALLOC, CT.COMPRESSED)
        if full:
            new_e, new_b = 0, 0
        elif self.s.node.backing is not None or allocated:
            if self.s.geo.extended_l2:
                new_e, new_b = 0, L2_BITMAP_ALL_ZEROES
            else:
                new_e, new_b = (OFLAG_ZERO if self.s.header.version >= 3 else 0), old_b
        else:
            return True
        await self._set_entry(entry, index, old_e, old_b, new_e, new_b, kind)
        return True

