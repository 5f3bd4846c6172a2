"""Run-time dirty bitmaps of any node (QMP's block-dirty-bitmap-*), as QEMU 7.2 keeps them.

A node that stores persistent bitmaps (qcow2) keeps all of its bitmaps in its driver
(:mod:`blocklayer.formats.qcow2.bitmap`, loaded at open, stored at close); any other node
keeps in-memory ones here, fed by one write observer.  Both kinds answer the same small
interface (:class:`Handle`), so the operations below -- add, remove, clear, enable,
disable, merge, sha256, extents -- are the same for every node.  Errors are QEMU's
(``bdrv_dirty_bitmap_check``).
"""
from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .driver import Cap
from .errors import BlockError, InvalidArgument, NodeNotFound

if TYPE_CHECKING:
    from .node import BlockNode

MAX_NAME = 1023
MIN_GRANULARITY = 512


class BitmapError(InvalidArgument):
    """A bitmap operation QEMU refuses (GenericError)."""


class Handle(Protocol):
    name: str
    enabled: bool
    persistent: bool
    inconsistent: bool
    busy: bool
    readonly: bool

    @property
    def granularity(self) -> int: ...

    def set_range(self, offset: int, length: int, value: bool = True) -> None: ...

    def count(self) -> int: ...

    def packed(self) -> bytes: ...


class Bitset:
    """``n`` bits in a bytearray, LSB first (the on-disk order of qcow2's bitmaps)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.b = bytearray(-(-n // 8))

    def set(self, first: int, end: int, value: bool = True) -> None:
        """Bits ``[first, end)`` to ``value``."""
        end = min(end, self.n)
        if first >= end:
            return
        fb, lb = first >> 3, (end - 1) >> 3
        lo = (0xFF << (first & 7)) & 0xFF
        hi = 0xFF >> (7 - ((end - 1) & 7))
        if fb == lb:
            self._mask(fb, lo & hi, value)
            return
        self._mask(fb, lo, value)
        self._mask(lb, hi, value)
        if lb > fb + 1:
            self.b[fb + 1:lb] = (b"\xff" if value else b"\0") * (lb - fb - 1)

    def _mask(self, i: int, mask: int, value: bool) -> None:
        self.b[i] = self.b[i] | mask if value else self.b[i] & ~mask

    def count(self) -> int:
        return int.from_bytes(self.b, "little").bit_count()

    def runs(self, first: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        """The runs of set bits ``(start, stop)`` within ``[first, end)``."""
        end = self.n if end is None else min(end, self.n)
        x = int.from_bytes(self.b, "little") >> first
        pos = first
        while x and pos < end:
            skip = (x & -x).bit_length() - 1
            x >>= skip
            pos += skip
            inv = ~x
            run = (inv & -inv).bit_length() - 1
            yield pos, min(pos + run, end)
            x >>= run
            pos += run

    def resize(self, n: int) -> None:
        old = self.n
        self.n = n
        self.b = self.b[:-(-n // 8)] + bytearray(max(0, -(-n // 8) - len(self.b)))
        if n < old and n & 7:
            self.b[-1] &= 0xFF >> (8 - (n & 7))


@dataclass(eq=False)
class DirtyBitmap:
    """An in-memory bitmap of a node without persistent-bitmap support."""

    name: str
    granularity_bits: int
    size: int
    enabled: bool = True
    persistent: bool = False
    inconsistent: bool = False
    busy: bool = False
    readonly: bool = False
    bits: Bitset = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.bits = Bitset(-(-self.size >> self.granularity_bits))

    @property
    def granularity(self) -> int:
        return 1 << self.granularity_bits

    def set_range(self, offset: int, length: int, value: bool = True) -> None:
        if length > 0:
            g = self.granularity_bits
            self.bits.set(offset >> g, ((offset + length - 1) >> g) + 1, value)

    def count(self) -> int:
        return self.bits.count()

    def packed(self) -> bytes:
        return bytes(self.bits.b)


_stores: weakref.WeakKeyDictionary[BlockNode, list[DirtyBitmap]] = \
    weakref.WeakKeyDictionary()


def _in_driver(node: BlockNode) -> bool:
    return node.can(Cap.PERSISTENT_BITMAPS) and not node.driver.is_filter


def _observe(node: BlockNode, offset: int, length: int) -> None:
    for bm in _stores.get(node, ()):
        if bm.enabled:
            bm.set_range(offset, length)


def _store(node: BlockNode) -> list[DirtyBitmap]:
    store = _stores.get(node)
    if store is None:
        store = _stores[node] = []
        node.write_observers.append(_observe)
    return store


def bitmaps(node: BlockNode) -> list[Handle]:
    """The node's bitmaps, newest first (as QEMU lists them)."""
    if _in_driver(node):
        return [node.driver.bitmap_find(d["name"]) for d in node.driver.bitmap_list()][::-1]
    own: list[Handle] = list(_stores.get(node, ()))
    return own[::-1]


#: bitmaps a job keeps on a node for itself (a mirror's dirty map), unnamed: queries
#: list them, nothing finds them by name
_internal: weakref.WeakKeyDictionary[BlockNode, list[Handle]] = weakref.WeakKeyDictionary()


def add_internal(node: BlockNode, bm: Handle) -> None:
    _internal.setdefault(node, []).append(bm)


def remove_internal(node: BlockNode, bm: Handle) -> None:
    held = _internal.get(node, [])
    if bm in held:
        held.remove(bm)


def listed(node: BlockNode) -> list[Handle]:
    """What query-named-block-nodes shows: every bitmap, internal ones too, newest
    first."""
    return _internal.get(node, [])[::-1] + bitmaps(node)


def find(node: BlockNode, name: str) -> Handle:
    for bm in bitmaps(node):
        if bm.name == name:
            return bm
    raise NodeNotFound(f"Dirty bitmap '{name}' not found")


def default_granularity(node: BlockNode) -> int:
    """QEMU's bdrv_get_default_bitmap_granularity: the cluster size within 4k..64k."""
    cluster = node.driver.get_info().cluster_size
    return min(65536, max(4096, cluster)) if cluster else 65536


# checks of bdrv_dirty_bitmap_check
BUSY, RO, INCONSISTENT = 1, 2, 4
DEFAULT = BUSY | RO | INCONSISTENT
ALLOW_RO = BUSY | INCONSISTENT


def check(bm: Handle, flags: int) -> None:
    if flags & BUSY and bm.busy:
        raise BitmapError(f"Bitmap '{bm.name}' is currently in use by another operation "
                          "and cannot be used")
    if flags & RO and bm.readonly:
        raise BitmapError(f"Bitmap '{bm.name}' is readonly and cannot be modified")
    if flags & INCONSISTENT and bm.inconsistent:
        raise BitmapError(f"Bitmap '{bm.name}' is inconsistent and cannot be used")


async def add(node: BlockNode, name: str, granularity: int | None = None,
              persistent: bool = False, disabled: bool = False) -> Handle:
    """qmp_block_dirty_bitmap_add's checks, then a new bitmap."""
    if not name:
        raise BitmapError("Bitmap name cannot be empty")
    if len(name) > MAX_NAME:
        raise BitmapError(f"Bitmap name too long: {name}")
    if granularity is not None and (granularity < MIN_GRANULARITY or
                                    granularity & (granularity - 1)):
        raise BitmapError("Granularity must be power of 2 and at least 512")
    gran = granularity or default_granularity(node)
    if any(bm.name == name for bm in bitmaps(node)):
        raise BitmapError(f"Bitmap already exists: {name}")
    if _in_driver(node):
        await node.driver.bitmap_add(name, gran, persistent, disabled)
        return find(node, name)
    if persistent:
        raise BitmapError(f"Can't store persistent bitmaps to {node.name}: "
                          "Operation not supported")
    bm = DirtyBitmap(name, gran.bit_length() - 1, node.total_bytes, enabled=not disabled)
    _store(node).append(bm)
    return bm


async def remove(node: BlockNode, name: str) -> None:
    bm = find(node, name)
    check(bm, BUSY | RO)
    await drop(node, bm)


async def drop(node: BlockNode, bm: Handle) -> None:
    """Remove ``bm`` without checks (and from the image if persistent)."""
    if _in_driver(node):
        await node.driver.bitmap_remove(bm.name)
    else:
        _stores[node].remove(bm)  # type: ignore[arg-type]


def clear(bm: Handle) -> None:
    check(bm, DEFAULT)
    bm.set_range(0, 1 << 63, False)


def set_enabled(bm: Handle, enabled: bool) -> None:
    check(bm, ALLOW_RO)
    bm.enabled = enabled


def extents(bm: Handle, offset: int = 0, length: int | None = None,
            size: int | None = None) -> list[tuple[int, int, bool]]:
    """The dirty (True) and clean (False) extents ``(offset, length, dirty)`` of ``bm``
    covering ``[offset, offset+length)`` -- what an NBD ``qemu:dirty-bitmap:NAME``
    context answers.  ``size`` clips the last granule (default: the bitmap's span)."""
    g = bm.granularity
    nbits = len(bm.packed()) * 8
    span = nbits * g if size is None else size
    end = span if length is None else min(span, offset + length)
    out: list[tuple[int, int, bool]] = []
    pos = offset
    for a, b in dirty_runs(bm, offset // g, -(-end // g)):
        a, b = max(a * g, offset), min(b * g, end)
        if a > pos:
            out.append((pos, a - pos, False))
        if b > a:
            out.append((a, b - a, True))
        pos = max(pos, b)
    if pos < end:
        out.append((pos, end - pos, False))
    return out


def node_extents(node: BlockNode, name: str, offset: int, length: int
                 ) -> list[tuple[int, int, bool]]:
    """The extents of bitmap ``name`` of ``node`` over ``[offset, offset+length)``,
    clipped to the node's size: what the NBD export's ``qemu:dirty-bitmap:NAME``
    context answers.  Raises :class:`NodeNotFound` for an unknown bitmap."""
    size = node.total_bytes
    return extents(find(node, name), offset, min(length, max(size - offset, 0)), size)


def dirty_runs(bm: Handle, first: int, end: int) -> Iterator[tuple[int, int]]:
    bits = bm.bits if isinstance(bm, DirtyBitmap) else _unpacked(bm)
    return bits.runs(first, end)


def _unpacked(bm: Handle) -> Bitset:
    data = bm.packed()
    out = Bitset(len(data) * 8)
    out.b[:] = data
    return out


def merge_into(dst: Handle, src: Handle) -> None:
    """Set in ``dst`` every range dirty in ``src`` (granularities may differ)."""
    g = src.granularity
    for a, b in dirty_runs(src, 0, 1 << 62):
        dst.set_range(a * g, (b - a) * g)


def snapshot(bm: Handle) -> bytes:
    return bm.packed()


def restore(bm: Handle, saved: bytes) -> None:
    """Put back the bits :func:`snapshot` saved (a transaction's abort)."""
    bm.set_range(0, 1 << 63, False)
    src = Bitset(len(saved) * 8)
    src.b[:] = saved
    g = bm.granularity
    for a, b in src.runs():
        bm.set_range(a * g, (b - a) * g)


def sha256(bm: Handle) -> str:
    """x-debug-block-dirty-bitmap-sha256: the hash of the bits as QEMU's HBitmap keeps
    them (64-bit words, little-endian)."""
    data = bm.packed()
    return hashlib.sha256(data + bytes(-len(data) % 8)).hexdigest()


def info(bm: Handle) -> dict[str, Any]:
    """BlockDirtyInfo as QSD 7.2 prints it."""
    out: dict[str, Any] = {"name": bm.name, "count": bm.count() * bm.granularity,
                           "granularity": bm.granularity, "recording": bm.enabled,
                           "busy": bm.busy, "persistent": bm.persistent}
    if not bm.name:          # an internal bitmap: QEMU's has no name
        del out["name"]
    if bm.inconsistent:
        out["inconsistent"] = True
    return out


def export_bitmaps(node: BlockNode, names: "tuple[str | dict[str, str], ...] | list[Any]",
                   readonly: bool) -> dict[str, Handle]:
    """The bitmaps an NBD export of ``node`` serves (qemu-nbd ``-B``, block-export-add
    ``bitmaps``), each found on ``node`` or on a node below it in its chain (a name),
    or on the node named (``{node, name}``), checked as QEMU's nbd_export_create checks
    them, and then all marked busy."""
    found: dict[str, Handle] = {}
    for item in names:
        if isinstance(item, dict):
            holder = node.graph.nodes.get(str(item["node"]))
            if holder is None:
                raise NodeNotFound(f"Node '{item['node']}' not found")
            name = str(item["name"])
            try:
                bm = find(holder, name)
            except NodeNotFound:
                raise NodeNotFound(f"Dirty bitmap '{name}' not found") from None
        else:
            name = item
            bm, holder = _in_chain(node, name)
        check(bm, ALLOW_RO)
        if readonly and not holder.read_only and bm.enabled:
            raise BitmapError(f"Enabled bitmap '{name}' incompatible with readonly export")
        found[name] = bm
    for bm in found.values():
        bm.busy = True
    return found


def release_bitmaps(found: dict[str, Handle]) -> None:
    """An export going away gives its bitmaps back."""
    for bm in found.values():
        bm.busy = False


def _in_chain(node: BlockNode, name: str) -> tuple[Handle, BlockNode]:
    current: BlockNode | None = node
    while current is not None:
        for bm in bitmaps(current):
            if bm.name == name:
                return bm, current
        current = current.filtered_backing()
    raise NodeNotFound(f"Bitmap '{name}' is not found")


@dataclass(eq=False)
class Successor:
    """A bitmap frozen while a job uses it (QEMU's bdrv_dirty_bitmap_create_successor):
    the bitmap is busy and stops recording; an unnamed successor records the writes
    made meanwhile.  The job ends it with :meth:`abdicate` (the bitmap keeps only
    what the successor recorded) or :meth:`reclaim` (the successor's bits are merged
    back)."""

    node: BlockNode
    parent: Handle
    child: DirtyBitmap
    was_enabled: bool

    @classmethod
    def create(cls, node: BlockNode, bm: Handle) -> "Successor":
        check(bm, DEFAULT)
        g = bm.granularity
        child = DirtyBitmap("", g.bit_length() - 1, node.total_bytes, enabled=bm.enabled)
        self = cls(node, bm, child, bm.enabled)
        bm.enabled, bm.busy = False, True
        node.write_observers.append(self._observe)
        add_internal(node, child)
        return self

    def _observe(self, node: BlockNode, offset: int, length: int) -> None:
        if self.child.enabled:
            self.child.set_range(offset, length)

    def _end(self) -> Handle:
        if self._observe in self.node.write_observers:
            self.node.write_observers.remove(self._observe)
        remove_internal(self.node, self.child)
        bm = self.parent
        bm.busy, bm.enabled = False, self.child.enabled
        return bm

    def abdicate(self) -> Handle:
        bm = self._end()
        bm.set_range(0, 1 << 63, False)
        merge_into(bm, self.child)
        return bm

    def reclaim(self) -> Handle:
        bm = self._end()
        merge_into(bm, self.child)
        return bm


def set_busy(node: BlockNode, name: str, busy: bool) -> Handle:
    """A job or export takes (``True``) or gives back a bitmap."""
    bm = find(node, name)
    if busy:
        check(bm, ALLOW_RO)
    bm.busy = busy
    return bm


__all__ = [
    "BitmapError",
    "Bitset",
    "BlockError",
    "DirtyBitmap",
    "Handle",
    "export_bitmaps", "add_internal", "remove_internal", "listed", "Successor",
    "add",
    "bitmaps",
    "check",
    "clear",
    "extents",
    "find",
    "info",
    "merge_into",
    "node_extents",
    "release_bitmaps",
    "remove",
    "set_busy",
    "set_enabled",
    "sha256",
]
