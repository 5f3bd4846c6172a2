"""Where a file holds data, walked with SEEK_DATA / SEEK_HOLE over many extents at once
and kept until the file changes: a block-status walk over a fragmented file costs one
thread hop per window instead of one per extent."""
from __future__ import annotations

import errno
import os
import weakref
from bisect import bisect_right

SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)
END = 1 << 63              # "to the end": a trailing hole, or data when lseek cannot tell
FIRST_WALK = 16            # extents walked after a change (a write may come next)
LONGEST_WALK = 4096        # ... growing fourfold while the walks are used up


def walk(fd: int, offset: int, end: int, limit: int) -> tuple[list[int], list[bool]]:
    """Boundaries and kinds (True: data) of the extents from ``offset``: extent ``i`` is
    ``[bounds[i], bounds[i+1])``; at most ``limit`` extents, stopping past ``end``.
    Never raises: where lseek fails the rest is data (as read would find it)."""
    bounds: list[int] = [offset]
    kinds: list[bool] = []
    pos = offset
    while pos < end and len(kinds) < limit:
        try:
            data = os.lseek(fd, pos, SEEK_DATA)
        except OSError as exc:
            kinds.append(exc.errno != errno.ENXIO)    # ENXIO: a hole to the end
            bounds.append(END)
            break
        if data > pos:
            kinds.append(False)
            bounds.append(data)
            pos = data
            if pos >= end or len(kinds) >= limit:
                break
        try:
            hole = os.lseek(fd, pos, SEEK_HOLE)
        except OSError:
            hole = END
        kinds.append(True)
        bounds.append(hole)
        pos = hole
    return bounds, kinds


class Extents:
    """The last walk of one file, valid while ``generation`` has not moved (every
    change to the file moves it when it starts and when it ends)."""

    __slots__ = ("__weakref__", "_bounds", "_kinds", "_walked_at", "budget", "generation")

    def __init__(self) -> None:
        self.generation = 0
        self._walked_at = -1
        self._bounds: list[int] = []
        self._kinds: list[bool] = []
        self.budget = FIRST_WALK

    def changed(self) -> None:
        self.generation += 1

    def lookup(self, offset: int) -> tuple[bool, int] | None:
        """(data?, end of that extent) at ``offset`` from the last walk, if it still
        holds and reaches there."""
        bounds = self._bounds
        if self._walked_at != self.generation or not bounds \
                or not bounds[0] <= offset < bounds[-1]:
            return None
        i = bisect_right(bounds, offset) - 1
        return self._kinds[i], bounds[i + 1]

    def start_walk(self) -> tuple[int, int]:
        """(generation, extent budget) for a walk about to run."""
        if self._walked_at == self.generation:
            self.budget = min(self.budget * 4, LONGEST_WALK)   # the last one was used up
        else:
            self.budget = FIRST_WALK
        return self.generation, self.budget

    def store(self, generation: int, bounds: list[int], kinds: list[bool]) -> None:
        if generation == self.generation:
            self._walked_at, self._bounds, self._kinds = generation, bounds, kinds


_BY_FILE: weakref.WeakValueDictionary[tuple[int, int], Extents] = weakref.WeakValueDictionary()


def extents_of(fd: int) -> Extents:
    """The one :class:`Extents` of the file ``fd`` is open on, shared by every node of
    this process open on it (a change through one is seen by all)."""
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    ext = _BY_FILE.get(key)
    if ext is None:
        ext = _BY_FILE[key] = Extents()
    return ext
