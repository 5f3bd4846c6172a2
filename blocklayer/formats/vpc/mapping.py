"""VHD dynamic-disk translation: a guest offset to the run of its block.

Each BAT entry is the sector of a block's bitmap; the block's data follows the bitmap.
Sectors of an allocated block are always read from the file (QEMU ignores the bitmap);
a block whose entry is unallocated, or beyond the BAT, reads as zeroes.
"""
from __future__ import annotations

from array import array

from ..vdi.shared import Kind, Run
from .layout import SECTOR, UNALLOCATED


def block_run(bat: array, block_size: int, bitmap_size: int, offset: int,
              length: int) -> Run:
    """The run at ``offset``: to the end of its block or of ``length`` (``block`` is the
    BAT index)."""
    index, within = divmod(offset, block_size)
    n = min(block_size - within, length)
    if index >= len(bat) or bat[index] == UNALLOCATED:
        return Run(offset, n, Kind.ZERO, 0, index)
    return Run(offset, n, Kind.DATA, SECTOR * bat[index] + bitmap_size + within, index)
