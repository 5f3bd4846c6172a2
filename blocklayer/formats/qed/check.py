"""QED consistency check and repair, with the same findings as ``qemu-img check``.

The walk starts at the L1 table and visits every L2 table.  A cluster referenced twice
is a corruption; a table or data offset that is misaligned, inside the header or past
the end of the file is a corruption that repair clears (the guest then reads the
backing file or zeroes there); a cluster nobody references is a leak.  As in QEMU,
leaks are counted but not reclaimed (QED has no free-space map to return them to), and
a repair that leaves no corruption clears the need-check bit.
"""
from __future__ import annotations

from array import array

from ...core.driver import CheckResult
from ...core.errors import BlockError
from .layout import F_NEED_CHECK, UNALLOCATED, ZERO_CLUSTER
from .mapping import QedImage


class _Walk:
    def __init__(self, img: QedImage, result: CheckResult, fix: bool) -> None:
        self.img = img
        self.geo = img.geo
        self.result = result
        self.fix = fix
        self.used = bytearray(img.file_size // img.geo.cluster_size)

    def mark_used(self, offset: int, n: int) -> bool:
        """Record ``n`` clusters from ``offset`` as referenced; False if any already was."""
        first = offset // self.geo.cluster_size
        twice = sum(self.used[first:first + n])
        self.used[first:first + n] = b"\x01" * n
        self.result.corruptions += twice
        return twice == 0

    def check_l2(self, table: array) -> int:
        """Count allocation, fragmentation and bad offsets of one L2 table; with
        ``fix`` clear the bad ones.  Returns how many were bad."""
        geo, res, size = self.geo, self.result, self.img.file_size
        bad = 0
        last = 0
        for i in [i for i, e in enumerate(table) if e not in (UNALLOCATED, ZERO_CLUSTER)]:
            offset = table[i]
            res.allocated_clusters += 1
            if last and last + geo.cluster_size != offset:
                res.fragmented_clusters += 1
            last = offset
            if not geo.cluster_offset_valid(offset, size):
                if self.fix:
                    table[i] = UNALLOCATED
                    res.corruptions_fixed += 1
                else:
                    res.corruptions += 1
                bad += 1
                continue
            self.mark_used(offset, 1)
        return bad

    async def check_l1(self) -> bool:
        """Walk every L2 table; False if some could not be read or written."""
        img, geo, res = self.img, self.geo, self.result
        ok = True
        bad_l2 = 0
        for i in [i for i, e in enumerate(img.l1) if e != UNALLOCATED]:
            offset = img.l1[i]
            if not geo.table_offset_valid(offset, img.file_size):
                if self.fix:
                    img.l1[i] = UNALLOCATED
                    res.corruptions_fixed += 1
                else:
                    res.corruptions += 1
                bad_l2 += 1
                continue
            if not self.mark_used(offset, geo.table_size):
                continue
            try:
                entry = await img.l2_table(offset)
            except BlockError:
                res.check_errors += 1
                ok = False
                continue
            try:
                if self.check_l2(entry.table) and self.fix:
                    await img.write_l2(entry)
            except BlockError:
                res.check_errors += 1
                ok = False
            finally:
                img.cache.release(entry)
        if bad_l2 and self.fix:
            try:
                await img.write_l1()
            except BlockError:
                res.check_errors += 1
                ok = False
        return ok

    def count_leaks(self) -> None:
        start = self.geo.header_size
        self.result.leaks += self.used[start:].count(0)


async def check_image(img: QedImage, fix: bool) -> CheckResult:
    """Check (and with ``fix`` repair) ``img``; the caller keeps allocations out."""
    geo = img.geo
    result = CheckResult(total_clusters=geo.bytes_to_clusters(img.header.image_size))
    walk = _Walk(img, result, fix)
    walk.mark_used(img.header.l1_table_offset, geo.table_size)
    if await walk.check_l1():
        walk.count_leaks()          # only when the whole image could be walked
        if fix:
            await _mark_clean(img, result)
    return result


async def _mark_clean(img: QedImage, result: CheckResult) -> None:
    if result.corruptions or result.check_errors or not img.header.has(F_NEED_CHECK):
        return
    await img.file.flush()          # the fixes reach the disk before the bit goes
    img.header = img.header.with_(features=img.header.features & ~F_NEED_CHECK)
    await img.write_header()
    await img.file.flush()
