"""``qemu-img amend`` for qcow2 (QEMU's qcow2_amend_options): compat 0.10 <-> 1.1,
lazy refcounts, the refcount width, the backing file and format, the data file
options and the size, in QEMU's order (upgrade first, downgrade last) and with its
messages.
"""
from __future__ import annotations

import errno
from array import array
from typing import TYPE_CHECKING, Any

from ...core.driver import CreateOption, Prealloc
from ...core.errors import BlockError, InvalidArgument, NotSupported
from . import layout as L
from .cache import MetadataCache
from .mapping import CT, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED
from .refcount import Discard, Refcounts
from .snapshot import EXTRA_V3_MIN, write_snapshots

if TYPE_CHECKING:
    from .driver import Qcow2Driver

AMEND_OPTIONS: tuple[CreateOption, ...] = (
    CreateOption("compat", "string", "Compatibility level (v2 [0.10] or v3 [1.1])"),
    CreateOption("size", "size", "Virtual disk size"),
    CreateOption("backing_file", "string", "File name of a base image"),
    CreateOption("backing_fmt", "string", "Image format of the base image"),
    CreateOption("data_file", "string", "File name of an external data file"),
    CreateOption("data_file_raw", "bool", "The external data file must stay valid as a "
                 "raw image"),
    CreateOption("lazy_refcounts", "bool", "Postpone refcount updates"),
    CreateOption("refcount_bits", "number", "Width of a reference count entry in bits"),
)


def _version(compat: str) -> int:
    if compat in ("0.10", "v2"):
        return 2
    if compat in ("1.1", "v3"):
        return 3
    raise InvalidArgument(f"Unknown compatibility level {compat}")


async def amend(drv: "Qcow2Driver", options: dict[str, Any], force: bool) -> None:
    h = drv.header
    old_version = h.version
    new_version = _version(str(options["compat"])) if options.get("compat") else old_version
    lazy = bool(options.get("lazy_refcounts", drv.lazy_refcounts))
    bits = int(options.get("refcount_bits", h.refcount_bits))
    if bits <= 0 or bits > 64 or bits & (bits - 1):
        raise InvalidArgument("Refcount width must be a power of two and may not exceed "
                              "64 bits")
    data_file = options.get("data_file")
    if data_file is not None and not h.has_data_file:
        raise InvalidArgument("data-file can only be set for images that use an external "
                              "data file")
    raw = bool(options.get("data_file_raw", h.data_file_raw))
    if raw and not h.data_file_raw:
        raise InvalidArgument("data-file-raw cannot be set on existing images")
    await drv.flush_caches()
    if new_version > old_version:
        await upgrade(drv)
    if bits != h.refcount_bits:
        if new_version < 3 and bits != 16:
            raise InvalidArgument("Refcount widths other than 16 bits require compatibility "
                                  "level 1.1 or above (use compat=1.1 or greater)")
        await change_refcount_order(drv, bits.bit_length() - 1)
    if raw:
        h.autoclear_features |= L.AUTOCLEAR_DATA_FILE_RAW
    else:
        h.autoclear_features &= ~L.AUTOCLEAR_DATA_FILE_RAW
    if data_file is not None:
        h.data_file = data_file or None
    await drv.update_header()
    backing, fmt = options.get("backing_file"), options.get("backing_fmt")
    if backing or fmt:
        await drv.change_backing_file(backing or h.backing_file, fmt or h.backing_format)
    if lazy != drv.lazy_refcounts:
        if lazy and new_version < 3:
            raise InvalidArgument("Lazy refcounts only supported with compatibility level "
                                  "1.1 and above (use compat=1.1 or greater)")
        if not lazy:
            await _mark_clean(drv)
        h.compatible_features ^= L.COMPAT_LAZY_REFCOUNTS
        await drv.update_header()
        drv.lazy_refcounts = lazy
    size = options.get("size")
    if size:
        await drv.truncate(int(size), True, Prealloc.OFF)
        drv.node.total_bytes = int(size)
    if new_version < old_version:
        await downgrade(drv)
    await drv.file.flush()


async def _mark_clean(drv: "Qcow2Driver") -> None:
    h = drv.header
    if h.incompatible_features & L.INCOMPAT_DIRTY:
        await drv.flush_caches()
        await drv.file.flush()
        await drv.set_incompatible(h.incompatible_features & ~L.INCOMPAT_DIRTY)


async def upgrade(drv: "Qcow2Driver") -> None:
    """v2 -> v3: snapshots get their v3 extra data, the header its v3 fields."""
    h = drv.header
    if any(sn.extra_data_size < EXTRA_V3_MIN for sn in drv.snapshots):
        async with drv.lock:
            await write_snapshots(drv)
    h.version, h.header_length, h.refcount_order = 3, L.V3_HEADER_LENGTH, h.refcount_order
    h.feature_table, h.has_feature_table = list(L.QEMU_FEATURE_TABLE), True
    await drv.update_header()
    await drv.file.flush()


async def downgrade(drv: "Qcow2Driver") -> None:
    """v3 -> v2, refusing what v2 cannot hold."""
    h = drv.header
    if h.refcount_order != 4:
        raise NotSupported("compat=0.10 requires refcount_bits=16")
    if h.has_data_file:
        raise NotSupported("Cannot downgrade an image with a data file")
    if any(sn.vm_state_size > 0xFFFFFFFF or sn.disk_size != h.size for sn in drv.snapshots):
        raise NotSupported("Internal snapshots prevent downgrade of image")
    await _mark_clean(drv)
    if h.incompatible_features & ~L.INCOMPAT_COMPRESSION:
        raise NotSupported(f"Cannot downgrade an image with incompatible features "
                           f"{h.incompatible_features & ~L.INCOMPAT_COMPRESSION:#x} set")
    h.compatible_features = 0
    h.autoclear_features = 0
    drv.bitmaps = [bm for bm in drv.bitmaps if not bm.persistent]
    h.bitmaps = None
    await expand_zero_clusters(drv)
    if h.incompatible_features & L.INCOMPAT_COMPRESSION:
        if await _has_compressed(drv):
            raise NotSupported("Cannot downgrade an image with zstd compression type and "
                               "existing compressed clusters")
        h.incompatible_features &= ~L.INCOMPAT_COMPRESSION
        h.compression_type = L.COMPRESSION_ZLIB
    h.version, h.header_length = 2, L.V2_HEADER_LENGTH
    h.refcount_order, h.has_feature_table, h.feature_table = 4, False, []
    h.unknown_header_fields = b""
    await drv.update_header()
    await drv.file.flush()


async def _l1_tables(drv: "Qcow2Driver") -> list[tuple[int, array, bool]]:
    out = [(drv.header.l1_table_offset, drv.mapping.l1, True)]
    for sn in drv.snapshots:
        raw = await drv.file.read(sn.l1_table_offset, sn.l1_size * 8)
        out.append((sn.l1_table_offset, L.parse_table(raw), False))
    return out


def _l2_offsets(l1: array) -> list[int]:
    return [e & L1E_OFFSET_MASK for e in l1 if e]


async def _has_compressed(drv: "Qcow2Driver") -> bool:
    for _, l1, _ in await _l1_tables(drv):
        for l2_off in _l2_offsets(l1):
            entry = await drv.l2_cache.get(l2_off)
            try:
                if any(drv.geo.cluster_type(e) is CT.COMPRESSED
                       for e in entry.table if e):
                    return True
            finally:
                drv.l2_cache.put(entry)
    return False


async def expand_zero_clusters(drv: "Qcow2Driver") -> None:
    """Zero clusters do not exist in v2: unbacked plain ones become unallocated, the
    others data clusters full of zeroes (QEMU's qcow2_expand_zero_clusters)."""
    cs, rc, geo = drv.cluster_size, drv.refcounts, drv.geo
    backed = drv.node.backing is not None or bool(drv.header.backing_file)
    async with drv.lock:
        for _, l1, _ in await _l1_tables(drv):
            for l2_off in _l2_offsets(l1):
                l2_refcount = await rc.get(l2_off >> geo.cluster_bits)
                entry = await drv.l2_cache.get(l2_off)
                try:
                    for j, e in enumerate(entry.table.tolist()):
                        ct = geo.cluster_type(int(e))
                        if ct not in (CT.ZERO_PLAIN, CT.ZERO_ALLOC):
                            continue
                        if ct is CT.ZERO_PLAIN:
                            if not backed:
                                entry.table[j] = 0
                                drv.l2_cache.mark_dirty(entry)
                                continue
                            off = await rc.alloc_clusters(cs)
                            if l2_refcount > 1:
                                await rc.update(off, cs, l2_refcount - 1, Discard.OTHER)
                        else:
                            off = int(e) & L2E_OFFSET_MASK
                            if await rc.get(off >> geo.cluster_bits) > l2_refcount:
                                # shared with a snapshot: zeroes must not land there
                                # (QEMU 7.2 writes them over the snapshot's data)
                                new = await rc.alloc_clusters(cs)
                                if l2_refcount > 1:
                                    await rc.update(new, cs, l2_refcount - 1, Discard.OTHER)
                                await rc.update(off, cs, -l2_refcount, Discard.OTHER)
                                off = new
                        await drv.rb_cache.flush()
                        await drv.file.write(off, bytes(cs))
                        entry.table[j] = off | (OFLAG_COPIED if l2_refcount == 1 else 0)
                        drv.l2_cache.mark_dirty(entry)
                finally:
                    drv.l2_cache.put(entry)
        await drv.l2_cache.write_back()
        await drv.rb_cache.flush()


async def change_refcount_order(drv: "Qcow2Driver", order: int) -> None:
    """New refcount structures of the new width, then the old ones are freed."""
    import numpy as np
    h, cs = drv.header, drv.cluster_size
    old = drv.refcounts
    new_max = (1 << (1 << order)) - 1
    async with drv.lock:
        n = -(-drv.file.total_bytes // cs)
        counts = np.zeros(n, np.uint64)
        i = 0
        while i < n:
            run = await old.get_run(i, n - i)
            counts[i:i + len(run)] = L.as_ndarray(run)
            i += len(run)
        over = np.flatnonzero(counts > new_max)
        if over.size:
            k = int(over[0])
            raise InvalidArgument(f"Cannot decrease refcount entry width to {1 << order} "
                                  f"bits: Cluster at offset {k * cs:#x} has a refcount of "
                                  f"{int(counts[k])}")
        old_table_off, old_table = old.table_offset, array("Q", old.table)
        old_table_clusters = h.refcount_table_clusters
        cache = MetadataCache("refcount", drv.file, cs, drv.rb_cache.capacity,
                              L.refcount_typecode(order), drv.overlap_check)
        new = Refcounts(drv.file, h.cluster_bits, order, old_table_off, old_table, cache,
                        drv.corrupt)
        new.other_caches = old.other_caches
        new.discard_passthrough = old.discard_passthrough
        new.write_header_reftable = drv.write_header_reftable
        new.table, new.table_offset = array("Q"), 0
        await new.rebuild(counts)
        h.refcount_order = order
        await drv.update_header()
        await drv.file.flush()
        drv.refcounts, drv.rb_cache = new, cache
        for block in [b for b in old_table if b]:
            await new.free_clusters(block, cs, Discard.OTHER)
        await new.free_clusters(old_table_off, old_table_clusters * cs, Discard.OTHER)
        await cache.flush()
    if drv.l2_cache.depends is not None:
        drv.l2_cache.depends = None


__all__ = ["AMEND_OPTIONS", "amend", "BlockError", "errno"]
