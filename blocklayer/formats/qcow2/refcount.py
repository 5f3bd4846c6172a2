"""Reference counts: lookup, cluster allocation, freeing, refcount table growth and the
rebuild that repairs an image left dirty with lazy refcounts.

Allocation follows QEMU's algorithm (a moving ``free_cluster_index``, a new refcount
block describing itself when it can, a retry whenever a refcount block was added) so
images we write have the layout qemu-img gives them.  Runs under the metadata lock.
"""
from __future__ import annotations

import enum
import errno
import itertools
from array import array
from typing import TYPE_CHECKING, Awaitable, Callable, Sequence

from ...core.errors import BlockError, ImageCorrupt, NoSpace
from . import layout as L
from .cache import MetadataCache
from .layout import MAX_CLUSTER_OFFSET, MAX_REFTABLE_SIZE

if TYPE_CHECKING:
    import numpy as np

    from ...core.node import BlockNode

REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
#: the lowest bit of every byte value
_LOW_BIT = bytes(b & 1 for b in range(256))


class Discard(enum.IntEnum):
    """Why clusters are freed (QEMU's Qcow2DiscardType): decides pass-through."""

    NEVER = 0
    ALWAYS = 1
    REQUEST = 2
    SNAPSHOT = 3
    OTHER = 4


class _Again(Exception):
    """A refcount block was added; the caller must search for space again."""


def refcount_blocks_needed(clusters: int, cluster_size: int, refcount_order: int,
                           generous: bool = False) -> int:
    """Refcount blocks that cover ``clusters`` plus themselves and their table (the
    fixed point QEMU's qcow2_refcount_metadata_size finds)."""
    per_table = cluster_size // 8
    per_block = cluster_size * 8 >> refcount_order
    table = blocks = n = 0
    while True:
        last = n
        blocks = -(-(clusters + table + blocks) // per_block)
        table = -(-blocks // per_table)
        n = clusters + blocks + table
        if n == last and generous:
            clusters += -(-table // 2)
            n, generous = 0, False
            continue
        if n == last:
            return blocks


def first_used(counts: Sequence[int]) -> int:
    """Index of the first non-zero refcount of ``counts`` (``len(counts)`` if none)."""
    return next(itertools.compress(itertools.count(), counts), len(counts))


def last_used(counts: Sequence[int]) -> int:
    """Index of the last non-zero refcount of ``counts`` (-1 if none)."""
    return next(itertools.compress(range(len(counts) - 1, -1, -1), reversed(counts)), -1)


def count_used(counts: array) -> int:
    """How many refcounts of ``counts`` are not zero."""
    return len(counts) - counts.count(0)


def _reserved_bits_set(raw: bytes) -> bool:
    """Whether an entry of a refcount table as on disk has a reserved bit (0-8) set.
    Those bits are in bytes 6 and 7 of each big-endian entry: compared as two strided
    slices, not entry by entry."""
    zero = bytes(len(raw) // 8)
    return raw[7::8] != zero or raw[6::8].translate(_LOW_BIT) != zero


class Refcounts:
    """The refcount table (kept in memory) and the refcount blocks (in ``cache``)."""

    def __init__(self, file: "BlockNode", cluster_bits: int, refcount_order: int,
                 table_offset: int, table: array, cache: MetadataCache,
                 corrupt: Callable[[str, int, int], Awaitable[None]]) -> None:
        self.file = file
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.order = refcount_order
        self.bits = 1 << refcount_order
        self.max = (1 << self.bits) - 1
        self.block_entries = self.cluster_size * 8 // self.bits
        self.block_bits = self.block_entries.bit_length() - 1
        self.table_offset = table_offset
        self.table = table                      # array('Q'), masked offsets
        self.cache = cache
        self.corrupt = corrupt
        self.free_cluster_index = 0
        self.free_byte_offset = 0
        self.discard_passthrough = {Discard.NEVER: False, Discard.ALWAYS: True,
                                    Discard.REQUEST: False, Discard.SNAPSHOT: True,
                                    Discard.OTHER: False}
        self.pending_discards: list[list[int]] = []
        self.cache_discards = False
        #: caches to purge when a cluster's refcount drops to zero
        self.other_caches: list[MetadataCache] = []
        #: writes the header's refcount table fields (offset, clusters)
        self.write_header_reftable: Callable[[int, int], Awaitable[None]] | None = None

    # ---- table I/O --------------------------------------------------------------------
    @classmethod
    def load_table(cls, data: bytes, entries: int) -> array:
        raw = bytes(data[:entries * L.TABLE_ENTRY])
        table = L.parse_table(raw)
        if _reserved_bits_set(raw):         # a damaged image: keep the offsets only
            table = array("Q", [e & REFT_OFFSET_MASK for e in table])
        return table

    def block_offset(self, rt_index: int) -> int:
        if rt_index >= len(self.table):
            return 0
        return self.table[rt_index]

    # ---- entries within a block ---------------------------------------------------------
    def _get_range(self, table: array, start: int, end: int) -> array:
        """Refcounts ``[start, end)`` of a block (a copy)."""
        if self.bits >= 8:
            return table[start:end]
        bits, mask = self.bits, self.max
        return array("B", [(table[(i * bits) >> 3] >> ((i * bits) & 7)) & mask
                           for i in range(start, end)])

    def _set_one(self, table: array, i: int, value: int) -> None:
        if self.bits >= 8:
            table[i] = value
            return
        bit = i * self.bits
        byte, shift = bit >> 3, bit & 7
        table[byte] = (table[byte] & ~(self.max << shift) & 0xFF) | (value << shift)

    def _set_range(self, table: array, start: int, values: Sequence[int]) -> None:
        if self.bits >= 8:
            table[start:start + len(values)] = array(table.typecode, values)
            return
        for k, v in enumerate(values):
            self._set_one(table, start + k, v)

    # ---- lookup -------------------------------------------------------------------------
    async def _load_block(self, rt_index: int) -> int:
        off = self.block_offset(rt_index)
        if off and off % self.cluster_size:
            await self.corrupt(f"Refblock offset {off:#x} unaligned (reftable index: "
                               f"{rt_index:#x})", off, self.cluster_size)
        return off

    async def get(self, cluster_index: int) -> int:
        if self.bits < 8:
            return (await self.get_run(cluster_index, 1))[0]
        off = await self._load_block(cluster_index >> self.block_bits)
        if not off:
            return 0
        entry = await self.cache.get(off)
        try:
            return entry.table[cluster_index & (self.block_entries - 1)]
        finally:
            self.cache.put(entry)

    async def get_run(self, cluster_index: int, count: int) -> array:
        """Refcounts of up to ``count`` clusters from ``cluster_index`` (at least one,
        at most up to the end of its refcount block), as a new array."""
        rt_index = cluster_index >> self.block_bits
        first = cluster_index & (self.block_entries - 1)
        n = min(count, self.block_entries - first)
        off = await self._load_block(rt_index)
        if not off:
            return array("B", bytes(n))
        entry = await self.cache.get(off)
        try:
            return self._get_range(entry.table, first, first + n)
        finally:
            self.cache.put(entry)

    # ---- allocation -----------------------------------------------------------------------
    async def _alloc_noref(self, nb_clusters: int, for_bytes: bool = False) -> int:
        """QEMU's alloc_clusters_noref: the first run of free clusters at or after
        ``free_cluster_index``; moves the index past it.

        A whole-cluster allocation that takes the cluster compressed data was being
        packed into (freed meanwhile) ends that packing, so the cluster is never shared
        between compressed data and anything else."""
        if self.cache_discards:
            await self.process_discards()
        start = self.free_cluster_index
        run = 0
        if nb_clusters == 1 and await self.get(start) == 0:
            run = 1             # the usual case: the next cluster is free
        while run < nb_clusters:
            c = start + run
            counts = await self.get_run(c, nb_clusters - run)
            used = first_used(counts)
            if used < len(counts):
                start = c + used + 1
                run = 0
            else:
                run += len(counts)
        self.free_cluster_index = start + nb_clusters
        self._claimed(start, nb_clusters, for_bytes)
        if (self.free_cluster_index - 1) > (MAX_CLUSTER_OFFSET >> self.cluster_bits):
            raise BlockError("Cluster allocation beyond the maximum image size", errno.EFBIG)
        return start << self.cluster_bits

    async def alloc_clusters(self, size: int) -> int:
        """Allocate contiguous clusters for ``size`` bytes; their refcount becomes 1."""
        nb = -(-size // self.cluster_size)
        while True:
            offset = await self._alloc_noref(nb)
            try:
                await self.update(offset, nb << self.cluster_bits, 1)
            except _Again:
                # search again from where this attempt started: the new refcount
                # block may have left that space free (qemu-img lays images out so)
                self.free_cluster_index = min(self.free_cluster_index,
                                              offset >> self.cluster_bits)
                continue
            return offset

    def _claimed(self, start: int, nb_clusters: int, for_bytes: bool) -> None:
        packing = self.free_byte_offset >> self.cluster_bits
        if self.free_byte_offset and not for_bytes and start <= packing < start + nb_clusters:
            self.free_byte_offset = 0

    async def alloc_clusters_at(self, offset: int, nb_clusters: int) -> int:
        """Allocate as many of the clusters at ``offset`` as are free (up to the first
        used one); returns how many."""
        idx = offset >> self.cluster_bits
        while True:
            n = 0
            while n < nb_clusters:
                counts = await self.get_run(idx + n, nb_clusters - n)
                used = first_used(counts)
                if used < len(counts):
                    n += used
                    break
                n += len(counts)
            if n == 0:
                return 0
            self._claimed(idx, n, False)
            try:
                await self.update(offset, n << self.cluster_bits, 1)
            except _Again:
                continue
            return n

    async def alloc_bytes(self, size: int) -> int:
        """Sub-cluster allocation for compressed data (QEMU's qcow2_alloc_bytes);
        ``free_byte_offset`` remembers where the last one ended (forgotten when its
        cluster is freed, so a cluster reused for something else is never shared)."""
        cs = self.cluster_size
        offset = self.free_byte_offset
        if offset and await self.get(offset >> self.cluster_bits) == self.max:
            offset = 0
        free_in_cluster = cs - offset % cs
        while True:
            if not offset or free_in_cluster < size:
                new_cluster = await self._alloc_noref(1, for_bytes=True)
                if not offset or -(-offset // cs) * cs != new_cluster:
                    offset = new_cluster
                    free_in_cluster = cs
                else:
                    free_in_cluster += cs
            try:
                await self.update(offset, size, 1)
            except _Again:
                continue
            break
        self.free_byte_offset = 0 if (offset + size) % cs == 0 else offset + size
        return offset

    async def free_clusters(self, offset: int, size: int, kind: Discard) -> None:
        try:
            await self.update(offset, size, -1, kind)
        except _Again:
            raise ImageCorrupt("qcow2: refcount block missing while freeing clusters")

    # ---- the update -----------------------------------------------------------------------
    async def update(self, offset: int, length: int, addend: int,
                     kind: Discard = Discard.NEVER) -> None:
        """Add ``addend`` to the refcount of every cluster touched by the byte range."""
        if length <= 0:
            return
        cb = self.cluster_bits
        first, last = offset >> cb, (offset + length - 1) >> cb
        done: list[tuple[int, int]] = []
        try:
            idx = first
            while idx <= last:
                start = idx & (self.block_entries - 1)
                n = min(last + 1 - idx, self.block_entries - start)
                block = await self._block_for(idx)
                entry = await self.cache.get(block)
                try:
                    if n == 1 and self.bits >= 8:      # one cluster
                        value = entry.table[start] + addend
                        if value < 0 or value > self.max:
                            raise BlockError("qcow2: refcount out of range", errno.EINVAL)
                        entry.table[start] = value
                        new = None
                    else:
                        new = [v + addend for v in self._get_range(entry.table, start,
                                                                   start + n)]
                        if min(new) < 0 or max(new) > self.max:
                            raise BlockError("qcow2: refcount out of range", errno.EINVAL)
                        self._set_range(entry.table, start, new)
                    self.cache.mark_dirty(entry)
                finally:
                    self.cache.put(entry)
                done.append((idx, n))
                if addend < 0:
                    if new is None:
                        if value == 0:
                            self._freed([idx], kind)
                    else:
                        zeros = [idx + k for k, v in enumerate(new) if v == 0]
                        if zeros:
                            self._freed(zeros, kind)
                idx += n
        except BaseException:
            for idx, n in done:     # undo what was done (blocks exist, no allocation)
                await self._add_existing(idx, n, -addend)
            raise
        finally:
            if not self.cache_discards:
                await self.process_discards()

    async def _add_existing(self, idx: int, n: int, addend: int) -> None:
        block = self.block_offset(idx >> self.block_bits)
        entry = await self.cache.get(block)
        start = idx & (self.block_entries - 1)
        old = self._get_range(entry.table, start, start + n)
        self._set_range(entry.table, start, [min(max(v + addend, 0), self.max) for v in old])
        self.cache.mark_dirty(entry)
        self.cache.put(entry)
        if addend < 0:
            zero = next((k for k, v in enumerate(old) if v + addend <= 0), None)
            if zero is not None:
                self.free_cluster_index = min(self.free_cluster_index, idx + zero)

    def _freed(self, indexes: list[int], kind: Discard) -> None:
        self.free_cluster_index = min(self.free_cluster_index, indexes[0])
        cs = self.cluster_size
        for i in indexes:
            off = i << self.cluster_bits
            self.cache.discard(off)
            for other in self.other_caches:
                other.discard(off)
            if self.discard_passthrough.get(kind, False):
                if self.pending_discards and self.pending_discards[-1][1] == off:
                    self.pending_discards[-1][1] = off + cs
                else:
                    self.pending_discards.append([off, off + cs])

    async def process_discards(self) -> None:
        pending, self.pending_discards = self.pending_discards, []
        for start, end in pending:
            try:
                await self.file.discard(start, end - start)
            except BlockError:
                pass

    # ---- refcount blocks ------------------------------------------------------------------
    async def _block_for(self, cluster_index: int) -> int:
        """The refcount block covering ``cluster_index``; allocating one raises _Again
        after it is hooked up (QEMU's alloc_refcount_block)."""
        rt_index = cluster_index >> self.block_bits
        off = await self._load_block(rt_index)
        if off:
            return off
        new_block = await self._alloc_noref(1)
        if new_block == 0:
            await self.corrupt("Preventing invalid allocation of refcount block at offset 0",
                               0, self.cluster_size)
        new_index = new_block >> self.cluster_bits
        if new_index >> self.block_bits == rt_index:
            entry = await self.cache.get(new_block, empty=True)
            self._set_one(entry.table, new_index & (self.block_entries - 1), 1)
        else:
            await self.update(new_block, self.cluster_size, 1)
            await self.cache.flush()
            entry = await self.cache.get(new_block, empty=True)
        self.cache.mark_dirty(entry)
        self.cache.put(entry)
        await self.cache.flush()
        if rt_index < len(self.table):
            await self.file.write(self.table_offset + rt_index * 8,
                                  L.build_entries(new_block))
            await self.file.flush()
            self.table[rt_index] = new_block
            raise _Again
        blocks_used = -(-max(cluster_index + 1, new_index + 1) // self.block_entries)
        await self.refcount_area(blocks_used * self.block_entries * self.cluster_size, 0,
                                 exact=False, new_index=rt_index, new_block=new_block)
        raise _Again

    async def refcount_area(self, start_offset: int, additional_clusters: int, *,
                            exact: bool = True, new_index: int = 0,
                            new_block: int = 0) -> int:
        """Put refcount blocks the table lacks and then a new refcount table at
        ``start_offset``, covering everything before it, ``additional_clusters`` and
        themselves (with room to grow unless ``exact``); ``new_block`` is a block not
        yet in the table that belongs at ``new_index``.  Returns where the area ends
        (QEMU's qcow2_refcount_area)."""
        cs, epc = self.cluster_size, self.block_entries
        total_blocks = refcount_blocks_needed(start_offset // cs + additional_clusters, cs,
                                              self.order, generous=not exact)
        area_index = (start_offset // cs) // epc
        per_cluster = cs // 8
        table_size = total_blocks if exact else total_blocks + -(-total_blocks // 2)
        table_size = -(-table_size // per_cluster) * per_cluster
        table_clusters = table_size * 8 // cs
        if table_size * 8 > MAX_REFTABLE_SIZE:
            raise NoSpace("Refcount table too large", errno.EFBIG)
        new_table = L.empty_table(table_size * L.TABLE_ENTRY)
        keep = min(len(self.table), table_size)
        new_table[:keep] = self.table[:keep]
        if new_block:
            new_table[new_index] = new_block
        missing = new_table[area_index:total_blocks].count(0)
        table_offset = start_offset + missing * cs
        end_offset = table_offset + table_clusters * cs
        block_offset = start_offset
        for i in range(area_index, total_blocks):
            if new_table[i]:
                entry = await self.cache.get(new_table[i])
            else:
                entry = await self.cache.get(block_offset, empty=True)
                self.cache.mark_dirty(entry)
                new_table[i] = block_offset
                block_offset += cs
            first_covered = i * epc * cs
            if first_covered < end_offset:
                j = (start_offset - first_covered) // cs if first_covered < start_offset else 0
                for k in range(j, min((end_offset - first_covered) // cs, epc)):
                    self._set_one(entry.table, k, 1)
                self.cache.mark_dirty(entry)
            self.cache.put(entry)
        await self.cache.flush()
        await self.file.write(table_offset, L.build_table(new_table))
        await self.file.flush()
        old_off, old_entries = self.table_offset, len(self.table)
        assert self.write_header_reftable is not None
        await self.write_header_reftable(table_offset, table_clusters)
        self.table_offset, self.table = table_offset, new_table
        await self.free_clusters(old_off, old_entries * 8, Discard.OTHER)
        return end_offset

    async def shrink_table(self) -> None:
        """Drop refcount blocks that count nothing but themselves (after a shrink)."""
        unused: list[int] = []
        for i, off in enumerate(self.table.tolist()):
            if not off:
                continue
            entry = await self.cache.get(off)
            try:
                counts = self._get_range(entry.table, 0, self.block_entries)
            finally:
                self.cache.put(entry)
            own = off >> self.cluster_bits
            if own >> self.block_bits == i:
                counts[own & (self.block_entries - 1)] = 0
            if not count_used(counts):
                unused.append(i)
        if not unused:
            return
        new_table = array("Q", self.table)
        for i in unused:
            new_table[i] = 0
        await self.cache.write_back()
        await self.file.write(self.table_offset, L.build_table(new_table))
        await self.file.flush()
        old_table, self.table = self.table, new_table
        for i in unused:
            off = old_table[i]
            if (off >> self.cluster_bits) >> self.block_bits == i:
                # it counted only itself: nothing else to update
                self.cache.discard(off)
                self.free_cluster_index = min(self.free_cluster_index,
                                              off >> self.cluster_bits)
                if self.discard_passthrough[Discard.ALWAYS]:
                    self.pending_discards.append([off, off + self.cluster_size])
            else:
                await self.free_clusters(off, self.cluster_size, Discard.ALWAYS)
        await self.process_discards()

    # ---- rebuild --------------------------------------------------------------------------
    async def rebuild(self, expected: "np.ndarray") -> None:
        """Replace the refcount structures with new ones holding ``expected`` (the
        refcount of every cluster, not counting refcount structures), put at the end
        of the file; the old structures become free space."""
        import numpy as np
        cs, epc = self.cluster_size, self.block_entries
        used = np.flatnonzero(expected)
        # after everything, the old refcount structures included: they stay valid until
        # the header switches to the new ones
        first = max(int(used[-1]) + 1 if used.size else 1,
                    -(-self.file.total_bytes // cs))
        n_blocks, table_clusters = 1, 1
        while True:
            total = first + n_blocks + table_clusters
            nb = max(n_blocks, -(-total // epc))
            tc = max(table_clusters, -(-(nb * 8) // cs))
            if nb == n_blocks and tc == table_clusters:
                break
            n_blocks, table_clusters = nb, tc
        if table_clusters * cs > MAX_REFTABLE_SIZE:
            raise NoSpace("Refcount table too large", errno.EFBIG)
        total = first + n_blocks + table_clusters
        counts = np.zeros(total, np.uint64)
        counts[:min(len(expected), total)] = expected[:total]
        counts[first:total] = 1
        if counts.max(initial=0) > self.max:
            raise ImageCorrupt("qcow2: refcount overflow while rebuilding")
        table = L.empty_table(table_clusters * cs)
        self.cache.entries.clear()
        for k in range(n_blocks):
            block_off = (first + k) * cs
            table[k] = block_off
            entry = await self.cache.get(block_off, empty=True)
            part = counts[k * epc:(k + 1) * epc]
            if self.bits >= 8:
                L.as_ndarray(entry.table)[:len(part)] = part
            else:
                self._set_range(entry.table, 0, part.tolist())
            self.cache.mark_dirty(entry)
            self.cache.put(entry)
            await self.cache.write_back()
        table_off = (first + n_blocks) * cs
        await self.file.write(table_off, L.build_table(table))
        await self.file.flush()
        assert self.write_header_reftable is not None
        await self.write_header_reftable(table_off, table_clusters)
        self.table_offset, self.table = table_off, table
        self.free_cluster_index = 0
        self.free_byte_offset = 0
