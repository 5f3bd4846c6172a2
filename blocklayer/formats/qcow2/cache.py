"""The metadata cache: a bounded set of table clusters (L2 tables or refcount blocks).

Entries are tables of one cluster in their in-memory form (native ``array``s, see
:mod:`.layout`), keyed by host offset, kept in LRU order and written back lazily.  A
cache can depend on another (QEMU's qcow2_cache_set_dependency): before any of its
dirty entries reach the disk, the other cache is written and the file flushed, so
refcount blocks land before the L2 tables that use them and, when clusters are freed,
L2 tables land before the refcount blocks that free them.

All methods run under the driver's metadata lock; an entry handed out is pinned by
:meth:`get` until :meth:`put`, and a pinned entry is never evicted.
"""
from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from ...core.errors import BlockError
from . import layout as L

if TYPE_CHECKING:
    from ...core.node import BlockNode

MIN_ENTRIES = 2


@dataclass(eq=False, slots=True)
class Entry:
    offset: int
    table: array
    dirty: bool = False
    pins: int = 0


class MetadataCache:
    """A write-back cache of ``capacity`` clusters of ``file``."""

    def __init__(self, name: str, file: "BlockNode", cluster_size: int, capacity: int,
                 typecode: str,
                 before_write: Callable[[int, int], Awaitable[None]] | None = None) -> None:
        self.name = name
        self.file = file
        self.cluster_size = cluster_size
        self.capacity = max(capacity, MIN_ENTRIES)
        self.typecode = typecode
        self.entries: OrderedDict[int, Entry] = OrderedDict()
        self.depends: MetadataCache | None = None
        self.depends_on_flush = False
        #: called with (offset, length) before a table is written (overlap check hook)
        self.before_write = before_write

    # ---- lookup -----------------------------------------------------------------------
    async def get(self, offset: int, *, empty: bool = False) -> Entry:
        """The pinned entry for the table at ``offset`` (read unless ``empty``)."""
        entry = self.entries.get(offset)
        if entry is None:
            await self._make_room()
            if empty:
                table = L.empty_table(self.cluster_size, self.typecode)
            else:
                data = await self.file.read(offset, self.cluster_size)
                table = L.parse_table(data, self.typecode)
            entry = Entry(offset, table)
            self.entries[offset] = entry
        else:
            self.entries.move_to_end(offset)
            if empty:
                entry.table[:] = L.empty_table(self.cluster_size, self.typecode)
        entry.pins += 1
        return entry

    def put(self, entry: Entry) -> None:
        entry.pins -= 1

    def mark_dirty(self, entry: Entry) -> None:
        entry.dirty = True

    def discard(self, offset: int) -> None:
        """Forget a table whose cluster was freed (its contents no longer matter)."""
        entry = self.entries.get(offset)
        if entry is not None and entry.pins == 0:
            del self.entries[offset]

    async def _make_room(self) -> None:
        while len(self.entries) >= self.capacity:
            victim = next((e for e in self.entries.values() if e.pins == 0), None)
            if victim is None:
                raise BlockError(f"qcow2 {self.name} cache: all entries in use")
            if victim.dirty:
                await self._write_entries([victim])
            self.entries.pop(victim.offset, None)

    # ---- dependencies and write-back ------------------------------------------------
    async def set_dependency(self, dependency: "MetadataCache") -> None:
        """Make this cache's dirty entries wait for ``dependency`` to reach the disk."""
        if dependency.depends is not None:
            await dependency.flush_dependency()
        if self.depends is not None and self.depends is not dependency:
            await self.flush_dependency()
        self.depends = dependency

    def set_flush_dependency(self) -> None:
        """Flush the file before the next write-back (data must land first)."""
        self.depends_on_flush = True

    async def flush_dependency(self) -> None:
        assert self.depends is not None
        await self.depends.write_back()
        self.depends = None
        self.depends_on_flush = True

    async def _write_entries(self, entries: list[Entry]) -> None:
        if self.depends is not None:
            await self.flush_dependency()
        if self.depends_on_flush:
            await self.file.flush()
            self.depends_on_flush = False
        for entry in sorted(entries, key=lambda e: e.offset):
            if self.before_write is not None:
                await self.before_write(entry.offset, self.cluster_size)
            await self.file.write(entry.offset, L.build_table(entry.table))
            entry.dirty = False

    async def write_back(self) -> None:
        """Write every dirty entry (after what this cache depends on)."""
        dirty = [e for e in self.entries.values() if e.dirty]
        if dirty or self.depends is not None:
            await self._write_entries(dirty)

    async def flush(self) -> None:
        await self.write_back()
        await self.file.flush()

    def is_dirty(self) -> bool:
        return any(e.dirty for e in self.entries.values())

    def clear(self) -> None:
        """Drop every clean, unpinned entry."""
        for offset in [o for o, e in self.entries.items() if not e.dirty and e.pins == 0]:
            del self.entries[offset]


def cache_sizes(options: dict[str, object], cluster_size: int, virtual_size: int,
                l2_entry_size: int) -> tuple[int, int]:
    """(L2 entries, refcount entries) from cache-size / l2-cache-size / refcount-cache-size,
    as QEMU's read_cache_sizes computes them."""
    from ...core.errors import InvalidArgument
    from ...core.options import parse_size

    def opt(name: str) -> int | None:
        value = options.get(name)
        return None if value is None else parse_size(value, name)  # type: ignore[arg-type]

    combined, l2, rc = opt("cache-size"), opt("l2-cache-size"), opt("refcount-cache-size")
    max_l2_entries = -(-virtual_size // cluster_size)
    max_l2_cache = -(-(max_l2_entries * l2_entry_size) // cluster_size) * cluster_size
    min_rc = 4 * cluster_size
    if combined is not None:
        if l2 is not None and rc is not None:
            raise InvalidArgument("cache-size, l2-cache-size and refcount-cache-size may "
                                  "not be set at the same time")
        if l2 is not None and l2 > combined:
            raise InvalidArgument("l2-cache-size may not exceed cache-size")
        if rc is not None and rc > combined:
            raise InvalidArgument("refcount-cache-size may not exceed cache-size")
        if l2 is not None:
            rc = combined - l2
        elif rc is not None:
            l2 = combined - rc
        elif combined >= max_l2_cache + min_rc:
            l2, rc = max_l2_cache, combined - max_l2_cache
        else:
            rc = min(combined, min_rc)
            l2 = combined - rc
    if l2 is None:
        l2 = min(max_l2_cache, 32 << 20)
    if rc is None:
        rc = min_rc
    return max(l2 // cluster_size, MIN_ENTRIES), max(rc // cluster_size, 4)
