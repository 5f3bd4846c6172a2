"""What ``convert`` does with each stretch of the concatenated sources, decided as
qemu-img 7.2 decides it, in sectors of 512 bytes.

:class:`Planner` walks the concatenation as ``convert_iteration_sectors`` does: block
status is asked of the source under the position (so a run never crosses a source's
end), a run is cut back to the source's alignment (request alignment or cluster), a
data request holds at most one buffer, and with compression a run shorter than a
cluster becomes one whole cluster of data (which may take the end of one source and
the start of the next) while a longer one is cut down to whole clusters.

:func:`sparse_pieces` (``is_allocated_sectors_min``: which sectors of one data request
are written and which zeroed) is the copy engine's zero detection,
:mod:`blocklayer.jobs.zeroes`.

Pure arithmetic: block status comes from a callback.  This is convert's plan for the
copy engine (:mod:`blocklayer.jobs.copy`); :class:`Kind` is the engine's.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Sequence

from blocklayer.core.driver import Status
from blocklayer.jobs.copy import Kind
from blocklayer.jobs.zeroes import sparse_pieces

__all__ = ["Kind", "Part", "Planner", "Request", "Rules", "SECTOR", "layout", "sparse_pieces"]

SECTOR = 512
MAX_REQUEST_SECTORS = (2 ** 31 - 1) // SECTOR     # QEMU's BDRV_REQUEST_MAX_SECTORS


@dataclass(frozen=True)
class Part:
    """One source in the concatenation."""
    start: int        # first sector
    sectors: int      # its size rounded up to whole sectors
    align: int        # request alignment or cluster size, in sectors (at least 1)


@dataclass(frozen=True)
class Rules:
    total: int                    # sectors of all sources
    buf: int                      # largest data request, in sectors
    compressed: bool = False
    cluster: int = 1              # target cluster, in sectors
    min_sparse: int = 8           # -S in sectors (0: write everything)
    target_has_backing: bool = False
    target_backing: int = -1      # sectors of the target's backing file (-1: unknown)
    #: the target reads as zeroes and -S > 0: runs of zeroes write nothing, so where
    #: they are cut decides nothing either
    zero_runs_skipped: bool = False


@dataclass(frozen=True)
class Request:
    sector: int
    count: int
    kind: Kind


# (source index, byte offset in it, bytes) -> (flags, bytes the answer covers)
StatusFn = Callable[[int, int, int], Awaitable[tuple[Status, int]]]


def layout(sizes: Sequence[int], aligns: Sequence[int]) -> list[Part]:
    """Sources of ``sizes`` bytes laid out one after the other in whole sectors."""
    parts, pos = [], 0
    for size, align in zip(sizes, aligns):
        n = -(-size // SECTOR)
        parts.append(Part(pos, n, max(align, 1)))
        pos += n
    return parts


class Planner:
    """qemu-img's iteration: :meth:`step` says how many sectors from ``sector`` make
    the next request and what to do with them.  Steps must be taken in order."""

    def __init__(self, parts: list[Part], rules: Rules, status: StatusFn) -> None:
        self.parts = parts
        self.rules = rules
        self.status = status
        self.starts = [p.start for p in parts]
        self.next_status = 0          # where the current block-status run ends
        self.kind = Kind.DATA

    def part_at(self, sector: int) -> int:
        """The source holding ``sector`` (an empty source holds none)."""
        return bisect.bisect_right(self.starts, sector) - 1

    async def step(self, sector: int) -> tuple[int, Kind]:
        r = self.rules
        n = min(r.total - sector, MAX_REQUEST_SECTORS)
        past_backing = False
        if r.target_backing >= 0:
            if sector >= r.target_backing:
                past_backing = True
            elif sector + n > r.target_backing:     # zeroes differ past it: split there
                n = r.target_backing - sector
        if self.next_status <= sector:
            await self._new_run(sector, self._status_limit(sector, n), past_backing)
        n = min(n, self.next_status - sector)
        if self.kind is Kind.DATA:
            n = min(n, r.buf)
        if r.compressed:                            # whole clusters only
            if n < r.cluster:
                n = min(r.cluster, r.total - sector)
                self.kind = Kind.DATA
            else:
                n -= n % r.cluster
        return n, self.kind

    def _status_limit(self, sector: int, n: int) -> int:
        """How far the block status asked at ``sector`` may answer: qemu-img asks for
        one request's worth (``n``), and so do we unless zero runs write nothing; then
        a run reading as zeroes may answer to the end of its source (or the target's
        backing), handed out in requests of ``n`` without asking again: requests of
        data still start where the run ends."""
        r = self.rules
        if not r.zero_runs_skipped:
            return n
        part = self.parts[self.part_at(sector)]
        end = part.start + part.sectors
        if 0 <= r.target_backing and sector < r.target_backing:
            end = min(end, r.target_backing)
        return max(n, end - sector)

    async def _new_run(self, sector: int, n: int, past_backing: bool) -> int:
        i = self.part_at(sector)
        part = self.parts[i]
        flags, count = await self.status(i, (sector - part.start) * SECTOR, n * SECTOR)
        n = max(-(-count // SECTOR), 1)
        tail = (sector - part.start + n) % part.align
        if n > tail:
            n -= tail
        self.kind = self._classify(flags, past_backing)
        self.next_status = sector + n
        return n

    def _classify(self, flags: Status, past_backing: bool) -> Kind:
        if flags & Status.ZERO:
            return Kind.SKIP if past_backing else Kind.ZERO
        if flags & Status.DATA:
            return Kind.DATA
        return Kind.SKIP if self.rules.target_has_backing else Kind.DATA

    async def requests(self) -> AsyncIterator[Request]:
        """Every request from the start to the end, as qemu-img's workers take them."""
        r, sector = self.rules, 0
        while sector < r.total:
            n, kind = await self.step(sector)
            if kind is Kind.ZERO and not r.min_sparse:
                n, kind = min(n, r.buf), Kind.FILL
            yield Request(sector, n, kind)
            sector += n
