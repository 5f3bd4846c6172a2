"""The bulk passes of ``check``: many L2 tables at once, one vectorised pass each.

:mod:`.check` walks L2 tables one at a time and says what it finds in QEMU's words and
order.  On a healthy image there is nothing to say, so these passes read a batch of L2
tables (bounded by :data:`BATCH_BYTES`), decide with whole-array operations whether
anything in the batch needs a word or a repair, and only then either apply the batch
(refcounts counted with ``np.add.at``, statistics summed) or hand the batch, untouched,
to the per-table code, which then says exactly what it always said.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...core.errors import BlockError
from . import layout as L
from .mapping import (L1E_OFFSET_MASK, L2_BITMAP_ALL_ALLOC, L2E_OFFSET_MASK, OFLAG_COMPRESSED,
                      OFLAG_COPIED, OFLAG_ZERO)
from .refcount import REFT_OFFSET_MASK

if TYPE_CHECKING:
    from .check import _Check
    from .driver import Qcow2Driver

U64 = np.uint64
#: L2 table bytes read and judged at once (memory stays a small multiple of this)
BATCH_BYTES = 4 << 20
#: what a plain check (no repair) keeps of its first pass for the COPIED pass
MEMO_BYTES = 64 << 20


class Memo:
    """L2 tables and refcount blocks a check without repairs has read, kept (up to
    MEMO_BYTES) for the COPIED pass, which would otherwise read them again."""

    def __init__(self) -> None:
        self.tables: dict[tuple[int, ...], np.ndarray] = {}
        self.blocks: dict[int, np.ndarray] = {}
        self.size = 0

    def keep(self, nbytes: int) -> bool:
        if self.size + nbytes > MEMO_BYTES:
            return False
        self.size += nbytes
        return True
L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_STD_RESERVED_MASK = 0x3F000000000001FE


def batches(offsets: list[int], cluster_size: int) -> list[list[int]]:
    """``offsets`` of tables in groups of at most BATCH_BYTES."""
    per = max(BATCH_BYTES // cluster_size, 1)
    return [offsets[i:i + per] for i in range(0, len(offsets), per)]


async def read_tables(drv: "Qcow2Driver", offsets: list[int]) -> np.ndarray | None:
    """The tables at ``offsets`` as one native uint64 array (None on a read error: the
    per-table code reads again and reports it)."""
    cs = drv.cluster_size
    buf = bytearray(len(offsets) * cs)
    try:
        for k, off in enumerate(offsets):
            buf[k * cs:(k + 1) * cs] = await drv.file.read(off, cs)
    except BlockError:
        return None
    return L.table_as_ndarray(buf)


def l1_is_plain(l1: np.ndarray, cs: int, file_len: int) -> bool:
    """No L1 entry the per-table code would say anything about."""
    nz = l1[l1 != 0]
    offs = nz & U64(L1E_OFFSET_MASK)
    return not (((nz & U64(L1E_RESERVED_MASK)) != 0).any()
                or ((offs % U64(cs)) != 0).any() or (offs == 0).any()
                or (offs >= U64(file_len)).any())


def count_batch(c: "_Check", l2_offs: list[int], words: np.ndarray, frag: bool) -> bool:
    """Count the references of a batch of healthy L2 tables (and the tables themselves)
    into ``c.refs``; False, with nothing changed, if anything needs the per-table code."""
    geo, cs, cb = c.drv.geo, c.cs, c.cb
    if geo.extended_l2:
        ents, bitmaps = words[0::2], words[1::2]
    else:
        ents, bitmaps = words, None
    comp = (ents & U64(OFLAG_COMPRESSED)) != 0
    offs = ents & U64(L2E_OFFSET_MASK)
    real = offs != 0
    normal = ~comp & real
    if geo.has_data_file:
        copied = (ents & U64(OFLAG_COPIED)) != 0
        zero = ((ents & U64(OFLAG_ZERO)) != 0) if not geo.extended_l2 else False
        normal |= ~comp & ~zero & copied
    if ((~comp & ((ents & U64(L2E_STD_RESERVED_MASK)) != 0)).any()
            or (normal & ((offs % U64(cs)) != 0)).any()):
        return False
    if bitmaps is not None:
        if (normal & (((bitmaps >> U64(32)) & bitmaps) != 0)).any() \
                or (~comp & ~normal & ((bitmaps & U64(L2_BITMAP_ALL_ALLOC)) != 0)).any():
            return False
    parts = [np.array(l2_offs, U64) >> U64(cb)]
    n_comp = 0
    if comp.any():
        if geo.has_data_file:
            return False
        ce = ents[comp]
        if ((ce & U64(OFLAG_COPIED)) != 0).any() or (bitmaps is not None
                                                     and (bitmaps[comp] != 0).any()):
            return False
        coffset = ce & U64(geo.cluster_offset_mask)
        nb = ((ce >> U64(geo.csize_shift)) & U64(geo.csize_mask)) + U64(1)
        csize = nb * U64(512) - (coffset & U64(511))
        end = coffset + csize
        if (end >= U64(c.file_len + cs)).any():
            return False        # "exceeding the end of the file" (said by inc)
        first, last = coffset >> U64(cb), (end - U64(1)) >> U64(cb)
        span = int((last - first).max())
        for k in range(span + 1):
            parts.append((first + U64(k))[first + U64(k) <= last])
        n_comp = int(ce.size)
    data = offs[normal]
    if not geo.has_data_file:
        if (data >= U64(c.file_len)).any():
            return False
        parts.append(data >> U64(cb))
    idx = np.concatenate(parts).astype(np.int64)
    if idx.size:
        c._grow(int(idx.max()))
        np.add.at(c.refs, idx, 1)
        if (c.refs[idx] > c.max).any():         # overflow: the per-table code says it
            np.subtract.at(c.refs, idx, 1)
            return False
    if frag:
        st = c.stats
        st.allocated += int(data.size) + n_comp
        st.compressed += n_comp
        st.fragmented += n_comp
        if data.size > 1:
            pos = np.flatnonzero(normal)
            table = pos // geo.l2_entries
            jump = (data[1:] != data[:-1] + U64(cs)) & (table[1:] == table[:-1])
            st.fragmented += int(jump.sum())
    return True


class DiskRefcounts:
    """On-disk refcounts of many clusters at once (whole refcount blocks, remembered
    for one pass; refcounts do not change while the COPIED flags are compared)."""

    def __init__(self, drv: "Qcow2Driver", reftable: np.ndarray,
                 known: dict[int, np.ndarray] | None = None) -> None:
        self.rc = drv.refcounts
        self.cs = drv.cluster_size
        self.reftable = reftable
        self.known = known or {}
        self.blocks: dict[int, np.ndarray | None] = {}

    async def get(self, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(refcounts, usable) of ``clusters``; unusable where the refcount block is
        unaligned (QEMU reports those elsewhere and skips them here)."""
        rc = self.rc
        out = np.zeros(len(clusters), U64)
        usable = np.ones(len(clusters), bool)
        order = np.argsort(clusters, kind="stable")
        blk = clusters[order] >> U64(rc.block_bits)
        bounds = np.flatnonzero(np.diff(blk)) + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(blk)]
        for lo, hi in zip(starts, ends):
            if lo == hi:
                continue
            b = int(blk[lo])
            table = self.known.get(b)
            if table is not None:
                pass
            elif b in self.blocks:
                table = self.blocks[b]
            else:
                if len(self.blocks) > 256:
                    self.blocks.clear()
                raw = int(self.reftable[b]) if b < len(self.reftable) else 0
                off = raw & REFT_OFFSET_MASK
                table = None if off and off % self.cs else \
                    L.as_ndarray(await rc.get_run(b << rc.block_bits, rc.block_entries))
                self.blocks[b] = table
            sel = order[lo:hi]
            if table is None:
                usable[sel] = False
            else:
                out[sel] = table[(clusters[sel] & U64(rc.block_entries - 1)).astype(np.int64)]
        return out, usable


def alloc_mask(ents: np.ndarray, drv: "Qcow2Driver") -> np.ndarray:
    """Entries whose cluster type is NORMAL or ZERO_ALLOC (Geometry.cluster_type)."""
    geo = drv.geo
    comp = (ents & U64(OFLAG_COMPRESSED)) != 0
    real = (ents & U64(L2E_OFFSET_MASK)) != 0
    mask = ~comp & real
    if geo.has_data_file:
        zero = ((ents & U64(OFLAG_ZERO)) != 0) if not geo.extended_l2 else False
        mask |= ~comp & ~zero & ((ents & U64(OFLAG_COPIED)) != 0)
    return mask


async def copied_flags_ok(drv: "Qcow2Driver", reftable: np.ndarray,
                          memo: Memo | None = None) -> bool:
    """True if every COPIED flag of the active L1 and L2 tables agrees with the
    refcounts (then the per-entry pass has nothing to say or repair)."""
    cs, cb = drv.cluster_size, drv.geo.cluster_bits
    l1 = L.as_ndarray(drv.mapping.l1)
    pos = np.flatnonzero(l1 & U64(L1E_OFFSET_MASK))
    if not pos.size:
        return True
    l1e = l1[pos]
    l2_offs = l1e & U64(L1E_OFFSET_MASK)
    disk = DiskRefcounts(drv, reftable, memo.blocks if memo else None)
    r, usable = await disk.get(l2_offs >> U64(cb))
    if (usable & ((r == 1) != ((l1e & U64(OFLAG_COPIED)) != 0))).any():
        return False
    step = 2 if drv.geo.extended_l2 else 1
    for group in batches(l2_offs.tolist(), cs):
        words = memo.tables.get(tuple(group)) if memo else None
        if words is None:
            words = await read_tables(drv, group)
        if words is None:
            return False
        ents = words[0::step]
        mask = alloc_mask(ents, drv)
        if drv.header.has_data_file:
            bad = mask & ((ents & U64(OFLAG_COPIED)) == 0)
        else:
            e = ents[mask]
            r, usable = await disk.get((e & U64(L2E_OFFSET_MASK)) >> U64(cb))
            bad = usable & ((r == 1) != ((e & U64(OFLAG_COPIED)) != 0))
        if bad.any():
            return False
    return True
