"""VHD dynamic-disk translation: a guest offset to the run of its block.

Each BAT entry is the sector of a block's bitmap; the block's data follows the bitmap.
Sectors of an allocated block are always read from the file (QEMU ignores the bitmap);
a block whose entry is unallocated, or beyond the BAT, reads as zeroes.
"""
from __future__ import annotations

import enum
from array import array
from dataclasses import dataclass

from .layout import SECTOR, UNALLOCATED


class Kind(enum.Enum):
    DATA = "data"
    ZERO = "zero"


@dataclass(frozen=True, slots=True)
class Run:
    guest: int
    length: int
    kind: Kind
    host: int = 0
    bitmap: int = 0         # file offset of the block's sector bitmap (DATA only)


def block_run(bat: array, block_size: int, bitmap_size: int, offset: int,
              length: int) -> Run:
    """The run at ``offset``: to the end of its block or of ``length``."""
    index, within = divmod(offset, block_size)
    n = min(block_size - within, length)
    if index >= len(bat) or bat[index] == UNALLOCATED:
        return Run(offset, n, Kind.ZERO)
    bitmap = SECTOR * bat[index]
    return Run(offset, n, Kind.DATA, bitmap + bitmap_size + within, bitmap)
