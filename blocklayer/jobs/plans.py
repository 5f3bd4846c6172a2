"""Plans for the copy engine that several users share: which chunks of a range to copy,
decided by the block status answers that matter to them.

A plan is an async iterator of :class:`~blocklayer.jobs.copy.Chunk` covering its range
in order; SKIP chunks stand for what needs nothing written (progress still counts
them).  convert's plan, a model of qemu-img's, is its own
(:mod:`blocklayer.tools.img.convert_plan`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator

from .copy import Chunk, Kind

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

CHUNK = 2 << 20                 # largest chunk of data (one buffer)
ALLOCATION_RUN = 1 << 30        # largest allocation run asked for at once


async def allocated_above(top: "BlockNode", base: "BlockNode | None", start: int, end: int,
                          chunk: int = CHUNK) -> AsyncIterator[Chunk]:
    """commit's (and stream's) plan: what the layers from ``top`` down to above
    ``base`` provide in ``[start, end)``, as DATA or ZERO chunks of at most ``chunk``
    bytes; what they leave to ``base`` as SKIP."""
    off = start
    while off < end:
        depth, n = await top.is_allocated_above(base, off, min(end - off, ALLOCATION_RUN))
        n = max(n, 1)
        stop = off + n
        if not depth:
            yield Chunk(off, n, Kind.SKIP)
        pos = off
        while depth and pos < stop:
            st = await top.block_status_above(base, pos, min(stop - pos, chunk), True)
            m = max(st.length, 1)
            yield Chunk(pos, m, Kind.ZERO if st.zero else Kind.DATA)
            pos += m
        off = stop
