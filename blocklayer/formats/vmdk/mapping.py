"""VMDK guest-to-host translation: a guest range as runs of one grain each.

A guest grain's GTE is found through the grain directory: GD[grain // gtes_per_gt]
is the sector of its grain table, and the entry at grain % gtes_per_gt the sector of
the grain (0: unallocated, 1: zeroed when the header allows it).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from ..vdi.shared import Kind, Run
from .layout import GTE_ZEROED, SECTOR, Header


def grain_runs(header: Header, gte: Callable[[int], int], offset: int,
               length: int) -> Iterator[Run]:
    """The runs of ``[offset, offset + length)``, one per grain touched; ``gte(grain)``
    gives a grain's table entry."""
    gb = header.grain_bytes
    pos, end = offset, offset + length
    while pos < end:
        grain, within = divmod(pos, gb)
        n = min(gb - within, end - pos)
        entry = gte(grain)
        if entry == 0 or (entry == GTE_ZEROED and header.zero_grain):
            yield Run(pos, n, Kind.ZERO, 0, grain)
        else:
            yield Run(pos, n, Kind.DATA, entry * SECTOR + within, grain)
        pos += n
