"""Consistency check and repair with the findings, counts and messages of
``qemu-img check`` (QEMU's qcow2_co_check_locked and qcow2_check_refcounts).

1. The snapshot table is read again (with repair: overhanging snapshots and too much
   extra data are dropped).
2. The expected refcount of every host cluster is rebuilt in a numpy array (one
   integer per cluster of the file, no objects per cluster) by walking the header,
   the active L1/L2 tables and the data they reach, every snapshot's tables, the
   snapshot table, the refcount table and blocks, the encryption header and the
   bitmaps.  Entries that are malformed are reported on the way.
3. The refcounts on disk are compared with the expected ones: lower is a corruption,
   higher a leak; repair adjusts them, and refcount structures that cannot be used
   are rebuilt from scratch.
4. The COPIED flags of the active tables are compared with the refcounts.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...core.driver import CheckMode, CheckResult
from ...core.errors import BlockError
from . import layout as L
from .mapping import (CT, L1E_OFFSET_MASK, L2_BITMAP_ALL_ALLOC, L2_BITMAP_ALL_ZEROES,
                      L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO)
from .check_bulk import (Memo, batches, copied_flags_ok, count_batch, l1_is_plain,
                         read_tables)
from .refcount import REFT_OFFSET_MASK, Discard
from .snapshot import EXTRA_V3_MIN, read_table, write_snapshots

if TYPE_CHECKING:
    from .driver import Qcow2Driver

L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_STD_RESERVED_MASK = 0x3F000000000001FE
REFT_RESERVED_MASK = 0x1FF
BME_TABLE_RESERVED_MASK = L.BME_TABLE_RESERVED_MASK
BME_TABLE_OFFSET_MASK = L.BME_TABLE_OFFSET_MASK
BME_TABLE_ALL_ONES = L.BME_TABLE_ALL_ONES
U64 = np.uint64


def _counts_dtype(refcount_bits: int) -> type:
    return np.uint32 if refcount_bits <= 16 else np.uint64


@dataclass
class _Stats:
    allocated: int = 0
    fragmented: int = 0
    compressed: int = 0


class _Check:
    """One run of the refcount check (``calculate`` + ``compare``)."""

    def __init__(self, drv: "Qcow2Driver", res: CheckResult, fix: CheckMode) -> None:
        self.drv = drv
        self.res = res
        self.fix = fix
        self.msg = res.messages
        self.cs = drv.cluster_size
        self.cb = drv.header.cluster_bits
        self.max = drv.refcounts.max
        self.file_len = drv.file.total_bytes
        n = -(-self.file_len // self.cs)
        self.refs: np.ndarray = np.zeros(max(n, 1), _counts_dtype(drv.header.refcount_bits))
        #: the refcount table as on disk (read by :func:`_read_reftable` before a pass)
        self.reftable: np.ndarray = np.zeros(0, np.uint64)
        self.nb_clusters = n
        self.rebuild = False
        self.stats = _Stats()
        #: kept for the COPIED pass when nothing is repaired (None: keep nothing)
        self.memo: Memo | None = None if fix else Memo()

    # ---- the in-memory refcount table ------------------------------------------------
    def _grow(self, last: int) -> None:
        if last >= len(self.refs):
            grown = np.zeros(max(last + 1, len(self.refs) * 2), self.refs.dtype)
            grown[:len(self.refs)] = self.refs
            self.refs = grown
        self.nb_clusters = max(self.nb_clusters, last + 1)

    def inc(self, offset: int, size: int) -> None:
        """QEMU's qcow2_inc_refcounts_imrt: one more reference to every cluster of the
        byte range; a range reaching a cluster or more past the end is refused."""
        if size <= 0:
            return
        if offset + size - self.file_len >= self.cs:
            self.msg.append("ERROR: counting reference for region exceeding the end of the "
                            f"file by one cluster or more: offset {offset:#x} size {size:#x}")
            self.res.corruptions += 1
            return
        first, last = offset >> self.cb, (offset + size - 1) >> self.cb
        self._grow(last)
        seg = self.refs[first:last + 1]
        full = np.flatnonzero(seg >= self.max)
        for k in full.tolist():
            self._overflow(first + k)
        seg[seg < self.max] += 1

    def inc_clusters(self, offsets: np.ndarray) -> None:
        """One more reference to each whole cluster at ``offsets`` (data clusters): in
        bulk, or entry by entry through :meth:`inc` (which says what is wrong in QEMU's
        order) when an offset is unaligned (it then touches two clusters) or beyond the
        end, or a refcount would overflow."""
        if not offsets.size:
            return
        if not ((offsets >= U64(self.file_len)) | ((offsets % U64(self.cs)) != 0)).any():
            idx = (offsets >> U64(self.cb)).astype(np.int64)
            self._grow(int(idx.max()))
            np.add.at(self.refs, idx, 1)
            if not (self.refs[idx] > self.max).any():
                return
            np.subtract.at(self.refs, idx, 1)
        for off in offsets.tolist():
            self.inc(off, self.cs)

    def _overflow(self, index: int) -> None:
        self.msg.append(f"ERROR: overflow cluster offset={index << self.cb:#x}")
        self.msg.append("Use qemu-img amend to increase the refcount entry width or qemu-img "
                        "convert to create a clean copy if the image cannot be opened for "
                        "writing")
        self.res.corruptions += 1

    # ---- calculate_refcounts -----------------------------------------------------------
    async def calculate(self) -> None:
        drv, h = self.drv, self.drv.header
        self.inc(0, self.cs)
        await self.check_l1(h.l1_table_offset, h.l1_size, frag=True, active=True)
        if h.has_data_file and drv.snapshots:
            self.msg.append(f"ERROR {len(drv.snapshots)} snapshots in image with data file")
            self.res.corruptions += 1
        for sn in drv.snapshots:
            if sn.l1_table_offset % self.cs:
                self.msg.append(f"ERROR snapshot {sn.id} ({sn.name}) l1_offset="
                                f"{sn.l1_table_offset:#x}: L1 table is not cluster aligned; "
                                "snapshot table entry corrupted")
                self.res.corruptions += 1
                continue
            if sn.l1_size > L.MAX_L1_SIZE // 8:
                self.msg.append(f"ERROR snapshot {sn.id} ({sn.name}) l1_size={sn.l1_size:#x}"
                                ": L1 table is too large; snapshot table entry corrupted")
                self.res.corruptions += 1
                continue
            await self.check_l1(sn.l1_table_offset, sn.l1_size, frag=False, active=False)
        self.inc(h.snapshots_offset, drv.snapshots_size)
        self.inc(h.refcount_table_offset, len(self.reftable) * 8)
        if h.crypto is not None and h.crypto.length:
            self.inc(h.crypto.offset, h.crypto.length)
        await self.check_bitmaps()
        await self.check_refblocks()

    async def check_l1(self, l1_offset: int, l1_size: int, frag: bool, active: bool) -> None:
        if not l1_size:
            return
        self.inc(l1_offset, l1_size * 8)
        try:
            raw = await self.drv.file.read(l1_offset, l1_size * 8)
        except BlockError:
            self.msg.append("ERROR: I/O error in check_refcounts_l1")
            self.res.check_errors += 1
            raise
        l1 = L.table_as_ndarray(bytes(raw))
        if l1_is_plain(l1, self.cs, self.file_len):
            offsets = (l1[l1 != 0] & U64(L1E_OFFSET_MASK)).tolist()
            for group in batches(offsets, self.cs):
                words = await read_tables(self.drv, group)
                if words is not None and count_batch(self, group, words, frag):
                    if active and self.memo and self.memo.keep(words.nbytes):
                        self.memo.tables[tuple(group)] = words
                    continue
                for l2_off in group:        # something to say: table by table
                    self.inc(l2_off, self.cs)
                    await self.check_l2(l2_off, frag, active)
            return
        for i in np.flatnonzero(l1).tolist():
            e = int(l1[i])
            if e & L1E_RESERVED_MASK:
                self.msg.append(f"ERROR found L1 entry with reserved bits set: {e:x}")
                self.res.corruptions += 1
            l2_off = e & L1E_OFFSET_MASK
            self.inc(l2_off, self.cs)
            if l2_off % self.cs:
                self.msg.append(f"ERROR l2_offset={l2_off:x}: Table is not cluster aligned; "
                                "L1 entry corrupted")
                self.res.corruptions += 1
            await self.check_l2(l2_off, frag, active)

    async def check_l2(self, l2_off: int, frag: bool, active: bool) -> None:
        drv, geo, res, cs = self.drv, self.drv.geo, self.res, self.cs
        try:
            raw = await drv.file.read(l2_off, cs)
        except BlockError:
            self.msg.append("ERROR: I/O error in check_refcounts_l2")
            res.check_errors += 1
            raise
        words = L.table_as_ndarray(bytes(raw))
        if geo.extended_l2:
            ents, bitmaps = words[0::2], words[1::2]
        else:
            ents, bitmaps = words, np.zeros(len(words), U64)
        comp = (ents & U64(OFLAG_COMPRESSED)) != 0
        real = (ents & U64(L2E_OFFSET_MASK)) != 0
        zero = ((ents & U64(OFLAG_ZERO)) != 0) & ~comp & (not geo.extended_l2)
        normal = ~comp & real
        if geo.has_data_file:
            normal |= ~comp & ~zero & ((ents & U64(OFLAG_COPIED)) != 0)
        reserved = ~comp & ((ents & U64(L2E_STD_RESERVED_MASK)) != 0)
        for e in ents[reserved].tolist():
            self.msg.append(f"ERROR found l2 entry with reserved bits set: {e:x}")
        res.corruptions += int(reserved.sum())
        # compressed clusters
        for j in np.flatnonzero(comp).tolist():
            e, b = int(ents[j]), int(bitmaps[j])
            if e & OFLAG_COPIED:
                self.msg.append(f"ERROR: coffset={e & geo.cluster_offset_mask:#x}: copied "
                                "flag must never be set for compressed clusters")
                e &= ~OFLAG_COPIED
                res.corruptions += 1
            if geo.has_data_file:
                self.msg.append(f"ERROR compressed cluster {j} with data file, entry={e:#x}")
                res.corruptions += 1
                continue
            if b:
                self.msg.append(f"ERROR compressed cluster {j} with non-zero subcluster "
                                f"allocation bitmap, entry={e:#x}")
                res.corruptions += 1
                continue
            coffset, csize = geo.compressed(e)
            self.inc(coffset, csize)
            if frag:
                self.stats.allocated += 1
                self.stats.compressed += 1
                self.stats.fragmented += 1
        # allocated (normal and preallocated zero) clusters
        offs = ents & U64(L2E_OFFSET_MASK)
        if geo.extended_l2:
            bad_bm = normal & (((bitmaps >> U64(32)) & bitmaps) != 0)
            for o in offs[bad_bm].tolist():
                self.msg.append(f"ERROR offset={o:x}: Allocated cluster has corrupted "
                                "subcluster allocation bitmap")
            res.corruptions += int(bad_bm.sum())
            bad_un = ~comp & ~normal & ((bitmaps & U64(L2_BITMAP_ALL_ALLOC)) != 0)
            for _ in range(int(bad_un.sum())):
                self.msg.append("ERROR: Unallocated cluster has non-zero subcluster "
                                "allocation map")
            res.corruptions += int(bad_un.sum())
        keep = normal.copy()
        unaligned = normal & ((offs % U64(cs)) != 0)
        for j in np.flatnonzero(unaligned).tolist():
            e, b, o = int(ents[j]), int(bitmaps[j]), int(offs[j])
            res.corruptions += 1
            has_data = bool(b & L2_BITMAP_ALL_ALLOC) if geo.extended_l2 else \
                not e & OFLAG_ZERO
            if has_data:
                self.msg.append(f"ERROR offset={o:x}: Data cluster is not properly aligned; "
                                "L2 entry corrupted.")
                continue
            repairing = bool(self.fix & CheckMode.FIX_ERRORS)
            self.msg.append(f"{'Repairing' if repairing else 'ERROR'} offset={o:x}: "
                            "Preallocated cluster is not properly aligned; L2 entry "
                            "corrupted.")
            if repairing and await self._zero_entry(l2_off, j, b, active):
                keep[j] = False
        if frag:
            n_off = offs[keep]
            self.stats.allocated += int(n_off.size)
            if n_off.size > 1:
                self.stats.fragmented += int((n_off[1:] != n_off[:-1] + U64(cs)).sum())
        if not geo.has_data_file:
            self.inc_clusters(offs[keep])

    async def _zero_entry(self, l2_off: int, index: int, bitmap: int, active: bool) -> bool:
        """QEMU's fix_l2_entry_by_zero: the entry becomes a plain zero cluster."""
        drv, geo = self.drv, self.drv.geo
        if geo.extended_l2:
            bitmap = ((bitmap | (bitmap << 32)) & L2_BITMAP_ALL_ZEROES)
            data = L.build_entries(0, bitmap)
        else:
            data = L.build_entries(OFLAG_ZERO)
        pos = l2_off + index * len(data)
        try:
            await drv.file.write(pos, data)
            await drv.file.flush()
        except BlockError as exc:
            self.msg.append(f"ERROR: Failed to overwrite L2 table entry: {exc.strerror}")
            self.res.check_errors += 1
            return False
        drv.l2_cache.discard(l2_off)
        self.res.corruptions -= 1
        self.res.corruptions_fixed += 1
        return True

    async def check_bitmaps(self) -> None:
        """QEMU's qcow2_check_bitmaps_refcounts (only a directory the autoclear bit
        vouches for counts)."""
        from .bitmap import load_directory
        h = self.drv.header
        ext = h.bitmaps
        if ext is None or not h.autoclear_features & L.AUTOCLEAR_BITMAPS or not ext.nb_bitmaps:
            return
        self.inc(ext.directory_offset, ext.directory_size)
        try:
            bitmaps = await load_directory(self.drv)
        except BlockError as exc:
            self.msg.append(f"ERROR bitmap directory: {exc.message}")
            self.res.corruptions += 1
            return
        for bm in bitmaps:
            self.inc(bm.table_offset, bm.table_size * 8)
            try:
                table = L.as_ndarray(await bm.read_table(self.drv))
            except BlockError:
                self.res.corruptions += 1
                return
            offs = table & U64(BME_TABLE_OFFSET_MASK)
            bad = ((table & U64(BME_TABLE_RESERVED_MASK)) != 0) | \
                ((offs != 0) & (((table & U64(BME_TABLE_ALL_ONES)) != 0)
                                | ((offs % U64(self.cs)) != 0)))
            self.res.corruptions += int(bad.sum())
            good = offs[~bad]
            for o in good[good != 0].tolist():
                self.inc(o, self.cs)

    async def check_refblocks(self) -> None:
        res = self.res
        repairing = bool(self.fix & CheckMode.FIX_ERRORS)
        for i, raw in enumerate(self.reftable.tolist()):
            off = raw & REFT_OFFSET_MASK
            cluster = off >> self.cb
            if raw & REFT_RESERVED_MASK:
                self.msg.append(f"ERROR refcount table entry {i} has reserved bits set")
                res.corruptions += 1
                self.rebuild = True
                continue
            if off % self.cs:
                self.msg.append(f"ERROR refcount block {i} is not cluster aligned; refcount "
                                "table entry corrupted")
                res.corruptions += 1
                self.rebuild = True
                continue
            if cluster >= self.nb_clusters:
                res.corruptions += 1
                self.msg.append(f"{'Repairing' if repairing else 'ERROR'} refcount block {i} "
                                "is outside image")
                if repairing:
                    try:
                        await self.drv.file.truncate(off + self.cs)
                        self.file_len = self.drv.file.total_bytes
                        self._grow(-(-self.file_len // self.cs) - 1)
                    except BlockError as exc:
                        self.rebuild = True
                        self.msg.append(f"ERROR could not resize image: {exc.strerror}")
                        continue
                    res.corruptions -= 1
                    res.corruptions_fixed += 1
                    self.inc(off, self.cs)
                continue
            if off:
                self.inc(off, self.cs)
                if int(self.refs[cluster]) != 1:
                    self.msg.append(f"ERROR refcount block {i} refcount="
                                    f"{int(self.refs[cluster])}")
                    res.corruptions += 1
                    self.rebuild = True

    # ---- compare_refcounts --------------------------------------------------------------
    async def on_disk(self, start: int, count: int) -> np.ndarray | None:
        """Refcounts of the clusters ``[start, start+count)`` as the image has them
        (None where the refcount block cannot be used)."""
        rc = self.drv.refcounts
        i = start >> rc.block_bits
        raw = int(self.reftable[i]) if i < len(self.reftable) else 0
        if raw & REFT_OFFSET_MASK and (raw & REFT_OFFSET_MASK) % self.cs:
            return None
        return L.as_ndarray(await rc.get_run(start, count))

    async def compare(self, fix: CheckMode) -> int:
        """Compare (and with ``fix`` adjust) every cluster; returns the highest cluster
        in use."""
        res, rc = self.res, self.drv.refcounts
        highest = 0
        i, n = 0, self.nb_clusters
        while i < n:
            span = min(n - i, rc.block_entries - (i & (rc.block_entries - 1)))
            disk = await self.on_disk(i, span)
            want = self.refs[i:i + span].astype(U64)
            if disk is None:
                await self._signal_corrupt(i)
                for k in range(span):
                    self.msg.append(f"Can't get refcount for cluster {i + k}: "
                                    "Input/output error")
                res.check_errors += span
                i += span
                continue
            if (self.memo and len(disk) == rc.block_entries and not fix
                    and self.memo.keep(disk.nbytes)):
                self.memo.blocks[i >> rc.block_bits] = disk
            used = np.flatnonzero((disk != 0) | (want != 0))
            if used.size:
                highest = i + int(used[-1])
            for k in np.flatnonzero(disk != want).tolist():
                await self._mismatch(i + k, int(disk[k]), int(want[k]), fix)
            i += span
        return highest

    async def _signal_corrupt(self, cluster: int) -> None:
        """QEMU's qcow2_signal_corruption for an unusable refcount block: reported
        once; a writable image gets the corrupt bit."""
        drv = self.drv
        if drv.corrupt_reported:
            return
        drv.corrupt_reported = True
        i = cluster >> drv.refcounts.block_bits
        what = (f"Refblock offset {int(self.reftable[i]) & REFT_OFFSET_MASK:#x} unaligned "
                f"(reftable index: {i:#x})")
        if drv.node.read_only:
            self.msg.append(f"qcow2: Image is corrupt: {what}; further non-fatal "
                            "corruption events will be suppressed")
            return
        self.msg.append(f"qcow2: Marking image as corrupt: {what}; further corruption "
                        "events will be suppressed")
        await drv.set_incompatible(drv.header.incompatible_features | L.INCOMPAT_CORRUPT)

    async def _mismatch(self, index: int, refcount: int, reference: int,
                        fix: CheckMode) -> None:
        res = self.res
        fixed: str | None = None
        if refcount == 0:
            self.rebuild = True
        elif refcount > reference and fix & CheckMode.FIX_LEAKS:
            fixed = "leaks_fixed"
        elif refcount < reference and fix & CheckMode.FIX_ERRORS:
            fixed = "corruptions_fixed"
        head = "Repairing" if fixed else "ERROR" if refcount < reference else "Leaked"
        self.msg.append(f"{head} cluster {index} refcount={refcount} reference={reference}")
        if fixed:
            try:
                await self.drv.refcounts.update(index << self.cb, 1, reference - refcount,
                                                Discard.ALWAYS)
                setattr(res, fixed, getattr(res, fixed) + 1)
                return
            except BlockError:
                pass
        if refcount < reference:
            res.corruptions += 1
        else:
            res.leaks += 1


async def _read_reftable(drv: "Qcow2Driver") -> np.ndarray:
    h = drv.header
    raw = await drv.file.read(h.refcount_table_offset,
                              h.refcount_table_clusters * drv.cluster_size)
    return L.table_as_ndarray(bytes(raw))


async def check_refcounts(drv: "Qcow2Driver", res: CheckResult, fix: CheckMode) -> None:
    """QEMU's qcow2_check_refcounts."""
    cs = drv.cluster_size
    res.total_clusters = -(-drv.header.size // cs)
    c = _Check(drv, res, fix)
    c.reftable = await _read_reftable(drv)
    await c.calculate()
    pre = _copy(res)
    highest = await c.compare(CheckMode.NONE)
    if c.rebuild and fix & CheckMode.FIX_ERRORS:
        old = _copy(res)
        res.messages.append("Rebuilding refcount structure")
        expected = c.refs[:c.nb_clusters].astype(U64)
        await drv.refcounts.rebuild(expected)
        res.corruptions = res.leaks = 0
        c = _Check(drv, res, CheckMode.NONE)
        c.reftable = await _read_reftable(drv)
        await c.calculate()
        fresh_leaks = 0
        if fix & CheckMode.FIX_LEAKS:
            saved = _copy(res)
            scratch = CheckResult(messages=res.messages)
            c.res = scratch
            highest = await c.compare(CheckMode.FIX_LEAKS)
            if c.rebuild:
                res.messages.append("ERROR rebuilt refcount structure is still broken")
            fresh_leaks = scratch.leaks
            _restore(res, saved)
            c.res = res
        if res.corruptions < old.corruptions:
            res.corruptions_fixed += old.corruptions - res.corruptions
        if res.leaks < old.leaks:
            res.leaks_fixed += old.leaks - res.leaks
        res.leaks += fresh_leaks
    elif fix:
        if c.rebuild:
            res.messages.append("ERROR need to rebuild refcount structures")
            res.check_errors += 1
            raise BlockError(os.strerror(errno.EIO), errno.EIO)
        if res.leaks or res.corruptions:
            _restore(res, pre)
            highest = await c.compare(fix)
    res.allocated_clusters = c.stats.allocated
    res.fragmented_clusters = c.stats.fragmented
    res.compressed_clusters = c.stats.compressed
    await check_oflag_copied(drv, res, fix, c.memo if not fix else None)
    res.image_end_offset = (highest + 1) * cs


def _copy(res: CheckResult) -> CheckResult:
    return CheckResult(res.corruptions, res.leaks, res.check_errors, res.corruptions_fixed,
                       res.leaks_fixed, messages=res.messages)


def _restore(res: CheckResult, saved: CheckResult) -> None:
    res.corruptions, res.leaks, res.check_errors = (saved.corruptions, saved.leaks,
                                                    saved.check_errors)
    res.corruptions_fixed, res.leaks_fixed = saved.corruptions_fixed, saved.leaks_fixed


async def check_oflag_copied(drv: "Qcow2Driver", res: CheckResult, fix: CheckMode,
                             memo: Memo | None = None) -> None:
    """COPIED in the active L1 and L2 tables must say refcount == 1."""
    geo, rc, cs = drv.geo, drv.refcounts, drv.cluster_size
    if fix & CheckMode.FIX_ERRORS:
        repair = True
    elif fix & CheckMode.FIX_LEAKS:
        repair = not (res.check_errors or res.corruptions or res.leaks)
    else:
        repair = False
    head = "Repairing" if repair else "ERROR"
    l1 = L.as_ndarray(drv.mapping.l1)            # a view: repairs change the table
    reftable = await _read_reftable(drv)
    if await copied_flags_ok(drv, reftable, memo):
        return                  # nothing to say or repair (checked in bulk)

    async def refcount(off: int) -> int | None:
        i = (off >> geo.cluster_bits) >> rc.block_bits
        raw = int(reftable[i]) if i < len(reftable) else 0
        if raw & REFT_OFFSET_MASK and (raw & REFT_OFFSET_MASK) % cs:
            return None
        return await rc.get(off >> geo.cluster_bits)

    for i in np.flatnonzero(l1 & U64(L1E_OFFSET_MASK)).tolist():
        l1e = int(l1[i])
        l2_off = l1e & L1E_OFFSET_MASK
        r = await refcount(l2_off)
        if r is None:
            continue
        if (r == 1) != bool(l1e & OFLAG_COPIED):
            res.corruptions += 1
            res.messages.append(f"{head} OFLAG_COPIED L2 cluster: l1_index={i} "
                                f"l1_entry={l1e:x} refcount={r}")
            if repair:
                l1[i] = (l1e | OFLAG_COPIED) if r == 1 else (l1e & ~OFLAG_COPIED)
                try:
                    await drv.write_l1_entry(i)
                except BlockError:
                    res.check_errors += 1
                    return
                res.corruptions -= 1
                res.corruptions_fixed += 1
        try:
            raw = bytearray(await drv.file.read(l2_off, cs))
        except BlockError as exc:
            res.messages.append(f"ERROR: Could not read L2 table: {exc.strerror}")
            res.check_errors += 1
            return
        words = np.frombuffer(raw, ">u8")
        step = 2 if geo.extended_l2 else 1
        dirty = 0
        for j in np.flatnonzero(words[0::step]).tolist():
            e = int(words[j * step])
            if geo.cluster_type(e) not in (CT.NORMAL, CT.ZERO_ALLOC):
                continue
            if drv.header.has_data_file:
                r = 1
            else:
                r = await refcount(e & L2E_OFFSET_MASK)
                if r is None:
                    continue
            if (r == 1) != bool(e & OFLAG_COPIED):
                res.corruptions += 1
                res.messages.append(f"{head} OFLAG_COPIED data cluster: l2_entry={e:x} "
                                    f"refcount={r}")
                if repair:
                    words[j * step] = (e | OFLAG_COPIED) if r == 1 else (e & ~OFLAG_COPIED)
                    dirty += 1
        if dirty:
            try:
                await drv.file.write(l2_off, bytes(raw))
            except BlockError as exc:
                res.messages.append(f"ERROR: Could not write L2 table: {exc.strerror}")
                res.check_errors += 1
                return
            drv.l2_cache.discard(l2_off)
            res.corruptions -= dirty
            res.corruptions_fixed += dirty


async def check_snapshot_table(drv: "Qcow2Driver", res: CheckResult,
                               fix: CheckMode) -> bool:
    """QEMU's qcow2_check_read_snapshot_table; False if the table could not be read."""
    h = drv.header
    names = ("nb_snapshots", "snapshots_offset")
    start, length = L.header_field_span(names)
    nb, off = L.parse_header_fields(bytes(await drv.file.read(start, length)), names)
    repairing = bool(fix & CheckMode.FIX_ERRORS)
    reduced = 0
    if nb > L.MAX_SNAPSHOTS and repairing:
        res.messages.append(f"Discarding {nb - L.MAX_SNAPSHOTS} overhanging snapshots")
        reduced += nb - L.MAX_SNAPSHOTS
        nb = L.MAX_SNAPSHOTS
    drv.snapshots, drv.snapshots_size = [], 0
    h.nb_snapshots, h.snapshots_offset = 0, 0
    try:
        L.validate_table(off, nb, L.SNAPSHOT_HEADER_SIZE,
                         L.SNAPSHOT_HEADER_SIZE * L.MAX_SNAPSHOTS, drv.cluster_size,
                         "snapshot table")
    except BlockError as exc:
        res.check_errors += 1
        res.messages.append(f"ERROR {exc.message}")
        if nb > L.MAX_SNAPSHOTS:
            res.messages.append(f"You can force-remove all {nb - L.MAX_SNAPSHOTS} "
                                "overhanging snapshots with qemu-img check -r all")
        return False
    try:
        got = await read_table(drv.file, off, nb, h.size, repair=repairing)
    except BlockError as exc:
        res.check_errors += 1
        res.messages.append(f"ERROR failed to read the snapshot table: {exc.message}")
        return False
    res.messages.extend(got.messages or [])
    reduced += got.clusters_reduced
    drv.snapshots, drv.snapshots_size = got.snapshots, got.size
    h.nb_snapshots, h.snapshots_offset = len(got.snapshots), off
    res.corruptions += reduced + got.extra_data_dropped
    if reduced:
        await drv.write_header_fields(nb_snapshots=len(got.snapshots))
        res.corruptions_fixed += reduced
        res.corruptions -= reduced
    if h.version >= 3:
        for i, sn in enumerate(drv.snapshots):
            if sn.extra_data_size < EXTRA_V3_MIN:
                res.corruptions += 1
                res.messages.append(f"{'Repairing' if repairing else 'ERROR'} snapshot table "
                                    f"entry {i} is incomplete")
    return True


async def check(drv: "Qcow2Driver", fix: CheckMode) -> CheckResult:
    """QEMU's qcow2_co_check_locked."""
    result = CheckResult()
    snap = CheckResult(messages=result.messages)
    await drv.flush_caches()
    async with drv.lock:
        drv.l2_cache.clear()
        if not await check_snapshot_table(drv, snap, fix):
            _add(result, snap)
            return result
        refs = CheckResult(messages=result.messages)
        try:
            await check_refcounts(drv, refs, fix)
        finally:
            _add(result, refs, stats=True)
        if snap.corruptions and fix & CheckMode.FIX_ERRORS:
            try:
                await write_snapshots(drv)
            except BlockError as exc:
                snap.check_errors += 1
                result.messages.append(f"ERROR failed to update snapshot table: "
                                       f"{exc.strerror}")
                _add(result, snap)
                return result
            snap.corruptions_fixed += snap.corruptions
            snap.corruptions = 0
        _add(result, snap)
        await drv.l2_cache.write_back()
        await drv.rb_cache.flush()
    if fix and not result.check_errors and not result.corruptions:
        h = drv.header
        clean = h.incompatible_features & ~(L.INCOMPAT_DIRTY | L.INCOMPAT_CORRUPT)
        if clean != h.incompatible_features:
            await drv.file.flush()
            await drv.set_incompatible(clean)
    return result


def _add(out: CheckResult, src: CheckResult, stats: bool = False) -> None:
    out.corruptions += src.corruptions
    out.leaks += src.leaks
    out.check_errors += src.check_errors
    out.corruptions_fixed += src.corruptions_fixed
    out.leaks_fixed += src.leaks_fixed
    if stats:
        out.image_end_offset = src.image_end_offset
        out.total_clusters = src.total_clusters
        out.allocated_clusters = src.allocated_clusters
        out.fragmented_clusters = src.fragmented_clusters
        out.compressed_clusters = src.compressed_clusters
