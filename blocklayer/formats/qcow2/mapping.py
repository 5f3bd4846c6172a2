"""Guest offset -> host offset: L1/L2 lookup, subcluster types, compressed descriptors.

:meth:`Mapping.lookup` answers a whole run at once (QEMU's qcow2_get_host_offset): the
longest prefix of the request whose (sub)clusters have one type and, when allocated,
contiguous host offsets, up to the end of one L2 table.
"""
from __future__ import annotations

import enum
import sys
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from . import layout as L
from .cache import MetadataCache

if TYPE_CHECKING:
    import numpy as np

    from .layout import Header

L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
L2_BITMAP_ALL_ALLOC = 0xFFFFFFFF
L2_BITMAP_ALL_ZEROES = 0xFFFFFFFF << 32
COMPRESSED_SECTOR = 512
#: clusters of a run compared one by one before the rest is compared in bulk (runs of
#: up to four times this are compared one by one to their end: cheaper than numpy)
SCALAR_SCAN = 32
#: entries of a run of one repeated entry (unallocated, zero) compared at once
REPEAT_CHUNK = 1024


class SC(enum.Enum):
    """QEMU's QCow2SubclusterType."""

    UNALLOCATED_PLAIN = 0
    UNALLOCATED_ALLOC = 1
    ZERO_PLAIN = 2
    ZERO_ALLOC = 3
    NORMAL = 4
    COMPRESSED = 5
    INVALID = 6

    @property
    def has_host(self) -> bool:
        return self in HAS_HOST


#: subcluster types whose L2 entry holds a host offset (a tuple: ``in`` compares by
#: identity, where a set would call Enum.__hash__, which is Python code)
HAS_HOST = (SC.NORMAL, SC.ZERO_ALLOC, SC.UNALLOCATED_ALLOC)


class CT(enum.Enum):
    """QEMU's QCow2ClusterType (whole cluster, ignoring subclusters)."""

    UNALLOCATED = 0
    ZERO_PLAIN = 1
    ZERO_ALLOC = 2
    NORMAL = 3
    COMPRESSED = 4


@dataclass(slots=True)
class Run:
    """``length`` bytes from guest ``offset`` of one type; ``host`` for the byte at
    ``offset`` when the type has one; ``entry`` the L2 entry of the first cluster."""

    kind: SC
    offset: int
    length: int
    host: int | None = None
    entry: int = 0


class Geometry:
    """The index arithmetic of one image (small pure functions)."""

    def __init__(self, h: "Header") -> None:
        self.cluster_bits = h.cluster_bits
        self.cluster_size = h.cluster_size
        self.extended_l2 = h.extended_l2
        self.l2_entries = h.l2_entries
        self.l2_bits = self.l2_entries.bit_length() - 1
        self.subclusters = 32 if h.extended_l2 else 1
        self.subcluster_size = self.cluster_size // self.subclusters
        self.subcluster_bits = self.subcluster_size.bit_length() - 1
        self.csize_shift = 62 - (h.cluster_bits - 8)
        self.csize_mask = (1 << (h.cluster_bits - 8)) - 1
        self.cluster_offset_mask = (1 << self.csize_shift) - 1
        self.has_data_file = h.has_data_file

    def l1_index(self, offset: int) -> int:
        return offset >> (self.cluster_bits + self.l2_bits)

    def l2_index(self, offset: int) -> int:
        return (offset >> self.cluster_bits) & (self.l2_entries - 1)

    def sc_index(self, offset: int) -> int:
        return (offset & (self.cluster_size - 1)) >> self.subcluster_bits

    def into_cluster(self, offset: int) -> int:
        return offset & (self.cluster_size - 1)

    def cluster_start(self, offset: int) -> int:
        return offset & ~(self.cluster_size - 1)

    def l1_size_for(self, size: int) -> int:
        shift = self.cluster_bits + self.l2_bits
        return (size + (1 << shift) - 1) >> shift

    # ---- entries --------------------------------------------------------------------------
    def cluster_type(self, entry: int) -> CT:
        if entry & OFLAG_COMPRESSED:
            return CT.COMPRESSED
        if entry & OFLAG_ZERO and not self.extended_l2:
            return CT.ZERO_ALLOC if entry & L2E_OFFSET_MASK else CT.ZERO_PLAIN
        if not entry & L2E_OFFSET_MASK:
            if self.has_data_file and entry & OFLAG_COPIED:
                return CT.NORMAL
            return CT.UNALLOCATED
        return CT.NORMAL

    def standard_type(self, entry: int) -> SC:
        """The type of a standard (not extended) L2 entry: :meth:`cluster_type` as an
        :class:`SC`, written out because it runs for every request."""
        if entry & OFLAG_COMPRESSED:
            return SC.COMPRESSED
        off = entry & L2E_OFFSET_MASK
        if entry & OFLAG_ZERO:
            return SC.ZERO_ALLOC if off else SC.ZERO_PLAIN
        if off or (self.has_data_file and entry & OFLAG_COPIED):
            return SC.NORMAL
        return SC.UNALLOCATED_PLAIN

    def subcluster_type(self, entry: int, bitmap: int, sc: int) -> SC:
        if not self.extended_l2:
            return self.standard_type(entry)
        ct = self.cluster_type(entry)
        if ct is CT.COMPRESSED:
            return SC.COMPRESSED
        if ct is CT.NORMAL:
            if (bitmap >> 32) & bitmap:
                return SC.INVALID
            if bitmap & (1 << (sc + 32)):
                return SC.ZERO_ALLOC
            if bitmap & (1 << sc):
                return SC.NORMAL
            return SC.UNALLOCATED_ALLOC
        if bitmap & L2_BITMAP_ALL_ALLOC:
            return SC.INVALID
        if bitmap & (1 << (sc + 32)):
            return SC.ZERO_PLAIN
        return SC.UNALLOCATED_PLAIN

    def compressed(self, entry: int) -> tuple[int, int]:
        """(host byte offset, byte count to read) of a compressed cluster."""
        coffset = entry & self.cluster_offset_mask
        nb_sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
        return coffset, nb_sectors * COMPRESSED_SECTOR - (coffset & (COMPRESSED_SECTOR - 1))

    def compressed_entry(self, coffset: int, csize: int) -> int:
        nb = ((coffset + csize - 1) // COMPRESSED_SECTOR) - (coffset // COMPRESSED_SECTOR)
        return coffset | OFLAG_COMPRESSED | (nb << self.csize_shift)


Corrupt = Callable[[str, int, int], Awaitable[None]]


class Mapping:
    """The active L1 table (in memory) and L2 tables (in ``cache``)."""

    def __init__(self, geo: Geometry, l1: array, l2_cache: MetadataCache,
                 corrupt: Corrupt) -> None:
        self.geo = geo
        self.l1 = l1                 # array('Q'), raw entries
        self.cache = l2_cache
        self.corrupt = corrupt

    async def l2_offset(self, l1_index: int) -> int:
        if l1_index >= len(self.l1):
            return 0
        off = self.l1[l1_index] & L1E_OFFSET_MASK
        if off % self.geo.cluster_size:
            await self.corrupt(f"L2 table offset {off:#x} unaligned (L1 index: "
                               f"{l1_index:#x})", off, self.geo.cluster_size)
        return off

    def cached_host(self, offset: int, length: int) -> int | None:
        """The host offset of ``[offset, offset+length)`` when it lies in one normal,
        well-formed cluster whose standard L2 table is in cache (synchronous: the read
        fast path); else ``None``, and :meth:`lookup` answers (and reports corruption)."""
        geo = self.geo
        cs = geo.cluster_size
        in_cluster = offset & (cs - 1)
        if in_cluster + length > cs or geo.extended_l2:
            return None
        l1_index = offset >> (geo.cluster_bits + geo.l2_bits)
        l1 = self.l1
        if l1_index >= len(l1):
            return None
        l2_off = l1[l1_index] & L1E_OFFSET_MASK
        entries = self.cache.entries
        entry = entries.get(l2_off) if l2_off and not l2_off & (cs - 1) else None
        if entry is None:
            return None
        e = entry.table[(offset >> geo.cluster_bits) & (geo.l2_entries - 1)]
        if geo.standard_type(e) is not SC.NORMAL or e & L2E_OFFSET_MASK & (cs - 1):
            return None
        entries.move_to_end(l2_off)
        return (e & L2E_OFFSET_MASK) + in_cluster

    async def lookup(self, offset: int, length: int) -> Run:
        """The run starting at guest ``offset`` (at most ``length`` bytes, at least one
        subcluster's worth of what is left in it)."""
        geo = self.geo
        cs = geo.cluster_size
        l2_index = (offset >> geo.cluster_bits) & (geo.l2_entries - 1)
        in_cluster = offset & (cs - 1)
        length = min(length, (geo.l2_entries - l2_index) * cs - in_cluster)
        l1_index = offset >> (geo.cluster_bits + geo.l2_bits)
        l1 = self.l1
        l2_off = l1[l1_index] & L1E_OFFSET_MASK if l1_index < len(l1) else 0
        if not l2_off:
            return Run(SC.UNALLOCATED_PLAIN, offset, length)
        if l2_off & (cs - 1):
            await self.l2_offset(l1_index)          # reports the corruption
        cache = self.cache
        entry = cache.entries.get(l2_off)
        if entry is not None and not geo.extended_l2:
            # cached standard table: no pin needed, nothing below awaits before reading it
            cache.entries.move_to_end(l2_off)
            return await self._run_standard(entry.table, l2_off, l2_index, offset, length)
        entry = await cache.get(l2_off)
        try:
            if geo.extended_l2:
                return await self._run_extended(entry.table, l2_off, l2_index, offset, length)
            return await self._run_standard(entry.table, l2_off, l2_index, offset, length)
        finally:
            cache.put(entry)

    async def _check(self, kind: SC, entry: int, l2_off: int, l2_index: int) -> None:
        if self._suspect(kind, entry):
            await self._report(kind, entry, l2_off, l2_index)

    def _suspect(self, kind: SC, entry: int) -> bool:
        """Whether ``entry`` of type ``kind`` is corrupt (cheap: runs for every lookup)."""
        geo = self.geo
        if kind is SC.INVALID:
            return True
        if kind is SC.COMPRESSED:
            return geo.has_data_file
        return kind in HAS_HOST and bool(entry & L2E_OFFSET_MASK & (geo.cluster_size - 1))

    async def _report(self, kind: SC, entry: int, l2_off: int, l2_index: int) -> None:
        geo = self.geo
        if kind.has_host and (entry & L2E_OFFSET_MASK) % geo.cluster_size:
            await self.corrupt(f"Cluster allocation offset {entry & L2E_OFFSET_MASK:#x} "
                               f"unaligned (L2 offset: {l2_off:#x}, L2 index: {l2_index:#x})",
                               entry & L2E_OFFSET_MASK, geo.cluster_size)
        if kind is SC.COMPRESSED and geo.has_data_file:
            await self.corrupt(f"Compressed cluster entry found in image with external data "
                               f"file (L2 offset: {l2_off:#x}, L2 index: {l2_index:#x})",
                               l2_off, geo.cluster_size)
        if kind is SC.INVALID:
            await self.corrupt(f"Invalid cluster entry found  (L2 offset: {l2_off:#x}, L2 "
                               f"index: {l2_index:#x})", l2_off, geo.cluster_size)

    async def _run_standard(self, table: array, l2_off: int, l2_index: int,
                            offset: int, length: int) -> Run:
        """The run in a standard L2 table: the first :data:`SCALAR_SCAN` clusters are
        compared one by one with plain ints (most requests end there), the rest of a
        long run in bulk (:meth:`_long_run_end`)."""
        geo = self.geo
        cs = geo.cluster_size
        in_cluster = offset & (cs - 1)
        nb = -(-(in_cluster + length) // cs)
        first = table[l2_index]
        kind = geo.standard_type(first)
        if self._suspect(kind, first):
            await self._report(kind, first, l2_off, l2_index)
        has_host = kind in HAS_HOST
        host_base = first & L2E_OFFSET_MASK
        if kind is SC.COMPRESSED or nb == 1:
            n = 1
        else:
            step = cs if has_host else 0
            end = l2_index + nb
            scalar_end = end if nb <= 4 * SCALAR_SCAN else l2_index + SCALAR_SCAN
            i = self._run_end(table, l2_index + 1, scalar_end, kind, first + step, step)
            if i == scalar_end < end:
                i = self._long_run_end(table, i, end, kind, first + (i - l2_index) * step,
                                       step)
            n = i - l2_index
        run_len = min(n * cs - in_cluster, length)
        host = host_base + in_cluster if has_host else None
        return Run(kind, offset, run_len, host, first)

    def _run_end(self, table: array, start: int, stop: int, kind: SC, same: int,
                 step: int) -> int:
        """The index of the first entry of ``table[start:stop]`` that does not continue
        the run (``stop`` if they all do).  Entry ``start + k`` continues it if it is
        ``same + k * step`` or else of type ``kind`` (with the host offset of ``same +
        k * step`` when ``step`` is not 0: the kind has one)."""
        standard_type = self.geo.standard_type
        i = start
        while i < stop:
            e = table[i]
            if e != same and (standard_type(e) is not kind or (
                    step and e & L2E_OFFSET_MASK != same & L2E_OFFSET_MASK)):
                return i
            i += 1
            same += step
        return stop

    def _long_run_end(self, table: array, start: int, stop: int, kind: SC, same: int,
                      step: int) -> int:
        """:meth:`_run_end` for a long run.  One repeated entry (unallocated or zero
        clusters) is compared a chunk at a time as arrays, at C speed.  Contiguous host
        offsets are compared with numpy when something has imported it already, else
        one by one: importing it (~0.1 s) costs more than it saves unless hundreds of
        whole L2 tables are looked at."""
        if not step:
            return self._repeated_run_end(table, start, stop, kind, same)
        if not numpy_loaded():
            return self._run_end(table, start, stop, kind, same, step)
        return start + _same_run(L.as_ndarray(table)[start:stop], kind,
                                 same & L2E_OFFSET_MASK, step, self.geo.has_data_file)

    def _repeated_run_end(self, table: array, start: int, stop: int, kind: SC,
                          same: int) -> int:
        """:meth:`_run_end` with ``step`` 0: chunks equal to ``same`` repeated are
        skipped whole, the first that is not is looked at entry by entry."""
        chunk = array("Q", [same]) * min(REPEAT_CHUNK, stop - start)
        pos = start
        while pos < stop:
            k = min(len(chunk), stop - pos)
            if table[pos:pos + k] != (chunk if k == len(chunk) else chunk[:k]):
                end = self._run_end(table, pos, pos + k, kind, same, 0)
                if end < pos + k:
                    return end
            pos += k
        return stop

    async def _run_extended(self, table: array, l2_off: int, l2_index: int,
                            offset: int, length: int) -> Run:
        geo = self.geo
        cs, scs = geo.cluster_size, geo.subcluster_size
        first = int(table[2 * l2_index])
        sc = geo.sc_index(offset)
        kind = geo.subcluster_type(first, int(table[2 * l2_index + 1]), sc)
        await self._check(kind, first, l2_off, l2_index)
        host_base = first & L2E_OFFSET_MASK
        in_cluster = geo.into_cluster(offset)
        end = in_cluster + length               # relative to the first cluster's start
        pos = (sc + 1) * scs if kind is not SC.COMPRESSED else cs
        if kind is SC.COMPRESSED:
            pos = cs
        i = 0
        while pos < end and kind is not SC.COMPRESSED:
            ci, s = divmod(pos // scs, geo.subclusters)
            e = int(table[2 * (l2_index + ci)])
            b = int(table[2 * (l2_index + ci) + 1])
            t = geo.subcluster_type(e, b, s)
            if t is not kind:
                break
            if kind.has_host and (e & L2E_OFFSET_MASK) != host_base + ci * cs:
                break
            pos += scs
            i += 1
        run_len = min(pos - in_cluster, length)
        host = host_base + in_cluster if kind.has_host else None
        return Run(kind, offset, run_len, host, first)


def numpy_loaded() -> bool:
    """Whether something has imported numpy (the request path never does)."""
    return "numpy" in sys.modules


def _same_run(ents: "np.ndarray", kind: SC, host: int, cs: int,
              has_data_file: bool) -> int:
    """How many of the standard L2 entries ``ents`` are of type ``kind`` and map
    contiguously from host offset ``host`` on (with numpy, once it is loaded)."""
    import numpy as np
    same = _standard_types(ents, has_data_file) == kind.value
    offs = ents & np.uint64(L2E_OFFSET_MASK)
    expect = np.uint64(host) + np.arange(len(ents), dtype=np.uint64) * np.uint64(cs)
    same &= offs == expect
    bad = np.flatnonzero(~same)
    return int(bad[0]) if bad.size else len(ents)


def _standard_types(ents: "np.ndarray", has_data_file: bool) -> "np.ndarray":
    """Vectorised cluster types of standard L2 entries (numbers of SC values)."""
    import numpy as np
    comp = (ents & np.uint64(OFLAG_COMPRESSED)) != 0
    zero = (ents & np.uint64(OFLAG_ZERO)) != 0
    real = (ents & np.uint64(L2E_OFFSET_MASK)) != 0
    has_off = real.copy()
    if has_data_file:
        has_off |= (ents & np.uint64(OFLAG_COPIED)) != 0
    out = np.full(len(ents), SC.UNALLOCATED_PLAIN.value, np.int8)
    out[has_off] = SC.NORMAL.value
    out[zero & ~real] = SC.ZERO_PLAIN.value
    out[zero & real] = SC.ZERO_ALLOC.value
    out[comp] = SC.COMPRESSED.value
    return out
