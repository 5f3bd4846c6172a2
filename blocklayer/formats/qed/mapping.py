"""The metadata of one open QED image and guest-to-host translation.

:class:`QedImage` holds the header, the L1 table, the L2 cache and the end of the file
(where the next cluster is allocated).  :meth:`QedImage.find` answers, for a guest
offset, the longest run of clusters of one kind within one L2 table (QEMU's
``qed_find_cluster``), validating every offset it hands out.
"""
from __future__ import annotations

import enum
import errno
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...core.errors import ImageCorrupt
from .layout import (UNALLOCATED, ZERO_CLUSTER, Geometry, Header, empty_table)
from .table import CachedTable, L2Cache, read_table, write_table

if TYPE_CHECKING:
    from ...core.node import BlockNode


class Kind(enum.Enum):
    DATA = "data"            # an allocated cluster (QED_CLUSTER_FOUND)
    ZERO = "zero"            # L2 entry 1: reads as zeroes
    UNALLOC = "unalloc"      # L2 entry 0: read the backing file (QED_CLUSTER_L2)
    NO_L2 = "no-l2"          # L1 entry 0: no L2 table yet (QED_CLUSTER_L1)


@dataclass(slots=True)
class Run:
    """``length`` guest bytes of one kind; ``host`` is the file offset for DATA."""

    kind: Kind
    length: int
    host: int = 0


def classify(entry: int) -> Kind:
    if entry == UNALLOCATED:
        return Kind.UNALLOC
    if entry == ZERO_CLUSTER:
        return Kind.ZERO
    return Kind.DATA


def corrupt(what: str) -> ImageCorrupt:
    return ImageCorrupt(what, errno.EINVAL)


class QedImage:
    """Header, tables and allocation state of an open image (``file`` is its child)."""

    def __init__(self, file: "BlockNode", header: Header, file_size: int,
                 l1: array) -> None:
        self.file = file
        self.header = header
        self.geo = Geometry.of(header)
        self.file_size = file_size          # whole clusters; grows as clusters are allocated
        self.l1 = l1
        self.cache = L2Cache(self.geo, self._load_l2)

    async def _load_l2(self, offset: int) -> array:
        return await read_table(self.file, offset, self.geo)

    # ---- lookup ----------------------------------------------------------------------
    def l2_offset(self, pos: int) -> int:
        """The L2 table offset covering ``pos`` (0 when none), validated."""
        offset = self.l1[self.geo.l1_index(pos)]
        if offset != UNALLOCATED and not self.geo.table_offset_valid(offset, self.file_size):
            raise corrupt(f"QED L2 table offset {offset:#x} is invalid")
        return offset

    async def l2_table(self, offset: int) -> CachedTable:
        """The L2 table at ``offset``, held: pair with ``cache.release``."""
        return await self.cache.get(offset)

    async def find(self, pos: int, length: int) -> Run:
        """The run of same-kind clusters at guest ``pos`` (at most ``length`` bytes, never
        past the L2 table's reach)."""
        geo = self.geo
        reach = (geo.l1_index(pos) + 1) * geo.l2_coverage - pos
        length = min(length, reach)
        l2 = self.l2_offset(pos)
        if l2 == UNALLOCATED:
            return Run(Kind.NO_L2, length)
        entry = await self.cache.get(l2)
        try:
            return self._scan(entry.table, pos, length)
        finally:
            self.cache.release(entry)

    def _scan(self, table: array, pos: int, length: int) -> Run:
        geo = self.geo
        cs = geo.cluster_size
        idx = geo.l2_index(pos)
        first = table[idx]
        kind = classify(first)
        if kind is Kind.DATA and not geo.cluster_offset_valid(first, self.file_size):
            raise corrupt(f"QED cluster offset {first:#x} is invalid")
        into = geo.offset_into_cluster(pos)
        avail = cs - into
        i, expect, n = idx + 1, first + cs, len(table)
        while avail < length and i < n:
            e = table[i]
            if kind is Kind.DATA:
                if e != expect or not geo.cluster_offset_valid(e, self.file_size):
                    break
                expect += cs
            elif e != first:
                break
            avail += cs
            i += 1
        return Run(kind, min(avail, length), first + into if kind is Kind.DATA else 0)

    # ---- allocation and metadata writes ------------------------------------------------
    def alloc_clusters(self, n: int) -> int:
        """Claim ``n`` clusters at the end of the file (callers hold the alloc queue)."""
        offset = self.file_size
        self.file_size += n * self.geo.cluster_size
        return offset

    async def write_header(self) -> None:
        await self.file.write(0, self.header.build())

    async def write_l1(self, index: int | None = None, count: int = 1) -> None:
        await write_table(self.file, self.header.l1_table_offset, self.l1,
                          index or 0, None if index is None else count)

    async def write_l2(self, entry: CachedTable, index: int | None = None,
                       count: int = 1) -> None:
        await write_table(self.file, entry.offset, entry.table,
                          index or 0, None if index is None else count)

    async def new_l2(self) -> CachedTable:
        """Allocate an empty L2 table (in memory and claimed in the file), held once."""
        offset = self.alloc_clusters(self.geo.table_size)
        return self.cache.put(offset, empty_table(self.geo))
