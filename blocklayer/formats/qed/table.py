"""QED tables on disk and the L2 table cache.

The cache is write-through: a table is changed in memory and the changed sectors are
written at once, so the cache never holds anything the disk lacks and a flush has
nothing to write back.  Entries are reference-counted: one a request holds is never
evicted, so there is only ever one copy of a table in memory and an update made through
it is seen by every later lookup.  Concurrent misses on the same table share one read.
"""
from __future__ import annotations

import asyncio
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from .layout import ENTRY, Geometry, build_table, parse_table, sector_span

if TYPE_CHECKING:
    from ...core.node import BlockNode

#: at most this many L2 tables (QEMU: 50) and about this many bytes of them
CACHE_MAX_TABLES = 50
CACHE_MAX_BYTES = 32 << 20


async def read_table(file: "BlockNode", offset: int, geo: Geometry) -> array:
    data = await file.read(offset, geo.table_bytes)
    return parse_table(data)


async def write_table(file: "BlockNode", offset: int, table: array, index: int = 0,
                      count: int | None = None) -> None:
    """Write entries ``[index, index+count)`` of ``table`` at ``offset``, widened to
    whole sectors (the whole table when ``count`` is None)."""
    if count is None:
        first, last = 0, len(table)
    else:
        first, last = sector_span(index, count)
        last = min(last, len(table))
    await file.write(offset + first * ENTRY, build_table(table, first, last))


@dataclass(eq=False, slots=True)
class CachedTable:
    """One L2 table in memory; ``ref`` counts the requests holding it."""

    offset: int
    table: array
    ref: int = 0


class L2Cache:
    """LRU cache of L2 tables by file offset, with reference-counted entries."""

    def __init__(self, geo: Geometry, load: Callable[[int], Awaitable[array]]) -> None:
        self.capacity = max(2, min(CACHE_MAX_TABLES, CACHE_MAX_BYTES // geo.table_bytes))
        self._load = load
        self._entries: OrderedDict[int, CachedTable] = OrderedDict()
        self._loading: dict[int, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, offset: int) -> CachedTable:
        """The table at ``offset``, loaded if needed; release it with :meth:`release`."""
        while True:
            entry = self._entries.get(offset)
            if entry is not None:
                entry.ref += 1
                self._entries.move_to_end(offset)
                return entry
            pending = self._loading.get(offset)
            if pending is None:
                break
            await pending.wait()          # then look again (the load may have failed)
        done = asyncio.Event()
        self._loading[offset] = done
        try:
            table = await self._load(offset)
        finally:
            del self._loading[offset]
            done.set()
        return self._insert(offset, table)

    def put(self, offset: int, table: array) -> CachedTable:
        """Add a table that was just made (not read); returned held once."""
        old = self._entries.pop(offset, None)
        if old is not None and old.ref:
            raise AssertionError(f"L2 table at {offset} replaced while in use")
        return self._insert(offset, table)

    def release(self, entry: CachedTable) -> None:
        entry.ref -= 1
        assert entry.ref >= 0
        self._evict()

    def clear(self) -> None:
        """Forget every table (after the L1 changed wholesale)."""
        self._entries = OrderedDict((o, e) for o, e in self._entries.items() if e.ref)

    def _insert(self, offset: int, table: array) -> CachedTable:
        entry = CachedTable(offset, table, 1)
        self._entries[offset] = entry
        self._evict()
        return entry

    def _evict(self) -> None:
        if len(self._entries) <= self.capacity:
            return
        for offset in [o for o, e in self._entries.items() if e.ref == 0]:
            del self._entries[offset]
            if len(self._entries) <= self.capacity:
                return
