"""The qcow2 header and header extensions, parsed and built (docs/interop/qcow2.txt).

Bytes in, a :class:`Header` out, and back: no I/O here.  Validation follows QEMU 7.2
(``qcow2_do_open`` / ``qcow2_read_extensions``) and raises its messages.
"""
from __future__ import annotations

import errno
import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from ...core.errors import BlockError, ImageCorrupt, InvalidArgument, NotSupported

if TYPE_CHECKING:
    import numpy as np

MAGIC = 0x514649FB
V2_HEADER = struct.Struct(">IIQIIQIIQQIIQ")            # 72 bytes
V3_FIELDS = struct.Struct(">QQQII")                     # bytes 72..103
V2_FIELD_NAMES = ("magic", "version", "backing_file_offset", "backing_file_size",
                  "cluster_bits", "size", "crypt_method", "l1_size", "l1_table_offset",
                  "refcount_table_offset", "refcount_table_clusters", "nb_snapshots",
                  "snapshots_offset")
V3_FIELD_NAMES = ("incompatible_features", "compatible_features", "autoclear_features",
                  "refcount_order", "header_length")


def _field_places() -> dict[str, tuple[int, str]]:
    """Header field name -> (byte offset, struct code), from the two declarations."""
    out: dict[str, tuple[int, str]] = {}
    for base, layout, names in ((0, V2_HEADER, V2_FIELD_NAMES),
                                (V2_HEADER.size, V3_FIELDS, V3_FIELD_NAMES)):
        codes = layout.format[1:]
        for i, name in enumerate(names):
            out[name] = (base + struct.calcsize(">" + codes[:i]), codes[i])
    return out


HEADER_FIELDS = _field_places()


def header_field_writes(fields: dict[str, int]) -> list[tuple[int, bytes]]:
    """The in-place writes that store these header fields: (offset, bytes), one per
    run of adjacent fields, in file order."""
    places = sorted((HEADER_FIELDS[name] + (value,) for name, value in fields.items()))
    out: list[tuple[int, bytes]] = []
    for offset, code, value in places:
        data = struct.pack(">" + code, value)
        if out and out[-1][0] + len(out[-1][1]) == offset:
            out[-1] = (out[-1][0], out[-1][1] + data)
        else:
            out.append((offset, data))
    return out


def header_field_span(names: tuple[str, ...]) -> tuple[int, int]:
    """(offset, length) of the bytes that hold these adjacent header fields."""
    first, _ = HEADER_FIELDS[names[0]]
    last, code = HEADER_FIELDS[names[-1]]
    return first, last + struct.calcsize(">" + code) - first


def parse_header_fields(data: bytes, names: tuple[str, ...]) -> tuple[int, ...]:
    """The values of adjacent header fields from the bytes at their span."""
    base = HEADER_FIELDS[names[0]][0]
    return tuple(int(struct.unpack_from(">" + HEADER_FIELDS[n][1], data,
                                        HEADER_FIELDS[n][0] - base)[0]) for n in names)


def probe_version(buf: bytes) -> int | None:
    """The version of a qcow2 header at the start of ``buf``; None if not qcow2."""
    if len(buf) < 8:
        return None
    magic, version = struct.unpack_from(">II", buf)
    return version if magic == MAGIC else None


def peek_cluster_bits(buf: bytes | bytearray) -> int | None:
    """``cluster_bits`` of a qcow2 header at the start of ``buf`` (None if too short
    or not qcow2), to know how much of the file holds the header."""
    offset, code = HEADER_FIELDS["cluster_bits"]
    if len(buf) < offset + 4 or struct.unpack_from(">I", buf)[0] != MAGIC:
        return None
    return int(struct.unpack_from(">" + code, buf, offset)[0])
V2_HEADER_LENGTH = 72
V3_MIN_HEADER_LENGTH = 104
V3_HEADER_LENGTH = 112                                  # with compression_type + padding

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_L1_SIZE = 32 << 20                                  # bytes
MAX_REFTABLE_SIZE = 8 << 20                             # bytes
MAX_SNAPSHOTS = 65536
SNAPSHOT_HEADER_SIZE = 40
MAX_CLUSTER_OFFSET = (1 << 56) - 1
MAX_BACKING_NAME = 1023
MAX_BITMAPS = 65535
MAX_BITMAP_DIRECTORY_SIZE = 1024 * MAX_BITMAPS
INT64_MAX = (1 << 63) - 1

# feature bits
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_MASK = 0x1F
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1
AUTOCLEAR_MASK = 0x3

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1
COMPRESSION_NAMES = {COMPRESSION_ZLIB: "zlib", COMPRESSION_ZSTD: "zstd"}

CRYPT_NONE, CRYPT_AES, CRYPT_LUKS = 0, 1, 2

# header extension types
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

FEATURE_INCOMPAT, FEATURE_COMPAT, FEATURE_AUTOCLEAR = 0, 1, 2
FEATURE_ENTRY = struct.Struct(">BB46s")

#: what QEMU 7.2 writes into every v3 image, in its order
QEMU_FEATURE_TABLE: tuple[tuple[int, int, str], ...] = (
    (FEATURE_INCOMPAT, 0, "dirty bit"),
    (FEATURE_INCOMPAT, 1, "corrupt bit"),
    (FEATURE_INCOMPAT, 2, "external data file"),
    (FEATURE_INCOMPAT, 3, "compression type"),
    (FEATURE_INCOMPAT, 4, "extended L2 entries"),
    (FEATURE_COMPAT, 0, "lazy refcounts"),
    (FEATURE_AUTOCLEAR, 0, "bitmaps"),
    (FEATURE_AUTOCLEAR, 1, "raw external data"),
)


@dataclass(slots=True)
class BitmapsExt:
    nb_bitmaps: int
    reserved: int
    directory_size: int
    directory_offset: int

    FORMAT = struct.Struct(">IIQQ")

    def build(self) -> bytes:
        return self.FORMAT.pack(self.nb_bitmaps, self.reserved, self.directory_size,
                                self.directory_offset)


@dataclass(slots=True)
class CryptoExt:
    offset: int
    length: int

    FORMAT = struct.Struct(">QQ")

    def build(self) -> bytes:
        return self.FORMAT.pack(self.offset, self.length)


@dataclass
class Header:
    """Every field of the qcow2 header, plus the header extensions and backing name."""

    version: int = 3
    backing_file_offset: int = 0
    backing_file_size: int = 0
    cluster_bits: int = 16
    size: int = 0
    crypt_method: int = CRYPT_NONE
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V3_HEADER_LENGTH
    compression_type: int = COMPRESSION_ZLIB
    unknown_header_fields: bytes = b""      # bytes beyond 112 up to header_length
    # extensions
    backing_format: str | None = None
    data_file: str | None = None
    feature_table: list[tuple[int, int, str]] = field(default_factory=list)
    has_feature_table: bool = False
    bitmaps: BitmapsExt | None = None
    crypto: CryptoExt | None = None
    unknown_extensions: list[tuple[int, bytes]] = field(default_factory=list)
    backing_file: str | None = None

    # ---- derived values ----------------------------------------------------------
    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_EXTL2)

    @property
    def has_data_file(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_DATA_FILE)

    @property
    def data_file_raw(self) -> bool:
        return bool(self.autoclear_features & AUTOCLEAR_DATA_FILE_RAW)

    @property
    def lazy_refcounts(self) -> bool:
        return bool(self.compatible_features & COMPAT_LAZY_REFCOUNTS)

    @property
    def l2_entry_size(self) -> int:
        return 16 if self.extended_l2 else 8

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // self.l2_entry_size

    # ---- building ----------------------------------------------------------------
    def build_fixed(self) -> bytes:
        """The fixed part of the header (72 bytes for v2, ``header_length`` for v3)."""
        head = V2_HEADER.pack(MAGIC, self.version, self.backing_file_offset,
                              self.backing_file_size, self.cluster_bits, self.size,
                              self.crypt_method, self.l1_size, self.l1_table_offset,
                              self.refcount_table_offset, self.refcount_table_clusters,
                              self.nb_snapshots, self.snapshots_offset)
        if self.version < 3:
            return head
        head += V3_FIELDS.pack(self.incompatible_features, self.compatible_features,
                               self.autoclear_features, self.refcount_order,
                               self.header_length)
        if self.header_length > V3_MIN_HEADER_LENGTH:
            head += bytes([self.compression_type]) + bytes(7)
            head += self.unknown_header_fields
        return head[:self.header_length]

    def build_extensions(self) -> bytes:
        """The extensions in the order QEMU writes them, ending with the end marker."""
        out = bytearray()

        def ext(kind: int, data: bytes) -> None:
            out.extend(struct.pack(">II", kind, len(data)))
            out.extend(data)
            out.extend(bytes(-len(data) % 8))

        if self.backing_format:
            ext(EXT_BACKING_FORMAT, self.backing_format.encode())
        if self.data_file:
            ext(EXT_DATA_FILE, self.data_file.encode())
        if self.crypto is not None:
            ext(EXT_CRYPTO, self.crypto.build())
        if self.has_feature_table:
            ext(EXT_FEATURE_TABLE, b"".join(
                FEATURE_ENTRY.pack(t, b, n.encode()[:46]) for t, b, n in self.feature_table))
        if self.bitmaps is not None:
            ext(EXT_BITMAPS, self.bitmaps.build())
        for kind, data in self.unknown_extensions:
            ext(kind, data)
        out.extend(bytes(8))
        return bytes(out)

    def build(self) -> bytes:
        """Header, extensions and backing file name, as one buffer for cluster 0.

        Sets ``backing_file_offset``/``backing_file_size``; raises if it does not fit.
        """
        if self.version >= 3 and self.header_length < V3_HEADER_LENGTH:
            self.header_length = V3_HEADER_LENGTH
        fixed_len = V2_HEADER_LENGTH if self.version < 3 else self.header_length
        exts = self.build_extensions()
        name = self.backing_file.encode() if self.backing_file else b""
        if name:
            self.backing_file_offset = fixed_len + len(exts)
            self.backing_file_size = len(name)
        else:
            self.backing_file_offset = self.backing_file_size = 0
        buf = self.build_fixed() + exts + name
        if len(buf) > self.cluster_size:
            raise NoSpaceForHeader("Cannot fit the header, its extensions and the backing "
                                   "file name into the first cluster", errno.ENOSPC)
        return buf


class NoSpaceForHeader(BlockError):
    default_errno = errno.ENOSPC


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------

def validate_table(offset: int, entries: int, entry_len: int, max_bytes: int,
                   cluster_size: int, name: str) -> None:
    """QEMU's qcow2_validate_table: size limit, alignment, no overflow."""
    if entries > max_bytes // entry_len:
        raise BlockError(f"{name} too large", errno.EFBIG)
    if INT64_MAX - entries * entry_len < offset or offset % cluster_size:
        raise InvalidArgument(f"{name} offset invalid")


def parse_header(buf: bytes, *, writable: bool = False) -> Header:
    """Parse cluster 0 (or at least its first cluster_size bytes) of a qcow2 image."""
    if len(buf) < V2_HEADER_LENGTH:
        raise InvalidArgument("Image is not in qcow2 format")
    (magic, version, bfo, bfs, cluster_bits, size, crypt, l1_size, l1_off, rt_off,
     rt_clusters, nb_snap, snap_off) = V2_HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise InvalidArgument("Image is not in qcow2 format")
    if version < 2 or version > 3:
        raise NotSupported(f"Unsupported qcow2 version {version}")
    if cluster_bits < MIN_CLUSTER_BITS or cluster_bits > MAX_CLUSTER_BITS:
        raise InvalidArgument(f"Unsupported cluster size: 2^{cluster_bits}")
    cluster_size = 1 << cluster_bits
    h = Header(version=version, backing_file_offset=bfo, backing_file_size=bfs,
               cluster_bits=cluster_bits, size=size, crypt_method=crypt, l1_size=l1_size,
               l1_table_offset=l1_off, refcount_table_offset=rt_off,
               refcount_table_clusters=rt_clusters, nb_snapshots=nb_snap,
               snapshots_offset=snap_off)
    if version == 2:
        h.header_length = V2_HEADER_LENGTH
        h.refcount_order = 4
    else:
        if len(buf) < V3_MIN_HEADER_LENGTH:
            raise InvalidArgument("qcow2 header too short")
        (h.incompatible_features, h.compatible_features, h.autoclear_features,
         h.refcount_order, h.header_length) = V3_FIELDS.unpack_from(buf, V2_HEADER_LENGTH)
        if h.header_length < V3_MIN_HEADER_LENGTH:
            raise InvalidArgument("qcow2 header too short")
    if h.header_length > cluster_size:
        raise InvalidArgument("qcow2 header exceeds cluster size")
    if len(buf) < min(cluster_size, h.header_length):
        raise InvalidArgument("qcow2 header too short")
    if h.header_length > V3_MIN_HEADER_LENGTH:
        h.compression_type = buf[V3_MIN_HEADER_LENGTH]
        h.unknown_header_fields = bytes(buf[V3_HEADER_LENGTH:h.header_length])
    if bfo > cluster_size:
        raise InvalidArgument("Invalid backing file offset")
    ext_end = bfo if bfo else cluster_size
    _parse_extensions(h, buf, h.header_length, min(ext_end, len(buf)))
    unknown = h.incompatible_features & ~INCOMPAT_MASK
    if unknown:
        raise NotSupported("Unsupported qcow2 feature(s): " + _describe_features(h, unknown))
    if writable and h.incompatible_features & INCOMPAT_CORRUPT:
        raise BlockError("qcow2: Image is corrupt; cannot be opened read/write", errno.EACCES)
    if h.extended_l2 and cluster_size // 32 < 512:
        raise InvalidArgument(f"Unsupported subcluster size: {cluster_size // 32}")
    if h.refcount_order > 6:
        raise InvalidArgument("Reference count entry width too large; may not exceed 64 bits")
    _validate_compression(h)
    if crypt > CRYPT_LUKS:
        raise InvalidArgument(f"Unsupported encryption method: {crypt}")
    if rt_clusters > max_refcount_clusters(cluster_size):
        raise InvalidArgument("Reference count table too large")
    if rt_clusters == 0:
        raise InvalidArgument("Image does not contain a reference count table")
    validate_table(rt_off, rt_clusters, cluster_size, MAX_REFTABLE_SIZE, cluster_size,
                   "Reference count table")
    validate_table(snap_off, nb_snap, SNAPSHOT_HEADER_SIZE,
                   MAX_SNAPSHOTS * SNAPSHOT_HEADER_SIZE, cluster_size, "Snapshot table")
    validate_table(l1_off, l1_size, 8, MAX_L1_SIZE, cluster_size, "Active L1 table")
    vm_state_index = size_to_l1(size, cluster_bits, h.l2_entries)
    if vm_state_index > 0x7FFFFFFF:
        raise BlockError("Image is too big", errno.EFBIG)
    if l1_size < vm_state_index:
        raise InvalidArgument("L1 table is too small")
    if bfo:
        if bfs > min(MAX_BACKING_NAME, cluster_size - bfo) or bfo + bfs > len(buf):
            raise InvalidArgument("Backing file name too long")
        h.backing_file = bytes(buf[bfo:bfo + bfs]).decode("utf-8", "replace")
    if h.data_file_raw and not h.has_data_file:
        raise InvalidArgument("data-file-raw requires a data file")
    return h


def max_refcount_clusters(cluster_size: int) -> int:
    return MAX_REFTABLE_SIZE // cluster_size


def size_to_l1(size: int, cluster_bits: int, l2_entries: int) -> int:
    shift = cluster_bits + (l2_entries.bit_length() - 1)
    return (size + (1 << shift) - 1) >> shift


def _validate_compression(h: Header) -> None:
    if h.compression_type not in COMPRESSION_NAMES:
        raise NotSupported(f"qcow2: unknown compression type: {h.compression_type}")
    bit = bool(h.incompatible_features & INCOMPAT_COMPRESSION)
    if h.compression_type == COMPRESSION_ZLIB and bit:
        raise InvalidArgument("qcow2: Compression type incompatible feature bit must not be set")
    if h.compression_type != COMPRESSION_ZLIB and not bit:
        raise InvalidArgument("qcow2: Compression type incompatible feature bit must be set")


def _parse_extensions(h: Header, buf: bytes, start: int, end: int) -> None:
    offset = start
    seen: set[int] = set()
    while offset < end:
        if offset + 8 > end:
            raise InvalidArgument("Header extension too large")
        kind, length = struct.unpack_from(">II", buf, offset)
        offset += 8
        if length > end - offset:
            raise InvalidArgument("Header extension too large")
        if kind == EXT_END:
            return
        data = bytes(buf[offset:offset + length])
        offset += (length + 7) & ~7
        if kind in seen and kind != EXT_END:
            raise ImageCorrupt(f"Duplicate header extension 0x{kind:08x}")
        seen.add(kind)
        if kind == EXT_BACKING_FORMAT:
            if length > MAX_BACKING_NAME:
                raise InvalidArgument(f"ERROR: ext_backing_format: len={length} too large "
                                      f"(>={MAX_BACKING_NAME + 1})")
            h.backing_format = data.decode("utf-8", "replace")
        elif kind == EXT_FEATURE_TABLE:
            h.has_feature_table = True
            for pos in range(0, length - length % 48, 48):
                t, b, name = FEATURE_ENTRY.unpack_from(data, pos)
                h.feature_table.append((t, b, name.split(b"\0", 1)[0].decode("utf-8",
                                                                              "replace")))
        elif kind == EXT_CRYPTO:
            if length != CryptoExt.FORMAT.size:
                raise InvalidArgument("Invalid crypto header extension")
            h.crypto = CryptoExt(*CryptoExt.FORMAT.unpack(data))
        elif kind == EXT_BITMAPS:
            if length != BitmapsExt.FORMAT.size:
                raise InvalidArgument("bitmaps_ext: Invalid extension length")
            h.bitmaps = BitmapsExt(*BitmapsExt.FORMAT.unpack(data))
        elif kind == EXT_DATA_FILE:
            h.data_file = data.decode("utf-8", "replace")
        else:
            h.unknown_extensions.append((kind, data))


def validate_bitmaps_ext(h: Header) -> None:
    """Check the bitmaps extension as QEMU does when the autoclear bit vouches for it."""
    ext = h.bitmaps
    if ext is None or not h.autoclear_features & AUTOCLEAR_BITMAPS:
        return
    if ext.reserved:
        raise InvalidArgument("bitmaps_ext: reserved field is not zero")
    if ext.nb_bitmaps > MAX_BITMAPS:
        raise InvalidArgument(f"bitmaps_ext: Image has {ext.nb_bitmaps} bitmaps, exceeding "
                              f"the QEMU supported maximum of {MAX_BITMAPS}")
    if ext.nb_bitmaps == 0:
        raise InvalidArgument("found bitmaps extension with zero bitmaps")
    if ext.directory_offset % h.cluster_size:
        raise InvalidArgument("bitmaps_ext: invalid bitmap directory offset")
    if ext.directory_size > MAX_BITMAP_DIRECTORY_SIZE:
        raise InvalidArgument(f"bitmaps_ext: bitmap directory size ({ext.directory_size}) "
                              f"exceeds the maximum supported size "
                              f"({MAX_BITMAP_DIRECTORY_SIZE})")


def _describe_features(h: Header, mask: int) -> str:
    names = []
    for t, bit, name in h.feature_table:
        if t == FEATURE_INCOMPAT and bit < 64 and mask & (1 << bit):
            names.append(name)
            mask &= ~(1 << bit)
    if mask:
        names.append(f"Unknown incompatible feature: {mask:x}")
    return ", ".join(names)


# ---------------------------------------------------------------------------------------
# Snapshot table entry ("Snapshots"), each entry padded to 8 bytes:
#   u64 l1_table_offset  u32 l1_size  u16 id_str_size  u16 name_size
#   u32 date_sec  u32 date_nsec  u64 vm_clock_nsec  u32 vm_state_size
#   u32 extra_data_size  extra data  id string  name
# The known extra data is u64 vm_state_size_large, u64 disk_size, u64 icount.
# ---------------------------------------------------------------------------------------

SNAPSHOT_FIXED = struct.Struct(">QIHHIIQII")       # 40 bytes
assert SNAPSHOT_FIXED.size == SNAPSHOT_HEADER_SIZE
SNAPSHOT_EXTRA = struct.Struct(">QQQ")             # vm_state_size_large, disk_size, icount
MAX_SNAPSHOT_EXTRA_DATA = 1024


@dataclass
class SnapshotFixed:
    """The fixed part of one snapshot table entry."""

    l1_table_offset: int
    l1_size: int
    id_str_size: int
    name_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    extra_data_size: int

    @classmethod
    def parse(cls, raw: bytes | bytearray) -> SnapshotFixed:
        return cls(*SNAPSHOT_FIXED.unpack(raw))

    def build(self) -> bytes:
        return SNAPSHOT_FIXED.pack(self.l1_table_offset, self.l1_size, self.id_str_size,
                                   self.name_size, self.date_sec, self.date_nsec,
                                   self.vm_clock_nsec, self.vm_state_size,
                                   self.extra_data_size)

    @property
    def entry_size(self) -> int:
        """Bytes of the whole entry, without the padding after it."""
        return (SNAPSHOT_FIXED.size + self.extra_data_size + self.id_str_size
                + self.name_size)


# ---------------------------------------------------------------------------------------
# Bitmap directory entry ("Bitmaps"), each entry padded to 8 bytes:
#   u64 bitmap_table_offset  u32 bitmap_table_size  u32 flags  u8 type
#   u8 granularity_bits  u16 name_size  u32 extra_data_size  extra data  name
# Bitmap table entries: bits 9..55 the data cluster offset, bit 0 "all ones".
# ---------------------------------------------------------------------------------------

BITMAP_ENTRY = struct.Struct(">QIIBBHI")     # 24 bytes
BME_FLAG_IN_USE, BME_FLAG_AUTO, BME_FLAG_EXTRA_COMPAT = 1, 2, 4
BME_TABLE_OFFSET_MASK = 0x00FFFFFFFFFFFE00
BME_TABLE_RESERVED_MASK = 0xFF000000000001FE
BME_TABLE_ALL_ONES = 1
BME_MAX_TABLE_SIZE = 0x8000000


def bitmap_entry_size(name_size: int, extra_data_size: int = 0) -> int:
    """Bytes of one directory entry with its padding."""
    return (BITMAP_ENTRY.size + extra_data_size + name_size + 7) & ~7


@dataclass
class BitmapDirEntry:
    """One entry of the bitmap directory (the name follows the extra data)."""

    table_offset: int
    table_size: int
    flags: int
    type: int
    granularity_bits: int
    name_size: int
    extra_data_size: int
    raw_name: bytes = b""
    #: where the entry ends in the directory (with its padding)
    end: int = 0

    @classmethod
    def parse_from(cls, data: bytes, pos: int) -> BitmapDirEntry | None:
        """The entry at ``pos``; None if its fixed part does not fit.  The name is cut
        where the directory ends (callers check ``end``)."""
        if pos + BITMAP_ENTRY.size > len(data):
            return None
        e = cls(*BITMAP_ENTRY.unpack_from(data, pos))
        start = pos + BITMAP_ENTRY.size + e.extra_data_size
        e.raw_name = data[start:start + e.name_size]
        e.end = pos + bitmap_entry_size(e.name_size, e.extra_data_size)
        return e

    @property
    def name(self) -> str:
        return self.raw_name.decode("utf-8", "replace")

    @property
    def name_fits(self) -> bool:
        return len(self.raw_name) == self.name_size

    def build(self) -> bytes:
        raw = BITMAP_ENTRY.pack(self.table_offset, self.table_size, self.flags, self.type,
                                self.granularity_bits, len(self.raw_name),
                                0) + self.raw_name
        return raw + bytes(-len(raw) % 8)


def bitmap_directory(data: bytes, count: int, truncated: str) -> Iterator[BitmapDirEntry]:
    """``count`` entries of a directory whose size the header vouches for, one by one;
    a directory that ends early raises :class:`ImageCorrupt` with the message
    ``truncated``."""
    pos = 0
    for _ in range(count):
        e = BitmapDirEntry.parse_from(data, pos)
        if e is None:
            raise ImageCorrupt(truncated)
        yield e
        pos = e.end


def parse_bitmap_directory(data: bytes, count: int) -> list[dict[str, object]]:
    """Name, granularity and flags of each bitmap, as ``qemu-img info`` shows them."""
    out: list[dict[str, object]] = []
    for e in bitmap_directory(data, count, "Bitmap directory is truncated"):
        if not e.name_fits:
            raise ImageCorrupt("Bitmap directory is truncated")
        flag_names = [n for bit, n in ((BME_FLAG_IN_USE, "in-use"), (BME_FLAG_AUTO, "auto"))
                      if e.flags & bit]
        out.append({"name": e.name, "granularity": 1 << e.granularity_bits,
                    "flags": flag_names})
    return out


# ---------------------------------------------------------------------------------------
# Tables: L1 and L2 tables, the refcount table and blocks, bitmap tables
# ---------------------------------------------------------------------------------------
# On disk every entry is a big-endian unsigned integer (8 bytes, or the refcount width;
# refcounts narrower than a byte are packed LSB first).  In memory a table is an
# ``array`` of native integers, so the request path indexes plain ints without numpy;
# the bulk paths (check, repair, map over long runs) look at the same memory through
# :func:`as_ndarray`.

TABLE_ENTRY = 8                     # bytes per L1, L2, refcount table or bitmap table entry
#: ``array`` typecode of a table whose entries are this many bytes wide
_TYPECODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
assert all(array(tc).itemsize == n for n, tc in _TYPECODES.items())
_SWAP = sys.byteorder == "little"   # big-endian on disk


def refcount_typecode(refcount_order: int) -> str:
    """Typecode of a refcount block in memory (the raw bytes below 8 bits)."""
    return _TYPECODES[max(1, (1 << refcount_order) // 8)]


def parse_table(data: bytes | bytearray | memoryview, typecode: str = "Q") -> array:
    """Big-endian entries -> a mutable native ``array``."""
    table = array(typecode)
    table.frombytes(data)
    if _SWAP and table.itemsize > 1:
        table.byteswap()
    return table


def build_table(table: array, start: int = 0, end: int | None = None) -> bytes:
    """Entries ``[start, end)`` of ``table`` as they are on disk."""
    part = table[start:end]
    if _SWAP and part.itemsize > 1:
        part.byteswap()
    return part.tobytes()


def build_entries(*values: int) -> bytes:
    """8-byte table entries (L1, L2, refcount table, bitmap table) as on disk."""
    return struct.pack(f">{len(values)}Q", *values)


def empty_table(nbytes: int, typecode: str = "Q") -> array:
    return array(typecode, bytes(nbytes))


def table_as_ndarray(data: bytes | bytearray | memoryview) -> "np.ndarray":
    """Big-endian 8-byte entries -> a native ``uint64`` numpy array (a copy), for the
    bulk paths.  Imports numpy."""
    import numpy as np
    return np.frombuffer(data, ">u8").astype(np.uint64)


def as_ndarray(table: array) -> "np.ndarray":
    """The same memory as a numpy array (a view: writes go to ``table``).  Imports
    numpy: only for the bulk paths."""
    import numpy as np
    return np.frombuffer(table, dtype=np.dtype(table.typecode))
