"""Persistent dirty bitmaps: the bitmaps extension, the bitmap directory, bitmap
tables and bitmap data (docs/interop/qcow2.txt, "Bitmaps"), with QEMU's semantics.

The directory entry and the bitmap table are declared in :mod:`.layout`
(:class:`~.layout.BitmapDirEntry`).

Life cycle, as in QEMU: at open every bitmap of the directory is loaded into memory
(a numpy array of bits, LSB first, as on disk: numpy is imported only for images
with bitmaps); one marked ``in-use`` was not stored
cleanly and is *inconsistent* (it can only be removed).  A read-write open marks the
loaded bitmaps ``in-use`` on disk; writes set bits of the enabled ones (a write
observer on the node); closing stores every persistent bitmap in new clusters,
rewrites the directory without ``in-use`` and frees the old tables.  The autoclear
bit vouches for the extension: without it the extension is ignored (and dropped by
the next header update), as a program without bitmap support leaves it.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...core.errors import BlockError, InvalidArgument, NodeNotFound
from ...core.io import metadata_io
from . import layout as L
from .refcount import Discard
from .state import Qcow2State

if TYPE_CHECKING:
    from array import array

    import numpy as np

    from ...core.node import BlockNode

FLAG_IN_USE, FLAG_AUTO, FLAG_EXTRA_COMPAT = (L.BME_FLAG_IN_USE, L.BME_FLAG_AUTO,
                                             L.BME_FLAG_EXTRA_COMPAT)
RESERVED_FLAGS = ~0x7 & 0xFFFFFFFF
TYPE_DIRTY_TRACKING = 1
MAX_TABLE_SIZE = L.BME_MAX_TABLE_SIZE
MAX_PHYS_SIZE = 0x20000000
MIN_GRANULARITY_BITS, MAX_GRANULARITY_BITS = 9, 31
MAX_NAME_SIZE = 1023
TABLE_OFFSET_MASK = L.BME_TABLE_OFFSET_MASK
TABLE_RESERVED_MASK = L.BME_TABLE_RESERVED_MASK
TABLE_ALL_ONES = L.BME_TABLE_ALL_ONES


@dataclass(eq=False)
class Bitmap:
    """One bitmap: its directory entry and, once loaded, its bits."""

    name: str
    granularity_bits: int
    flags: int = 0
    table_offset: int = 0
    table_size: int = 0
    type: int = TYPE_DIRTY_TRACKING
    persistent: bool = True
    enabled: bool = True
    inconsistent: bool = False
    busy: bool = False              # a job or export uses it
    readonly: bool = False          # loaded from a read-only image
    bits: np.ndarray | None = field(default=None, repr=False)   # uint8, packed LSB first

    @property
    def granularity(self) -> int:
        return 1 << self.granularity_bits

    def entry_size(self) -> int:
        return L.bitmap_entry_size(len(self.name.encode()))

    def build_entry(self) -> bytes:
        name = self.name.encode()
        return L.BitmapDirEntry(self.table_offset, self.table_size, self.flags, self.type,
                                self.granularity_bits, len(name), 0, name).build()

    async def read_table(self, drv: "Qcow2State") -> "array":
        raw = await drv.file.read(self.table_offset, self.table_size * 8)
        return L.parse_table(raw)

    # ---- bits ---------------------------------------------------------------------------
    def nbits(self, disk_size: int) -> int:
        return -(-disk_size // self.granularity)

    def set_range(self, offset: int, length: int, value: bool = True) -> None:
        """Mark (or clear) the granules covering ``[offset, offset+length)``."""
        if self.bits is None or length <= 0:
            return
        first = offset >> self.granularity_bits
        last = min((offset + length - 1) >> self.granularity_bits, len(self.bits) * 8 - 1)
        if first > last:
            return
        fb, lb = first >> 3, last >> 3
        lo, hi = (0xFF << (first & 7)) & 0xFF, 0xFF >> (7 - (last & 7))
        b = self.bits
        for i, mask in ((fb, lo & hi),) if fb == lb else ((fb, lo), (lb, hi)):
            b[i] = (int(b[i]) | mask) if value else (int(b[i]) & ~mask & 0xFF)
        if lb > fb + 1:
            b[fb + 1:lb] = 0xFF if value else 0

    def packed(self) -> bytes:
        """The bits, packed LSB first."""
        return b"" if self.bits is None else self.bits.tobytes()

    def count(self) -> int:
        import numpy as np
        return 0 if self.bits is None else int(np.unpackbits(self.bits).sum())

    def resize(self, disk_size: int) -> None:
        import numpy as np
        n = self.nbits(disk_size)
        view = np.unpackbits(self.bits if self.bits is not None else
                             np.zeros(0, np.uint8), bitorder="little")[:n]
        view = np.concatenate([view, np.zeros(max(0, n - len(view)), np.uint8)])
        self.bits = np.packbits(view, bitorder="little") if n else np.zeros(0, np.uint8)

    def info(self) -> dict[str, Any]:
        """The entry of ``qemu-img info``'s ``bitmaps`` list."""
        flags = [n for bit, n in ((FLAG_IN_USE, "in-use"), (FLAG_AUTO, "auto"))
                 if self.flags & bit]
        return {"flags": flags, "name": self.name, "granularity": self.granularity}


# ---------------------------------------------------------------------------------------
# The directory
# ---------------------------------------------------------------------------------------

def parse_directory(data: bytes, count: int, cluster_size: int,
                    disk_size: int) -> list[Bitmap]:
    """The entries of a directory, validated as QEMU's bitmap_list_load does."""
    if not data:
        raise InvalidArgument("Requested bitmap directory size is zero")
    if len(data) > L.MAX_BITMAP_DIRECTORY_SIZE:
        raise InvalidArgument("Requested bitmap directory size is too big")
    out: list[Bitmap] = []
    pos = 0
    while pos < len(data):
        e = L.BitmapDirEntry.parse_from(data, pos)
        if e is None:
            raise InvalidArgument("Broken bitmap directory")
        if len(out) + 1 > count:
            raise InvalidArgument("More bitmaps found than specified in header extension")
        if e.end > len(data):
            raise InvalidArgument("Broken bitmap directory")
        if e.extra_data_size:
            raise InvalidArgument("Bitmap extra data is not supported")
        name = e.name
        t_off, t_size, flags, gbits = e.table_offset, e.table_size, e.flags, e.granularity_bits
        phys = t_size * cluster_size
        bad = (t_size == 0 or t_off == 0 or t_off % cluster_size or t_size > MAX_TABLE_SIZE
               or t_size > MAX_PHYS_SIZE // cluster_size or flags & RESERVED_FLAGS
               or e.name_size > MAX_NAME_SIZE or e.type != TYPE_DIRTY_TRACKING
               or gbits > MAX_GRANULARITY_BITS
               or (not flags & FLAG_IN_USE and disk_size > (phys * 8) << gbits))
        if bad:
            raise InvalidArgument(f"Bitmap '{name}' doesn't satisfy the constraints")
        out.append(Bitmap(name, gbits, flags, t_off, t_size, e.type,
                          enabled=bool(flags & FLAG_AUTO),
                          inconsistent=bool(flags & FLAG_IN_USE)))
        pos = e.end
    if len(out) != count:
        raise InvalidArgument("Less bitmaps found than specified in header extension")
    return out


def build_directory(bitmaps: list[Bitmap]) -> bytes:
    return b"".join(bm.build_entry() for bm in bitmaps)


def ext_valid(drv: "Qcow2State") -> bool:
    h = drv.header
    return bool(h.bitmaps is not None and h.autoclear_features & L.AUTOCLEAR_BITMAPS
                and h.bitmaps.nb_bitmaps)


async def load_directory(drv: "Qcow2State") -> list[Bitmap]:
    """The directory the header names (empty when the autoclear bit disowns it)."""
    if not ext_valid(drv):
        return []
    ext = drv.header.bitmaps
    assert ext is not None
    data = bytes(await drv.file.read(ext.directory_offset, ext.directory_size))
    return parse_directory(data, ext.nb_bitmaps, drv.cluster_size, drv.header.size)


async def _read_bits(drv: "Qcow2State", bm: Bitmap) -> np.ndarray:
    """The bits of a bitmap from its table (QEMU's load_bitmap_data)."""
    import numpy as np
    cs = drv.cluster_size
    nbytes = -(-bm.nbits(drv.header.size) // 8)
    out = np.zeros(max(bm.table_size * cs, nbytes), np.uint8)
    table = await bm.read_table(drv)
    for i, e in enumerate(table.tolist()):
        off = e & TABLE_OFFSET_MASK
        if e & TABLE_RESERVED_MASK or (off and (e & TABLE_ALL_ONES or off % cs)):
            raise BlockError(f"Bitmap '{bm.name}' table entry is invalid", errno.EINVAL)
        if off:
            out[i * cs:(i + 1) * cs] = np.frombuffer(bytes(await drv.file.read(off, cs)),
                                                     np.uint8)
        elif e & TABLE_ALL_ONES:
            out[i * cs:(i + 1) * cs] = 0xFF
    bits = out[:nbytes].copy()
    tail = bm.nbits(drv.header.size) % 8
    if tail and nbytes:
        bits[-1] &= (1 << tail) - 1
    return bits


async def load(drv: "Qcow2State") -> None:
    """Load every bitmap at open (QEMU's qcow2_load_dirty_bitmaps).  A bitmap that
    cannot be loaded makes the open fail, as in QEMU."""
    drv.bitmaps = []
    drv.bitmap_info = None
    if drv.header.bitmaps is not None and not drv.header.autoclear_features \
            & L.AUTOCLEAR_BITMAPS:
        drv.node.graph.emit("WARNING", {"msg": "a program lacking bitmap support modified "
                                        "this file, so all bitmaps are now considered "
                                        "inconsistent"})
    if not ext_valid(drv):
        return
    drv.bitmaps = await load_directory(drv)      # qemu-img check refuses one too
    drv.bitmap_info = [bm.info() for bm in drv.bitmaps]
    if drv.flags.no_io:
        return
    for bm in drv.bitmaps:
        bm.readonly = drv.node.read_only
        if not bm.inconsistent:
            bm.bits = await _read_bits(drv, bm)
        else:                   # QEMU: not recording, all bits clear
            bm.enabled = False
            bm.resize(drv.header.size)


async def open_writable(drv: "Qcow2State") -> bool:
    """Mark the loaded consistent bitmaps in-use on disk (directory rewritten in
    place); returns False (nothing to do) when there are none."""
    mark = [bm for bm in drv.bitmaps if bm.persistent and not bm.inconsistent]
    if not mark:
        return False
    for bm in mark:
        bm.flags |= FLAG_IN_USE
    ext = drv.header.bitmaps
    assert ext is not None
    await drv.file.write(ext.directory_offset, build_directory(drv.bitmaps))
    await drv.file.flush()
    drv.bitmap_info = [bm.info() for bm in drv.bitmaps]
    return True


# ---------------------------------------------------------------------------------------
# Storing
# ---------------------------------------------------------------------------------------

async def _store_bits(drv: "Qcow2State", bm: Bitmap) -> None:
    """New clusters for the non-zero clusters of the bits, then a new table
    (QEMU's store_bitmap / store_bitmap_data)."""
    cs, rc = drv.cluster_size, drv.refcounts
    assert bm.bits is not None
    nbytes = len(bm.bits)
    tb_size = max(1, -(-nbytes // cs))
    if tb_size > MAX_TABLE_SIZE or tb_size * cs > MAX_PHYS_SIZE:
        raise InvalidArgument(f"Bitmap '{bm.name}' is too big")
    table = L.empty_table(tb_size * L.TABLE_ENTRY)
    for i in range(tb_size):
        chunk = bm.bits[i * cs:(i + 1) * cs]
        if not chunk.any():
            continue
        off = await rc.alloc_clusters(cs)
        table[i] = off
        await drv.overlap_check(off, cs)
        await drv.file.write(off, chunk.tobytes() + bytes(cs - len(chunk)))
    off = await rc.alloc_clusters(tb_size * 8)
    await drv.overlap_check(off, tb_size * 8)
    await drv.file.write(off, L.build_table(table))
    bm.table_offset, bm.table_size = off, tb_size


async def _free_table(drv: "Qcow2State", offset: int, size: int) -> None:
    """Free a bitmap table and the data clusters it names."""
    if not size:
        return
    raw = await drv.file.read(offset, size * 8)
    for off in [e & TABLE_OFFSET_MASK for e in L.parse_table(raw)]:
        if not off:
            continue
        await drv.free_clusters(off, drv.cluster_size, Discard.ALWAYS)
    await drv.free_clusters(offset, size * 8, Discard.OTHER)


async def write_directory(drv: "Qcow2State", bitmaps: list[Bitmap]) -> None:
    """A new directory (or none), the header, then the old directory is freed (QEMU's
    update_ext_header_and_dir)."""
    h = drv.header
    old = h.bitmaps if ext_valid(drv) else None
    if bitmaps:
        if len(bitmaps) > L.MAX_BITMAPS:
            raise InvalidArgument("Too many persistent bitmaps")
        data = build_directory(bitmaps)
        off = await drv.refcounts.alloc_clusters(len(data))
        await drv.overlap_check(off, len(data))
        await drv.file.write(off, data)
        await drv.l2_cache.flush()
        await drv.rb_cache.flush()
        h.bitmaps = L.BitmapsExt(len(bitmaps), 0, len(data), off)
        h.autoclear_features |= L.AUTOCLEAR_BITMAPS
    else:
        h.bitmaps = None
        h.autoclear_features &= ~L.AUTOCLEAR_BITMAPS
    await drv.update_header()
    await drv.file.flush()
    if old is not None and old.directory_size:
        await drv.free_clusters(old.directory_offset, old.directory_size, Discard.OTHER)
    drv.bitmap_info = [bm.info() for bm in bitmaps] or None


async def store(drv: "Qcow2State") -> None:
    """Store every persistent, consistent bitmap (QEMU's
    qcow2_store_persistent_dirty_bitmaps, at close)."""
    persistent = [bm for bm in drv.bitmaps if bm.persistent]
    if not persistent or drv.node.read_only:
        return
    on_disk = {bm.name: bm for bm in await load_directory(drv)}
    drop: list[tuple[int, int]] = []
    out: list[Bitmap] = list(on_disk.values())
    for bm in persistent:
        if bm.inconsistent:
            continue
        disk = on_disk.get(bm.name)
        if disk is not None:
            drop.append((disk.table_offset, disk.table_size))
            out[out.index(disk)] = bm
        else:
            out.append(bm)
        bm.flags = FLAG_AUTO if bm.enabled else 0
    async with drv.lock:
        for bm in persistent:
            if not bm.inconsistent:
                await _store_bits(drv, bm)
        await write_directory(drv, out)
        for off, size in drop:
            await _free_table(drv, off, size)
        await drv.l2_cache.write_back()
        await drv.rb_cache.flush()


# ---------------------------------------------------------------------------------------
# The driver API
# ---------------------------------------------------------------------------------------

def default_granularity(cluster_size: int) -> int:
    return min(65536, max(4096, cluster_size))


class BitmapOps:
    """The dirty bitmaps of the image of state ``s`` (the driver's ``bitmap_*``).

    ``bitmap_list()`` -> entries like ``qemu-img info``'s plus ``recording``,
    ``persistent``, ``inconsistent`` and ``count`` (dirty bytes);
    ``bitmap_add(name, granularity=None, persistent=True, disabled=False)``;
    ``bitmap_remove(name)``; ``bitmap_clear(name)``;
    ``bitmap_set_enabled(name, enabled)``; ``bitmap_merge(target, source)`` (source: a
    name here or a :class:`Bitmap`, e.g. from another image's ``bitmap_find``);
    ``bitmap_get(name)`` -> the dirty bits as a numpy bool array;
    ``bitmap_set(name, offset, length, value=True)``.  Persistent bitmaps reach the
    image when it is closed, as in QEMU.
    """

    def __init__(self, state: Qcow2State) -> None:
        self.s = state

    async def open_writable(self) -> None:
        """Writes from now on mark the enabled bitmaps; the loaded ones become in-use
        on disk."""
        self.s.node.write_observers.append(self._bitmap_observer)
        await open_writable(self.s)

    def _bitmap_observer(self, node: "BlockNode", offset: int,
                         length: int) -> None:
        for bm in self.s.bitmaps:
            if bm.enabled and not bm.inconsistent:
                bm.set_range(offset, length)

    def bitmap_find(self, name: str) -> Bitmap:
        for bm in self.s.bitmaps:
            if bm.name == name:
                return bm
        raise NodeNotFound(f"Dirty bitmap '{name}' not found")

    def _usable(self, name: str) -> Bitmap:
        bm = self.bitmap_find(name)
        if bm.inconsistent:
            raise InvalidArgument(f"Bitmap '{name}' is inconsistent and cannot be used")
        return bm

    def bitmap_list(self) -> list[dict[str, Any]]:
        out = []
        for bm in self.s.bitmaps:
            d = bm.info()
            d.update(recording=bm.enabled, persistent=bm.persistent,
                     inconsistent=bm.inconsistent, count=bm.count() * bm.granularity)
            out.append(d)
        return out

    async def bitmap_add(self, name: str, granularity: int | None = None,
                         persistent: bool = True, disabled: bool = False) -> None:
        if not name:
            raise InvalidArgument("Bitmap name cannot be empty")
        if len(name.encode()) > MAX_NAME_SIZE:
            raise InvalidArgument("Bitmap name too long")
        gran = granularity or default_granularity(self.s.cluster_size)
        if gran & (gran - 1):
            raise InvalidArgument("Granularity must be power of 2")
        if any(bm.name == name for bm in self.s.bitmaps):
            raise InvalidArgument(f"Bitmap already exists: {name}")
        gbits = gran.bit_length() - 1
        if persistent:
            self._can_store(name, gbits)
        bm = Bitmap(name, gbits, persistent=persistent, enabled=not disabled)
        bm.resize(self.s.header.size)
        self.s.bitmaps.append(bm)

    def _can_store(self, name: str, gbits: int) -> None:
        prefix = f"Can't make bitmap '{name}' persistent in '{self.s.node.name}': "
        if self.s.header.version < 3:
            raise InvalidArgument(prefix + "Cannot store dirty bitmaps in qcow2 v2 files")
        if gbits > MAX_GRANULARITY_BITS:
            raise InvalidArgument(prefix + "Granularity exceeds maximum (2147483648 bytes)")
        if gbits < MIN_GRANULARITY_BITS:
            raise InvalidArgument(prefix + "Granularity is under minimum (512 bytes)")
        nbytes = -(-(-(-self.s.header.size >> gbits)) // 8)
        if nbytes > MAX_PHYS_SIZE or -(-nbytes // self.s.cluster_size) > MAX_TABLE_SIZE:
            raise InvalidArgument(prefix + "Too much space will be occupied by the bitmap. "
                                  "Use larger granularity")
        stored = [bm for bm in self.s.bitmaps if bm.persistent]
        if len(stored) + 1 > L.MAX_BITMAPS:
            raise InvalidArgument(prefix + "Maximum number of persistent bitmaps is already "
                                  "reached")
        size = sum(bm.entry_size() for bm in stored) + L.bitmap_entry_size(len(name.encode()))
        if size > L.MAX_BITMAP_DIRECTORY_SIZE:
            raise InvalidArgument(prefix + "Not enough space in the bitmap directory")

    async def bitmap_remove(self, name: str) -> None:
        bm = self.bitmap_find(name)
        self.s.bitmaps.remove(bm)
        if not bm.persistent:
            return
        with metadata_io():
            on_disk = await load_directory(self.s)
            disk = next((d for d in on_disk if d.name == name), None)
            if disk is None:
                return
            on_disk.remove(disk)
            async with self.s.lock:
                await write_directory(self.s, on_disk)
                await _free_table(self.s, disk.table_offset, disk.table_size)
                await self.s.l2_cache.write_back()
                await self.s.rb_cache.flush()

    async def bitmap_clear(self, name: str) -> None:
        bm = self._usable(name)
        assert bm.bits is not None
        bm.bits[:] = 0

    async def bitmap_set_enabled(self, name: str, enabled: bool) -> None:
        self._usable(name).enabled = enabled

    async def bitmap_merge(self, target: str, source: "str | Bitmap") -> None:
        dst = self._usable(target)
        src = self._usable(source) if isinstance(source, str) else source
        if src.inconsistent or src.bits is None:
            raise InvalidArgument(f"Bitmap '{src.name}' is inconsistent and cannot be used")
        assert dst.bits is not None
        if src.granularity_bits == dst.granularity_bits and len(src.bits) == len(dst.bits):
            dst.bits |= src.bits
            return
        import numpy as np
        sbits = np.unpackbits(src.bits, bitorder="little")
        for i in np.flatnonzero(sbits[:src.nbits(self.s.header.size)]).tolist():
            dst.set_range(i << src.granularity_bits, src.granularity)

    def bitmap_get(self, name: str) -> "np.ndarray":
        import numpy as np
        bm = self._usable(name)
        assert bm.bits is not None
        return np.unpackbits(bm.bits, bitorder="little")[:bm.nbits(self.s.header.size)] \
            .astype(bool)

    def bitmap_set(self, name: str, offset: int, length: int,
                   value: bool = True) -> None:
        self._usable(name).set_range(offset, length, value)

    async def store_bitmaps(self) -> None:
        """Write the persistent bitmaps to the image (done at close)."""
        with metadata_io():
            await store(self.s)

    def check_resizable(self) -> None:
        """Resizing keeps the bitmaps (resized) unless one cannot be used."""
        for bm in self.s.bitmaps:
            if bm.persistent and bm.inconsistent:
                raise InvalidArgument(f"Bitmap '{bm.name}' is inconsistent and cannot be "
                                      "used\nTry block-dirty-bitmap-remove to delete this "
                                      "bitmap from disk")

    def resized(self, size: int) -> None:
        for bm in self.s.bitmaps:
            if bm.bits is not None:
                bm.resize(size)
