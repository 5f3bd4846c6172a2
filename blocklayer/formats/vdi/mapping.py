"""VDI guest-to-host translation: a guest range as runs of one block each.

The block map has one entry per 1 MiB block: an index into the data area, or
UNALLOCATED / DISCARDED (both read as zeroes).  A run never crosses a block, because
neighbouring guest blocks are rarely neighbours in the file.
"""
from __future__ import annotations

from array import array
from typing import Iterator

from .layout import Header, is_allocated
from .shared import Kind, Run


def block_runs(header: Header, bmap: array, offset: int, length: int) -> Iterator[Run]:
    """The runs of ``[offset, offset + length)``, one per block touched."""
    bs = header.block_size
    pos, end = offset, offset + length
    while pos < end:
        block, within = divmod(pos, bs)
        n = min(bs - within, end - pos)
        entry = bmap[block]
        if is_allocated(entry):
            yield Run(pos, n, Kind.DATA, header.data_offset(entry) + within, block)
        else:
            yield Run(pos, n, Kind.ZERO, 0, block)
        pos += n
