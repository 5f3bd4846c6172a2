"""What references each host cluster, and the refcount rebuild built on it.

:func:`count_references` walks every structure that owns clusters (header, L1/L2
tables, data and compressed clusters, snapshot tables, bitmaps, the encryption
header) except the refcount structures themselves.  :func:`rebuild_refcounts` lays new
refcount structures over that count; opening an image left dirty with lazy refcounts
uses it, and a later ``check -r`` can too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...core.errors import ImageCorrupt
from . import layout as L
from .mapping import L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED

if TYPE_CHECKING:
    from .driver import Qcow2Driver

#: references this far beyond the end of the file are refused, not counted
MAX_SLACK_CLUSTERS = 1 << 22


class Counter:
    """Reference counts per host cluster, growing as references are found."""

    def __init__(self, cluster_bits: int, file_clusters: int) -> None:
        self.cluster_bits = cluster_bits
        self.limit = file_clusters + MAX_SLACK_CLUSTERS
        self.counts = np.zeros(max(file_clusters, 1), np.uint64)

    def _fit(self, last: int) -> None:
        if last >= self.limit:
            raise ImageCorrupt(f"qcow2: reference to cluster {last} far beyond the end of "
                               "the image")
        if last >= len(self.counts):
            grown = np.zeros(max(last + 1, len(self.counts) * 2), np.uint64)
            grown[:len(self.counts)] = self.counts
            self.counts = grown

    def add(self, offset: int, size: int) -> None:
        if size <= 0:
            return
        first, last = offset >> self.cluster_bits, (offset + size - 1) >> self.cluster_bits
        self._fit(last)
        self.counts[first:last + 1] += np.uint64(1)

    def add_clusters(self, indexes: np.ndarray) -> None:
        if indexes.size:
            self._fit(int(indexes.max()))
            np.add.at(self.counts, indexes, np.uint64(1))


async def count_references(drv: "Qcow2Driver") -> np.ndarray:
    h, cs, file = drv.header, drv.cluster_size, drv.file
    c = Counter(h.cluster_bits, -(-file.total_bytes // cs))
    c.add(0, cs)
    await _count_l1(drv, c, h.l1_table_offset, L.as_ndarray(drv.mapping.l1))
    if h.nb_snapshots:
        await _count_snapshots(drv, c)
    if h.bitmaps is not None and h.autoclear_features & L.AUTOCLEAR_BITMAPS:
        await _count_bitmaps(drv, c)
    if h.crypto is not None:
        c.add(h.crypto.offset, h.crypto.length)
    return c.counts


async def _count_l1(drv: "Qcow2Driver", c: Counter, l1_offset: int, l1: np.ndarray) -> None:
    cs, geo = drv.cluster_size, drv.geo
    c.add(l1_offset, len(l1) * 8)
    for l2_off in (l1 & np.uint64(L1E_OFFSET_MASK))[l1 != 0].tolist():
        if not l2_off:
            continue
        if l2_off % cs:
            raise ImageCorrupt(f"qcow2: L2 table offset {l2_off:#x} unaligned")
        c.add(l2_off, cs)
        entry = await drv.l2_cache.get(l2_off)
        try:
            table = L.as_ndarray(entry.table).copy()
        finally:
            drv.l2_cache.put(entry)
        ents = table[0::2] if geo.extended_l2 else table
        comp = (ents & np.uint64(OFLAG_COMPRESSED)) != 0
        for e in ents[comp].tolist():
            coffset, csize = geo.compressed(int(e))
            c.add(coffset, csize)
        if drv.header.has_data_file:
            continue
        offs = ents[~comp] & np.uint64(L2E_OFFSET_MASK)
        offs = offs[offs != 0]
        if offs.size and (offs % np.uint64(cs)).any():
            bad = int(offs[(offs % np.uint64(cs)) != 0][0])
            raise ImageCorrupt(f"qcow2: cluster offset {bad:#x} unaligned")
        c.add_clusters((offs >> np.uint64(geo.cluster_bits)).astype(np.int64))


async def _count_snapshots(drv: "Qcow2Driver", c: Counter) -> None:
    h, file = drv.header, drv.file
    pos = h.snapshots_offset
    start = pos
    for _ in range(h.nb_snapshots):
        e = L.SnapshotFixed.parse(await file.read(pos, L.SNAPSHOT_FIXED.size))
        l1_off, l1_size = e.l1_table_offset, e.l1_size
        if e.extra_data_size > L.MAX_SNAPSHOT_EXTRA_DATA or l1_size * 8 > L.MAX_L1_SIZE \
                or l1_off % drv.cluster_size:
            raise ImageCorrupt("qcow2: invalid snapshot table entry")
        pos += e.entry_size
        pos = (pos + 7) & ~7
        raw = await file.read(l1_off, l1_size * 8)
        l1 = L.table_as_ndarray(raw.ljust(l1_size * 8, b"\0"))
        await _count_l1(drv, c, l1_off, l1)
    c.add(start, pos - start)


async def _count_bitmaps(drv: "Qcow2Driver", c: Counter) -> None:
    ext, file = drv.header.bitmaps, drv.file
    assert ext is not None
    c.add(ext.directory_offset, ext.directory_size)
    data = bytes(await file.read(ext.directory_offset, ext.directory_size))
    for e in L.bitmap_directory(data, ext.nb_bitmaps, "qcow2: bitmap directory is truncated"):
        table_off, table_size = e.table_offset, e.table_size
        if table_size > L.BME_MAX_TABLE_SIZE:
            raise ImageCorrupt("qcow2: bitmap table too large")
        c.add(table_off, table_size * 8)
        raw = await file.read(table_off, table_size * 8)
        table = L.as_ndarray(L.parse_table(bytes(raw).ljust(table_size * 8, b"\0")))
        offs = table & np.uint64(L.BME_TABLE_OFFSET_MASK)
        offs = offs[offs != 0]
        c.add_clusters((offs >> np.uint64(drv.geo.cluster_bits)).astype(np.int64))


async def rebuild_refcounts(drv: "Qcow2Driver") -> None:
    """Replace the refcount structures by ones computed from the metadata."""
    await drv.l2_cache.write_back()
    expected = await count_references(drv)
    await drv.refcounts.rebuild(expected)
    await drv.file.flush()
