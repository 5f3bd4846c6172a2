"""Internal snapshots: the snapshot table (parsed and built as QEMU lays it out) and
the operations on it: create, list, goto (apply), delete and the read-only temporary
load that ``qemu-img convert -l`` uses.

The table entry (docs/interop/qcow2.txt, "Snapshots") is declared in :mod:`.layout`
(:class:`~.layout.SnapshotFixed` and the known extra data ``SNAPSHOT_EXTRA``); a
:class:`Snapshot` is what one entry means.
The refcount walk (:func:`update_snapshot_refcount`) is QEMU's: one pass over an L1
table that adds ``addend`` to every L2 table and data cluster it reaches and sets
the COPIED flags from the refcounts it leaves.
"""
from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...core.driver import SnapshotInfo
from ...core.errors import BlockError, ImageCorrupt, InvalidArgument, NodeNotFound, NotSupported
from . import layout as L
from .cache import Entry
from .mapping import CT, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED
from .refcount import Discard

if TYPE_CHECKING:
    from array import array

    from ...core.node import BlockNode
    from .driver import Qcow2Driver

EXTRA = L.SNAPSHOT_EXTRA
EXTRA_V3_MIN = 16                                 # v3: up to and including disk_size
MAX_EXTRA_DATA = L.MAX_SNAPSHOT_EXTRA_DATA
MAX_SNAPSHOTS_SIZE = 64 << 20
NO_ICOUNT = (1 << 64) - 1


@dataclass
class Snapshot:
    """One entry of the snapshot table (QEMU's QCowSnapshot)."""

    l1_table_offset: int
    l1_size: int
    id: str
    name: str
    vm_state_size: int = 0
    date_sec: int = 0
    date_nsec: int = 0
    vm_clock_nsec: int = 0
    disk_size: int = 0
    icount: int = NO_ICOUNT
    extra_data_size: int = EXTRA.size
    unknown_extra: bytes = b""

    def info(self) -> SnapshotInfo:
        return SnapshotInfo(id=self.id[:127], name=self.name[:255],
                            vm_state_size=self.vm_state_size, date_sec=self.date_sec,
                            date_nsec=self.date_nsec, vm_clock_nsec=self.vm_clock_nsec,
                            icount=None if self.icount == NO_ICOUNT else self.icount)

    def build(self) -> bytes:
        """The entry as QEMU writes it (at least the three known extra fields),
        without the trailing padding."""
        ident, name = self.id.encode(), self.name.encode()
        extra_size = max(EXTRA.size, self.extra_data_size)
        vm32 = self.vm_state_size if self.vm_state_size <= 0xFFFFFFFF else 0
        head = L.SnapshotFixed(self.l1_table_offset, self.l1_size, len(ident), len(name),
                               self.date_sec, self.date_nsec, self.vm_clock_nsec, vm32,
                               extra_size).build()
        extra = EXTRA.pack(self.vm_state_size, self.disk_size, self.icount)
        return head + extra + self.unknown_extra + ident + name


def build_table(snapshots: list[Snapshot]) -> bytes:
    """The whole table: entries padded to 8 bytes (the last one not)."""
    out = bytearray()
    for sn in snapshots:
        out.extend(bytes(-len(out) % 8))
        out.extend(sn.build())
        if len(out) > MAX_SNAPSHOTS_SIZE:
            raise BlockError("Snapshot table is too big", errno.EFBIG)
    return bytes(out)


@dataclass
class TableRead:
    """What reading the table found (the counts feed ``check``)."""

    snapshots: list[Snapshot]
    size: int                      # bytes from the table start to the end of the last entry
    extra_data_dropped: int = 0
    clusters_reduced: int = 0      # snapshots discarded (repair only)
    messages: list[str] | None = None


async def read_table(file: "BlockNode", offset: int, count: int, disk_size: int, *,
                     repair: bool = False) -> TableRead:
    """Parse ``count`` entries at ``offset`` (QEMU's qcow2_do_read_snapshots).

    Without ``repair``, too much extra data or a table over 64 MiB is an error; with it
    they are dropped and counted, with QEMU's messages.  Reads past the end of the file
    read zeroes, as in QEMU.
    """
    snaps: list[Snapshot] = []
    msgs: list[str] = []
    res = TableRead(snaps, 0, messages=msgs)
    pos = offset
    for i in range(count):
        pre = pos
        table_length = _round8(pos - offset)
        pos = _round8(pos)
        e = L.SnapshotFixed.parse(await file.read(pos, L.SNAPSHOT_FIXED.size))
        extra_size, id_size, name_size = e.extra_data_size, e.id_str_size, e.name_size
        pos += L.SNAPSHOT_FIXED.size
        truncate = False
        if extra_size > MAX_EXTRA_DATA:
            if not repair:
                raise BlockError(f"Too much extra metadata in snapshot table entry {i}",
                                 errno.EFBIG)
            msgs.append(f"Discarding too much extra metadata in snapshot table entry {i} "
                        f"({extra_size} > {MAX_EXTRA_DATA})")
            res.extra_data_dropped += 1
            truncate = True
        known = min(EXTRA.size, extra_size)
        extra = bytes(await file.read(pos, known)) + bytes(EXTRA.size - known)
        pos += known
        large, dsize, icount = EXTRA.unpack(extra)
        sn = Snapshot(e.l1_table_offset, e.l1_size, "", "", e.vm_state_size, e.date_sec,
                      e.date_nsec, e.vm_clock_nsec,
                      dsize if extra_size >= 16 else disk_size,
                      icount if extra_size >= 24 else NO_ICOUNT, extra_size)
        if extra_size >= 8:
            sn.vm_state_size = large
        if extra_size > EXTRA.size:
            end = pos + extra_size - EXTRA.size
            if truncate:
                sn.extra_data_size = MAX_EXTRA_DATA
            sn.unknown_extra = bytes(await file.read(pos, sn.extra_data_size - EXTRA.size))
            pos = end
        sn.id = bytes(await file.read(pos, id_size)).split(b"\0", 1)[0].decode("utf-8",
                                                                             "replace")
        pos += id_size
        sn.name = bytes(await file.read(pos, name_size)).split(b"\0", 1)[0].decode(
            "utf-8", "replace")
        pos += name_size
        table_length += L.SNAPSHOT_FIXED.size + sn.extra_data_size + id_size + name_size
        if table_length > MAX_SNAPSHOTS_SIZE:
            if not repair:
                raise BlockError("Snapshot table is too big", errno.EFBIG)
            msgs.append(f"Discarding {count - i} overhanging snapshots (snapshot table is "
                        "too big)")
            res.clusters_reduced += count - i
            pos = pre
            break
        snaps.append(sn)
    res.size = pos - offset
    return res


def _round8(n: int) -> int:
    return (n + 7) & ~7


# ---------------------------------------------------------------------------------------
# Loading at open, writing the table
# ---------------------------------------------------------------------------------------

async def load(drv: "Qcow2Driver") -> None:
    """Read the table named by the header into ``drv.snapshots`` (at open)."""
    h = drv.header
    drv.snapshots, drv.snapshots_size = [], 0
    if not h.nb_snapshots:
        return
    if h.nb_snapshots > L.MAX_SNAPSHOTS:
        raise InvalidArgument("Too many snapshots")
    got = await read_table(drv.file, h.snapshots_offset, h.nb_snapshots, h.size)
    drv.snapshots, drv.snapshots_size = got.snapshots, got.size


async def write_snapshots(drv: "Qcow2Driver") -> None:
    """Write ``drv.snapshots`` to new clusters, point the header at them and free the
    old table (QEMU's qcow2_write_snapshots)."""
    h, file = drv.header, drv.file
    data = build_table(drv.snapshots)
    new_off = await drv.refcounts.alloc_clusters(len(data)) if data else \
        await drv.refcounts._alloc_noref(0)
    await drv.rb_cache.flush()
    await drv.l2_cache.flush()
    if data:
        await drv.overlap_check(new_off, len(data))
        await file.write(new_off, data)
    await file.flush()
    old_off, old_size = h.snapshots_offset, drv.snapshots_size
    await drv.write_header_fields(nb_snapshots=len(drv.snapshots), snapshots_offset=new_off)
    drv.snapshots_size = len(data)
    if old_size:
        try:
            await drv.free_clusters(old_off, old_size, Discard.SNAPSHOT)
        except BlockError:
            pass    # as QEMU: the new table is in place; an old one past EOF just leaks


# ---------------------------------------------------------------------------------------
# The refcount walk
# ---------------------------------------------------------------------------------------

async def update_snapshot_refcount(drv: "Qcow2Driver", l1_offset: int, l1_size: int,
                                   addend: int) -> None:
    """Add ``addend`` (-1, 0 or 1) to the refcount of every L2 table and data cluster
    the L1 table at ``l1_offset`` reaches and fix the COPIED flags from the result.

    The L1 table at the active offset is taken from memory (goto relies on it); a
    changed L1 table is written back unless ``addend`` is negative.
    """
    geo, cs, rc = drv.geo, drv.cluster_size, drv.refcounts
    active = l1_offset == drv.header.l1_table_offset
    if active:
        l1 = drv.mapping.l1
    else:
        raw = await drv.file.read(l1_offset, l1_size * 8)
        l1 = L.parse_table(raw)
    step = 2 if geo.extended_l2 else 1
    modified = False
    rc.cache_discards = True
    try:
        for i in _nonzero(l1):
            old_l1e = l1[i]
            l2_off = old_l1e & L1E_OFFSET_MASK
            if l2_off % cs:
                await drv.corrupt(f"L2 table offset {l2_off:#x} unaligned (L1 index: "
                                   f"{i:#x})", -1, -1)
            entry = await drv.l2_cache.get(l2_off)
            try:
                await _update_l2(drv, entry, l2_off, step, addend)
            finally:
                drv.l2_cache.put(entry)
            if addend:
                await rc.update(l2_off, cs, addend, Discard.SNAPSHOT)
            new_l1e = l2_off | (OFLAG_COPIED if await rc.get(l2_off >> geo.cluster_bits)
                                == 1 else 0)
            if new_l1e != old_l1e:
                l1[i] = new_l1e
                modified = True
        await drv.l2_cache.write_back()
        await drv.rb_cache.write_back()
        await drv.file.flush()
    finally:
        rc.cache_discards = False
        await rc.process_discards()
    if addend >= 0 and modified:
        await drv.file.write(l1_offset, L.build_table(l1))
        await drv.file.flush()


def _nonzero(entries: "array") -> list[int]:
    """Indexes of the entries that are not zero."""
    return list(itertools.compress(range(len(entries)), entries))


async def _update_l2(drv: "Qcow2Driver", entry: Entry, l2_off: int, step: int,
                     addend: int) -> None:
    geo, rc, table = drv.geo, drv.refcounts, entry.table
    for j in _nonzero(table[0::step]):
        old = table[j * step]
        e = old & ~OFLAG_COPIED
        ct = geo.cluster_type(e)
        if ct is CT.COMPRESSED:
            if addend:
                coffset, csize = geo.compressed(e)
                await rc.update(coffset, csize, addend, Discard.SNAPSHOT)
            refcount = 2
        elif ct in (CT.NORMAL, CT.ZERO_ALLOC):
            off = e & L2E_OFFSET_MASK
            if off % drv.cluster_size:
                await drv.corrupt(f"Cluster allocation offset {off:#x} unaligned (L2 "
                                   f"offset: {l2_off:#x}, L2 index: {j:#x})", -1, -1)
            if drv.header.has_data_file:
                refcount = 1
            else:
                if addend:
                    await rc.update(off, drv.cluster_size, addend, Discard.SNAPSHOT)
                refcount = await rc.get(off >> geo.cluster_bits)
        else:
            refcount = 0
        if refcount == 1:
            e |= OFLAG_COPIED
        if e != old:
            if addend > 0:
                await drv.l2_cache.set_dependency(drv.rb_cache)
            table[j * step] = e
            drv.l2_cache.mark_dirty(entry)


# ---------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------

def find(drv: "Qcow2Driver", snapshot_id: str | None, name: str | None) -> int:
    """Index of the snapshot with this id and/or name; -1 if none."""
    for i, sn in enumerate(drv.snapshots):
        if (snapshot_id is None or sn.id == snapshot_id) and \
                (name is None or sn.name == name) and (snapshot_id or name) is not None:
            return i
    return -1


def find_id_or_name(drv: "Qcow2Driver", id_or_name: str) -> int:
    i = find(drv, id_or_name, None)
    return i if i >= 0 else find(drv, None, id_or_name)


def _new_id(drv: "Qcow2Driver") -> str:
    best = 0
    for sn in drv.snapshots:
        digits = ""
        for ch in sn.id.lstrip():
            if not ch.isdigit():
                break
            digits += ch
        best = max(best, int(digits) if digits else 0)
    return str(best + 1)


def _validate_l1(sn: Snapshot, cs: int) -> None:
    L.validate_table(sn.l1_table_offset, sn.l1_size, 8, L.MAX_L1_SIZE, cs,
                     "Snapshot L1 table")


async def create(drv: "Qcow2Driver", info: SnapshotInfo) -> None:
    """QEMU's qcow2_snapshot_create."""
    h = drv.header
    if len(drv.snapshots) >= L.MAX_SNAPSHOTS:
        raise BlockError("Too many snapshots", errno.EFBIG)
    if h.has_data_file:
        raise NotSupported("Snapshots are not supported with an external data file")
    await drv.flush_caches()
    try:
        await _create(drv, info)
    except NotSupported:
        raise
    except BlockError as exc:       # QEMU reports only the errno here
        raise BlockError(f"-{exc.errno} ({exc.strerror})", exc.errno) from None


async def _create(drv: "Qcow2Driver", info: SnapshotInfo) -> None:
    h = drv.header
    async with drv.lock:
        l1 = drv.mapping.l1
        sn = Snapshot(0, len(l1), _new_id(drv), info.name, info.vm_state_size,
                      info.date_sec, info.date_nsec, info.vm_clock_nsec, h.size,
                      NO_ICOUNT if info.icount is None else info.icount & NO_ICOUNT)
        sn.l1_table_offset = await drv.refcounts.alloc_clusters(len(l1) * 8) if len(l1) \
            else await drv.refcounts._alloc_noref(0)
        if len(l1):
            await drv.overlap_check(sn.l1_table_offset, len(l1) * 8)
            await drv.file.write(sn.l1_table_offset, L.build_table(l1))
        await update_snapshot_refcount(drv, h.l1_table_offset, len(l1), 1)
        drv.snapshots.append(sn)
        try:
            await write_snapshots(drv)
        except BaseException:
            drv.snapshots.pop()
            raise
        info.id = sn.id
    if sn.vm_state_size:
        vm_off = drv.get_info().vm_state_offset
        await drv.zeroes.discard_clusters(vm_off, vm_off + -(-sn.vm_state_size // drv.cluster_size)
                                   * drv.cluster_size, Discard.NEVER, full=False)


async def goto(drv: "Qcow2Driver", id_or_name: str) -> None:
    """QEMU's qcow2_snapshot_goto: the active state becomes the snapshot's."""
    h = drv.header
    if h.has_data_file:
        raise NotSupported("Snapshots are not supported with an external data file")
    i = find_id_or_name(drv, id_or_name)
    if i < 0:
        raise NodeNotFound("Failed to load snapshot: No such file or directory")
    sn = drv.snapshots[i]
    _validate_l1(sn, drv.cluster_size)
    await drv.flush_caches()
    if sn.disk_size != h.size:
        await _resize_for(drv, sn.disk_size)
    if sn.l1_size > len(drv.mapping.l1):
        await drv.resizer.grow_l1(sn.l1_size)
    async with drv.lock:
        cur = len(drv.mapping.l1)
        raw = await drv.file.read(sn.l1_table_offset, sn.l1_size * 8)
        new_l1 = L.parse_table(raw)
        new_l1.extend(L.empty_table((cur - sn.l1_size) * 8))
        await update_snapshot_refcount(drv, sn.l1_table_offset, sn.l1_size, 1)
        await drv.file.write(h.l1_table_offset, L.build_table(new_l1))
        await drv.file.flush()
        try:
            await update_snapshot_refcount(drv, h.l1_table_offset, cur, -1)
        finally:
            drv.mapping.l1[:] = new_l1
        await update_snapshot_refcount(drv, h.l1_table_offset, cur, 0)
    drv.metadata_prealloc = None


async def _resize_for(drv: "Qcow2Driver", size: int) -> None:
    """The virtual size changes to the snapshot's (QEMU truncates through a
    temporary user; snapshots do not block it here)."""
    from ...core.driver import Prealloc
    h = drv.header
    saved, h.nb_snapshots = h.nb_snapshots, 0
    try:
        await drv.truncate(size, True, Prealloc.OFF)
    finally:
        h.nb_snapshots = saved
    drv.node.total_bytes = size


async def delete(drv: "Qcow2Driver", snapshot_id: str | None,
                 name: str | None) -> SnapshotInfo:
    """QEMU's qcow2_snapshot_delete (by id, by name, or by both)."""
    if snapshot_id is None and name is None:
        raise InvalidArgument("snapshot_id and name are both NULL")
    if drv.header.has_data_file:
        raise NotSupported("Snapshots are not supported with an external data file")
    i = find(drv, snapshot_id, name)
    if i < 0:
        raise NodeNotFound("Can't find the snapshot")
    sn = drv.snapshots[i]
    _validate_l1(sn, drv.cluster_size)
    await drv.flush_caches()
    async with drv.lock:
        del drv.snapshots[i]
        try:
            await write_snapshots(drv)
        except BlockError as exc:
            drv.snapshots.insert(i, sn)
            raise BlockError(f"Failed to remove snapshot from snapshot list: "
                             f"{exc.strerror}", exc.errno) from None
        try:
            await update_snapshot_refcount(drv, sn.l1_table_offset, sn.l1_size, -1)
            await drv.free_clusters(sn.l1_table_offset, sn.l1_size * 8, Discard.SNAPSHOT)
        except BlockError as exc:
            raise BlockError(f"Failed to free the cluster and L1 table: {exc.strerror}",
                             exc.errno) from None
        try:
            await update_snapshot_refcount(drv, drv.header.l1_table_offset,
                                           len(drv.mapping.l1), 0)
        except BlockError as exc:
            raise BlockError(f"Failed to update snapshot status in disk: {exc.strerror}",
                             exc.errno) from None
        await drv.rb_cache.flush()
    return sn.info()


async def load_tmp(drv: "Qcow2Driver", snapshot_id: str | None, name: str | None) -> None:
    """Switch a read-only node to a snapshot's L1 table (QEMU's qcow2_snapshot_load_tmp)."""
    if not drv.node.read_only:
        raise InvalidArgument("Device is not readonly")
    if snapshot_id is None and name is None:
        raise InvalidArgument("snapshot_id and name are both NULL")
    i = find(drv, snapshot_id, name)
    if i < 0:
        raise NodeNotFound("Can't find snapshot")
    sn = drv.snapshots[i]
    _validate_l1(sn, drv.cluster_size)
    try:
        raw = await drv.file.read(sn.l1_table_offset, sn.l1_size * 8)
    except BlockError as exc:
        raise BlockError("Failed to read l1 table for snapshot", exc.errno) from None
    async with drv.lock:
        drv.mapping.l1 = L.parse_table(raw)
        drv.header.l1_table_offset, drv.header.l1_size = sn.l1_table_offset, sn.l1_size
        drv.l2_cache.clear()
    drv.metadata_prealloc = None


__all__ = ["Snapshot", "TableRead", "build_table", "read_table", "load", "write_snapshots",
           "update_snapshot_refcount", "create", "goto", "delete", "load_tmp", "find",
           "ImageCorrupt"]
