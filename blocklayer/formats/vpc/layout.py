"""VHD on-disk layout: the footer, the dynamic disk header and the BAT, declared once.

Names follow the VHD specification (and QEMU's ``block/vpc.c``).  Everything is
big-endian.  The footer (512 bytes) ends every image and, for a dynamic image, is also
copied at offset 0; the dynamic disk header (1024 bytes) says where the Block
Allocation Table is; each allocated block is a sector bitmap followed by the block's
data.  The CHS geometry arithmetic and QEMU's size rounding live here too.
"""
from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from ..vdi.shared import StructLayout

SECTOR = 512
FOOTER_SIZE = 512
DYN_HEADER_SIZE = 1024
CREATOR = b"conectix"
DYN_MAGIC = b"cxsparse"

TYPE_FIXED = 2
TYPE_DYNAMIC = 3
TYPE_DIFFERENCING = 4

TIMESTAMP_BASE = 946684800              # 2000-01-01 00:00:00 UTC
CHS_MAX_C, CHS_MAX_H, CHS_MAX_S = 65535, 16, 255
MAX_GEOMETRY = CHS_MAX_C * CHS_MAX_H * CHS_MAX_S
MAX_SECTORS = 0xFF000000                # 2040 GiB
DEFAULT_BLOCK_SIZE = 0x200000
BAT_OFFSET = 3 * SECTOR                 # where QEMU puts the BAT
UNALLOCATED = 0xFFFFFFFF
NO_OFFSET = 0xFFFFFFFFFFFFFFFF
ENTRY = 4

#: creator applications whose images are sized by ``current_size``, not by CHS
SIZED_BY_CURRENT_SIZE = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")

FOOTER_STRUCT = struct.Struct(">8sIIQI4sHH4sQQHBBII16sB427s")
DYN_STRUCT = struct.Struct(">8sQQIIII16sII512s192s256s")
assert FOOTER_STRUCT.size == FOOTER_SIZE and DYN_STRUCT.size == DYN_HEADER_SIZE
CHECKSUM_AT = 64                        # the footer's checksum field


def checksum(buf: bytes) -> int:
    """One's complement of the byte sum (the checksum field must be zero in ``buf``)."""
    return ~sum(buf) & 0xFFFFFFFF


class Checksummed(StructLayout):
    """A layout with a ``checksum`` field over all of its bytes."""

    __slots__ = ()

    def _sum(self) -> int:
        return checksum(self.with_(checksum=0).build())

    def with_checksum(self: C) -> C:
        return self.with_(checksum=self._sum())

    def checksum_ok(self) -> bool:
        return self._sum() == getattr(self, "checksum")


C = TypeVar("C", bound=Checksummed)


@dataclass(frozen=True, slots=True)
class Footer(Checksummed):
    STRUCT: ClassVar[struct.Struct] = FOOTER_STRUCT
    creator: bytes = CREATOR
    features: int = 2
    version: int = 0x00010000
    data_offset: int = NO_OFFSET
    timestamp: int = 0
    creator_app: bytes = b"qemu"
    major: int = 5
    minor: int = 3
    creator_os: bytes = b"Wi2k"
    orig_size: int = 0
    current_size: int = 0
    cyls: int = 0
    heads: int = 0
    secs_per_cyl: int = 0
    type: int = TYPE_DYNAMIC
    checksum: int = 0
    uuid: bytes = bytes(16)
    in_saved_state: int = 0
    reserved: bytes = b""

    @property
    def chs_sectors(self) -> int:
        return self.cyls * self.heads * self.secs_per_cyl


@dataclass(frozen=True, slots=True)
class DynHeader(Checksummed):
    STRUCT: ClassVar[struct.Struct] = DYN_STRUCT
    magic: bytes = DYN_MAGIC
    data_offset: int = NO_OFFSET
    table_offset: int = BAT_OFFSET
    version: int = 0x00010000
    max_table_entries: int = 0
    block_size: int = DEFAULT_BLOCK_SIZE
    checksum: int = 0
    parent_uuid: bytes = bytes(16)
    parent_timestamp: int = 0
    reserved: int = 0
    parent_name: bytes = b""
    parent_locators: bytes = b""
    reserved2: bytes = b""


def bitmap_size(block_size: int) -> int:
    """Bytes of the sector bitmap in front of each block (whole sectors)."""
    return (block_size // (8 * SECTOR) + 511) & ~511


# ---------------------------------------------------------------------------------------
# CHS geometry and QEMU's size rounding
# ---------------------------------------------------------------------------------------

def geometry(total_sectors: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for ``total_sectors``, as the VHD spec's
    algorithm computes them, with QEMU's extension to 255 sectors per track."""
    total = min(total_sectors, MAX_GEOMETRY)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max(-(-cth // 1024) & 0xFF, 4)     # QEMU keeps heads in a uint8_t
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return (cth // heads) & 0xFFFF, heads, spt


class SizeTooLarge(ValueError):
    """The size cannot be represented (more than 2040 GiB)."""


def rounded_size(size: int, force_size: bool) -> tuple[int, tuple[int, int, int]]:
    """QEMU's size for a new image of ``size`` bytes (a multiple of 512) and its CHS:
    the first CHS geometry that holds the size, unless that is the largest geometry
    (or ``force_size``), when the size is kept as it is."""
    if force_size:
        chs = (CHS_MAX_C, CHS_MAX_H, CHS_MAX_S)
    else:
        total = min(MAX_GEOMETRY, size // SECTOR)
        chs, i = (0, 0, 0), 0
        while total > chs[0] * chs[1] * chs[2]:
            chs = geometry(total + i)
            i += 1
    if chs[0] * chs[1] * chs[2] == MAX_GEOMETRY:
        sectors = size // SECTOR
        if sectors > MAX_SECTORS:
            raise SizeTooLarge("Disk size is too large, max size is 2040 GiB")
    else:
        sectors = chs[0] * chs[1] * chs[2]
    return sectors * SECTOR, chs


def guest_sectors(footer: Footer, force_chs: bool, force_size: bool) -> int:
    """The virtual size in sectors: the CHS geometry's, except for images whose creator
    sizes by ``current_size`` or whose geometry is the largest (QEMU's rules)."""
    use_chs = footer.creator_app not in SIZED_BY_CURRENT_SIZE or force_chs
    sectors = footer.chs_sectors
    if not use_chs or sectors == MAX_GEOMETRY or force_size:
        sectors = footer.current_size // SECTOR
    return sectors


# ---------------------------------------------------------------------------------------
# The BAT
# ---------------------------------------------------------------------------------------

def parse_bat(buf: bytes | bytearray | memoryview, count: int) -> array:
    bat = array("I")
    bat.frombytes(bytes(buf[:count * ENTRY]))
    if sys.byteorder == "little":
        bat.byteswap()
    return bat


def build_entry(value: int) -> bytes:
    return value.to_bytes(ENTRY, "big")


def round_up(n: int, align: int) -> int:
    return -(-n // align) * align
