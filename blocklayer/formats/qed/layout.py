"""QED on-disk layout: the header and the tables, declared once with parse and build.

Names follow ``docs/interop/qed_spec.rst``.  Everything here is pure: bytes in, values
out, values in, bytes out, plus the index arithmetic and the offset checks that every
cluster and table offset goes through before it is used.
"""
from __future__ import annotations

import errno
import struct
import sys
from array import array
from dataclasses import dataclass, replace

from ...core.errors import ImageCorrupt, InvalidArgument, NotSupported

MAGIC = 0x00444551                      # "QED\0" little-endian
HEADER_STRUCT = struct.Struct("<IIIIQQQQQII")
HEADER_SIZE = HEADER_STRUCT.size        # 64 bytes

F_BACKING_FILE = 0x01
F_NEED_CHECK = 0x02
F_BACKING_FORMAT_NO_PROBE = 0x04
FEATURE_MASK = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE
COMPAT_FEATURE_MASK = 0
AUTOCLEAR_FEATURE_MASK = 0

MIN_CLUSTER_SIZE = 4 << 10
MAX_CLUSTER_SIZE = 64 << 20
DEFAULT_CLUSTER_SIZE = 64 << 10
MIN_TABLE_SIZE = 1
MAX_TABLE_SIZE = 16
DEFAULT_TABLE_SIZE = 4
SECTOR = 512
MAX_BACKING_NAME = 4095                 # QEMU keeps names in a PATH_MAX buffer

UNALLOCATED = 0                         # L1 or L2 entry: nothing here
ZERO_CLUSTER = 1                        # L2 entry: reads as zeroes, stops the backing file
ENTRY = 8                               # bytes per table entry


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def cluster_size_valid(cluster_size: int) -> bool:
    return _is_pow2(cluster_size) and MIN_CLUSTER_SIZE <= cluster_size <= MAX_CLUSTER_SIZE


def table_size_valid(table_size: int) -> bool:
    return _is_pow2(table_size) and MIN_TABLE_SIZE <= table_size <= MAX_TABLE_SIZE


def max_image_size(cluster_size: int, table_size: int) -> int:
    """The most an L1 table can reach: TABLE_NOFFSETS² clusters."""
    nelems = table_size * cluster_size // ENTRY
    return nelems * nelems * cluster_size


def image_size_valid(size: int, cluster_size: int, table_size: int) -> bool:
    return size % SECTOR == 0 and 0 <= size <= max_image_size(cluster_size, table_size)


# ---------------------------------------------------------------------------------------
# Header
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Header:
    """The 64-byte header at offset 0 (the backing name follows it, elsewhere)."""

    magic: int = MAGIC
    cluster_size: int = DEFAULT_CLUSTER_SIZE
    table_size: int = DEFAULT_TABLE_SIZE
    header_size: int = 1
    features: int = 0
    compat_features: int = 0
    autoclear_features: int = 0
    l1_table_offset: int = 0
    image_size: int = 0
    backing_filename_offset: int = 0
    backing_filename_size: int = 0

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> "Header":
        if len(buf) < HEADER_SIZE:
            raise InvalidArgument("Image not in QED format")
        return cls(*HEADER_STRUCT.unpack_from(buf, 0))

    def build(self) -> bytes:
        return HEADER_STRUCT.pack(
            self.magic, self.cluster_size, self.table_size, self.header_size,
            self.features, self.compat_features, self.autoclear_features,
            self.l1_table_offset, self.image_size, self.backing_filename_offset,
            self.backing_filename_size)

    def with_(self, **changes: int) -> "Header":
        return replace(self, **changes)

    def has(self, feature: int) -> bool:
        return bool(self.features & feature)

    @property
    def header_bytes(self) -> int:
        return self.header_size * self.cluster_size

    @property
    def table_bytes(self) -> int:
        return self.table_size * self.cluster_size


# ---------------------------------------------------------------------------------------
# Geometry: index arithmetic and offset checks
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Geometry:
    """What the header's sizes mean for address translation."""

    cluster_size: int
    table_size: int
    header_size: int

    @classmethod
    def of(cls, header: Header) -> "Geometry":
        return cls(header.cluster_size, header.table_size, header.header_size)

    @property
    def cluster_bits(self) -> int:
        return self.cluster_size.bit_length() - 1

    @property
    def table_nelems(self) -> int:
        return self.table_size * self.cluster_size // ENTRY

    @property
    def table_bytes(self) -> int:
        return self.table_size * self.cluster_size

    @property
    def l2_coverage(self) -> int:
        """Guest bytes one L2 table maps."""
        return self.table_nelems * self.cluster_size

    @property
    def header_bytes(self) -> int:
        return self.header_size * self.cluster_size

    def l1_index(self, pos: int) -> int:
        return pos // self.l2_coverage

    def l2_index(self, pos: int) -> int:
        return (pos >> self.cluster_bits) % self.table_nelems

    def offset_into_cluster(self, pos: int) -> int:
        return pos & (self.cluster_size - 1)

    def start_of_cluster(self, pos: int) -> int:
        return pos & ~(self.cluster_size - 1)

    def bytes_to_clusters(self, n: int) -> int:
        return -(-n // self.cluster_size)

    def cluster_offset_valid(self, offset: int, file_size: int) -> bool:
        """A data (or table) cluster: aligned, after the header, inside the file."""
        if offset & (self.cluster_size - 1):
            return False
        return self.header_bytes <= offset < file_size

    def table_offset_valid(self, offset: int, file_size: int) -> bool:
        """A whole table: every one of its clusters valid, no overflow.

        Unlike QEMU 7.2 (whose check refuses every table when ``table_size`` is 1), a
        one-cluster table is accepted.
        """
        end = offset + (self.table_size - 1) * self.cluster_size
        if end >= 1 << 64:
            return False
        return (self.cluster_offset_valid(offset, file_size)
                and self.cluster_offset_valid(end, file_size))


def is_data_offset(entry: int) -> bool:
    return entry not in (UNALLOCATED, ZERO_CLUSTER)


# ---------------------------------------------------------------------------------------
# Header validation (QEMU's wording and order)
# ---------------------------------------------------------------------------------------

def _bad(message: str) -> ImageCorrupt:
    return ImageCorrupt(message, errno.EINVAL)


def validate_header(h: Header, file_bytes: int) -> int:
    """Refuse a header QEMU refuses (and some it accepts but should not).

    Returns the usable file size (rounded down to whole clusters).  Raises
    :class:`InvalidArgument` / :class:`NotSupported` / :class:`ImageCorrupt`.
    """
    if h.magic != MAGIC:
        raise InvalidArgument("Image not in QED format")
    if h.features & ~FEATURE_MASK:
        raise NotSupported("Unsupported QED features: %x" % (h.features & ~FEATURE_MASK))
    if not cluster_size_valid(h.cluster_size):
        raise _bad("QED cluster size is invalid")
    file_size = file_bytes & ~(h.cluster_size - 1)
    if not table_size_valid(h.table_size):
        raise _bad("QED table size is invalid")
    if not image_size_valid(h.image_size, h.cluster_size, h.table_size):
        raise _bad("QED image size is invalid")
    # header_size 0 is accepted, as QEMU does (its check then finds the header leaked)
    geo = Geometry.of(h)
    if not geo.table_offset_valid(h.l1_table_offset, file_size):
        raise _bad("QED table offset is invalid")
    if h.header_bytes > 0xFFFFFFFF:
        raise _bad("QED header size is too large")
    if h.has(F_BACKING_FILE):
        end = h.backing_filename_offset + h.backing_filename_size
        if end > h.header_bytes:
            raise _bad("QED backing filename offset is invalid")
        if h.backing_filename_size > MAX_BACKING_NAME:
            raise _bad("QED backing filename is too long")
    return file_size


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------

def parse_table(buf: bytes | bytearray | memoryview) -> array:
    """Little-endian u64 offsets -> a mutable ``array('Q')``."""
    table = array("Q")
    table.frombytes(bytes(buf))
    if sys.byteorder != "little":
        table.byteswap()
    return table


def build_table(table: array, start: int = 0, end: int | None = None) -> bytes:
    part = table[start:end]
    if sys.byteorder != "little":
        part.byteswap()
    return part.tobytes()


def empty_table(geo: Geometry) -> array:
    return array("Q", bytes(geo.table_bytes))


def sector_span(index: int, count: int) -> tuple[int, int]:
    """Entries ``[index, index+count)`` widened to whole 512-byte sectors (as QEMU
    writes tables): returns the first and past-the-last entry index."""
    per_sector = SECTOR // ENTRY
    first = index - index % per_sector
    last = -(-(index + count) // per_sector) * per_sector
    return first, last
