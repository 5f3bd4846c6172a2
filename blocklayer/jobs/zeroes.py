"""Zero detection in a buffer about to be written, as qemu-img's ``-S``.

:func:`sparse_pieces` is ``is_allocated_sectors_min`` as ``convert_co_write`` loops
over it: which sectors of one data request are written and which zeroed (a change of
state moved to an alignment boundary where that saves a read-modify-write; zero runs
shorter than ``min_sparse`` after data stay in the data).  :class:`ZeroDetect` cuts a
buffer into the pieces a copy writes: ``(offset, length, buffer)`` to write,
``(offset, length, None)`` to zero.  Pure arithmetic on sector counts.
"""
from __future__ import annotations

import bisect
from typing import Sequence

SECTOR = 512

#: ``(offset, length, buffer)``: write the buffer; ``(offset, length, None)``: zero
Piece = tuple[int, int, "memoryview | bytes | bytearray | None"]


class _Runs:
    """Runs of equal sectors (zero or not) in a request."""

    def __init__(self, zero: Sequence[bool], sector: int, alignment: int) -> None:
        self.zero = zero
        self.n = len(zero)
        self.ends = [i for i in range(1, self.n) if zero[i] != zero[i - 1]] + [self.n]
        self.sector = sector
        self.alignment = alignment

    def same(self, pos: int, n: int) -> tuple[int, bool]:
        """``is_allocated_sectors``: how many sectors from ``pos`` (at most ``n``) go
        together, and whether they are data; a change of state is moved to an
        alignment boundary where that saves a read-modify-write."""
        is_zero = bool(self.zero[pos])
        i = min(self.ends[bisect.bisect_right(self.ends, pos)], pos + n) - pos
        if i == n:
            return i, not is_zero
        a = self.alignment
        tail = (self.sector + pos + i) & (a - 1)
        if tail:
            if is_zero and i <= tail:
                is_zero = False
            i = min(i + a - tail, n) if not is_zero else i - tail
        return i, not is_zero

    def piece(self, pos: int, n: int, min_sparse: int) -> tuple[int, bool]:
        """``is_allocated_sectors_min``: after data, zero runs shorter than
        ``min_sparse`` sectors stay in the data."""
        min_sparse = min(min_sparse, n)
        count, data = self.same(pos, n)
        if not data:
            return count, False
        used = checked = count
        while checked < n:
            m, data = self.same(pos + checked, n - checked)
            checked += m
            if data:
                used = checked
            elif m >= min_sparse:
                break
        return used, True


def sparse_pieces(zero: Sequence[bool], sector: int, alignment: int,
                  min_sparse: int) -> list[tuple[int, int, bool]]:
    """``(first sector, sectors, is data)`` of a data request starting at ``sector``
    whose sectors are ``zero`` or not, in order: what qemu-img writes and what it
    zeroes.  ``alignment`` is a power of two (sectors)."""
    runs = _Runs(zero, sector, alignment)
    out, pos = [], 0
    while pos < runs.n:
        count, data = runs.piece(pos, runs.n - pos, min_sparse)
        out.append((sector + pos, count, data))
        pos += count
    return out


def starts_nonzero(data: bytes | bytearray | memoryview, head: int, block: int) -> bool:
    """True if every whole ``block`` of ``data`` after ``head`` bytes starts with a
    non-zero 8-byte word (so none of them is all zeroes)."""
    n = (len(data) - head) // block
    if n <= 0 or head % 8 or block % 8:
        return False
    firsts = memoryview(data)[head:head + n * block].cast("Q")[::block // 8].tobytes()
    zero = bytes(8)
    i = firsts.find(zero)
    while i >= 0 and i % 8:            # a match across two words is not a zero word
        i = firsts.find(zero, i + 1)
    return i < 0


def zero_sectors(data: bytes | bytearray) -> list[bool]:
    """Whether each 512-byte sector of ``data`` is all zeroes (compared in place, at C
    speed, without numpy)."""
    zero = bytes(SECTOR)
    return [data.startswith(zero, k) for k in range(0, len(data), SECTOR)]


def pow2floor(n: int) -> int:
    return 1 << (n.bit_length() - 1) if n > 0 else 0


class ZeroDetect:
    """``-S min_sparse``: zero runs of at least ``min_sparse`` bytes in a buffer are
    zeroed instead of written, their edges moved to ``alignment`` bytes (a power of
    two of sectors: the larger of ``min_sparse`` rounded down to one and the target's
    request alignment).  ``min_sparse`` 0: everything is written."""

    def __init__(self, min_sparse: int, request_alignment: int = 1) -> None:
        self.min_sparse = min_sparse
        self.alignment = max(pow2floor(min_sparse // SECTOR),
                             -(-request_alignment // SECTOR))

    def pieces(self, offset: int, data: bytes | bytearray) -> list[Piece]:
        """``data`` (to go at ``offset``, a whole sector) cut into pieces to write and
        to zero, as qemu-img cuts a data request."""
        mv = memoryview(data)
        if not self.min_sparse or starts_nonzero(data, 0, SECTOR):
            return [(offset, len(data), mv)]      # no zero sector: nothing to skip
        out: list[Piece] = []
        for sector, count, is_data in sparse_pieces(zero_sectors(data), offset // SECTOR,
                                                    self.alignment,
                                                    self.min_sparse // SECTOR):
            a, n = sector * SECTOR - offset, count * SECTOR
            out.append((offset + a, n, mv[a:a + n] if is_data else None))
        return out
