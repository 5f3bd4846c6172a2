"""Where the active L2 tables and refcount blocks are, for the overlap check of every
guest data write (QEMU's ``cached`` overlap-check template).

:class:`MetadataClusters` keeps their host offsets sorted and answers whether one
starts in a range with one bisection.  It follows the L1 and refcount tables by
comparing them with the copies it last saw (whole arrays, at C speed), so nothing that
changes a table has to tell it: the few entries that changed are found by halving and
patched in (a new L2 table changes one L1 entry), anything more rebuilds the list.
"""
from __future__ import annotations

from array import array
from bisect import bisect_left, insort

from .mapping import L1E_OFFSET_MASK
from .refcount import REFT_OFFSET_MASK

#: changed entries patched in one at a time; past this many the list is rebuilt
MAX_PATCHES = 16
#: spans compared entry by entry while looking for the changed entries
LEAF = 64


class MetadataClusters:
    """Sorted host offsets of the L2 tables an L1 table names and of the refcount
    blocks a refcount table names (repeats kept, zero left out)."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self._seen = [array("Q"), array("Q")]          # the L1 and refcount tables

    def overlap(self, l1: array, reftable: array, start: int, end: int) -> bool:
        """Whether an L2 table or a refcount block starts in ``[start, end)``."""
        self._follow(0, l1, L1E_OFFSET_MASK)
        self._follow(1, reftable, REFT_OFFSET_MASK)
        i = bisect_left(self.offsets, start)
        return i < len(self.offsets) and self.offsets[i] < end

    def _follow(self, slot: int, table: array, mask: int) -> None:
        seen = self._seen[slot]
        if table == seen:
            return
        changed = _changed(table, seen, 0, len(table), []) if len(table) == len(seen) \
            else None
        if changed is None or len(changed) > MAX_PATCHES:
            self._seen[slot] = array("Q", table)
            self._rebuild()
            return
        for i in changed:
            self._remove(seen[i] & mask)
            self._add(table[i] & mask)
            seen[i] = table[i]

    def _rebuild(self) -> None:
        l1, reftable = self._seen
        self.offsets = sorted([e & L1E_OFFSET_MASK for e in l1 if e & L1E_OFFSET_MASK]
                              + [e & REFT_OFFSET_MASK for e in reftable
                                 if e & REFT_OFFSET_MASK])

    def _add(self, offset: int) -> None:
        if offset:
            insort(self.offsets, offset)

    def _remove(self, offset: int) -> None:
        i = bisect_left(self.offsets, offset)
        if offset and i < len(self.offsets) and self.offsets[i] == offset:
            del self.offsets[i]


def _changed(a: array, b: array, lo: int, hi: int, out: list[int]) -> list[int]:
    """Append to ``out`` the indexes in ``[lo, hi)`` where ``a`` and ``b`` (of one
    length) differ, halving the span while its halves differ; stops looking once
    there are more than :data:`MAX_PATCHES`."""
    if len(out) > MAX_PATCHES or a[lo:hi] == b[lo:hi]:
        return out
    if hi - lo <= LEAF:
        out.extend(i for i in range(lo, hi) if a[i] != b[i])
        return out
    mid = (lo + hi) // 2
    _changed(a, b, lo, mid, out)
    return _changed(a, b, mid, hi, out)
