"""``qemu-img measure`` for qcow2: the size a new image needs, with QEMU's arithmetic
(qcow2_calc_prealloc_size and the refcount fixed point of block/qcow2*.c)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...core import bitmaps
from ...core.driver import Status

if TYPE_CHECKING:
    from ...core.node import BlockNode

L1E_SIZE = 8
REFTABLE_ENTRY_SIZE = 8
BME_TABLE_ENTRY_SIZE = 8
BITMAP_DIR_ENTRY_SIZE = 24


def _round_up(x: int, a: int) -> int:
    return -(-x // a) * a


def refcount_metadata_size(clusters: int, cluster_size: int, refcount_order: int) -> int:
    """Refcount table and blocks for ``clusters`` clusters, themselves included."""
    per_table_cluster = cluster_size // REFTABLE_ENTRY_SIZE
    per_block = cluster_size * 8 // (1 << refcount_order)
    table = blocks = 0
    n = 0
    while True:
        last = n
        blocks = -(-(clusters + table + blocks) // per_block)
        table = -(-blocks // per_table_cluster)
        n = clusters + blocks + table
        if n == last:
            return (blocks + table) * cluster_size


def prealloc_size(total: int, cluster_size: int, refcount_order: int, extended_l2: bool) -> int:
    """A fully allocated image: header, L2 and L1 tables, refcounts and the data."""
    aligned = _round_up(total, cluster_size)
    l2e = 16 if extended_l2 else 8
    meta = cluster_size
    nl2e = _round_up(aligned // cluster_size, cluster_size // l2e)
    meta += nl2e * l2e
    nl1e = _round_up(nl2e * l2e // cluster_size, cluster_size // L1E_SIZE)
    meta += nl1e * L1E_SIZE
    meta += refcount_metadata_size((meta + aligned) // cluster_size, cluster_size,
                                   refcount_order)
    return meta + aligned


async def _allocated_data(source: "BlockNode", cluster_size: int) -> int:
    """Bytes of whole clusters that hold data somewhere in the source chain."""
    size = source.total_bytes
    required = 0
    offset = 0
    while offset < size:
        st = await source.block_status_above(None, offset, size - offset)
        pnum = max(st.length, 1)
        if not st.flags & Status.ZERO and \
                st.flags & (Status.DATA | Status.ALLOCATED) == (Status.DATA | Status.ALLOCATED):
            pnum = _round_up(offset + pnum, cluster_size) - offset
            required += offset % cluster_size + pnum
        offset += pnum
    return required


def _bitmaps_size(source: "BlockNode", cluster_size: int) -> int:
    total = 0
    dir_size = 0
    for bm in bitmaps.list_bitmaps(source):
        if not bm.get("persistent", True):
            continue
        bits = -(-source.total_bytes // bm["granularity"])
        clusters = -(-(-(-bits // 8)) // cluster_size)
        total += clusters * cluster_size
        total += _round_up(clusters * BME_TABLE_ENTRY_SIZE, cluster_size)
        dir_size += _round_up(BITMAP_DIR_ENTRY_SIZE + len(bm["name"].encode()), 8)
    return total + _round_up(dir_size, cluster_size)


async def measure(options: dict[str, Any], source: "BlockNode | None") -> dict[str, int]:
    cluster_size = int(options.get("cluster_size") or 65536)
    refcount_order = (int(options.get("refcount_bits") or 16)).bit_length() - 1
    extended_l2 = bool(options.get("extended_l2"))
    prealloc = str(options.get("preallocation") or "off")
    v3 = str(options.get("compat") or "1.1") not in ("0.10", "v2")
    if source is not None:
        virtual = _round_up(source.total_bytes, cluster_size)
        if options.get("backing_file"):
            required = virtual
        else:
            required = await _allocated_data(source, cluster_size)
    else:
        virtual = _round_up(int(options.get("size") or 0), cluster_size)
        required = 0
    if prealloc in ("full", "falloc"):
        required = virtual
    fully = prealloc_size(virtual, cluster_size, refcount_order, extended_l2)
    info = {"required": fully - virtual + required, "fully-allocated": fully}
    if v3 and source is not None and bitmaps.supported(source):
        info["bitmaps"] = _bitmaps_size(source, cluster_size)
    return info
