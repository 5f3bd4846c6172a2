"""VDI on-disk layout: the 512-byte header and the block map, declared once.

Names follow VirtualBox's VDI 1.1 header (as QEMU's ``block/vdi.c`` names them).  The
header is little-endian; its four UUIDs are kept as the bytes on disk, so a header that
is parsed and built again is the same bytes (QEMU writes back what it read, except the
disk size, which it rounds up to whole sectors).  Everything here is pure.
"""
from __future__ import annotations

import errno
import struct
import sys
from array import array
from dataclasses import dataclass
from typing import ClassVar

from ...core.errors import InvalidArgument, NotSupported
from .shared import StructLayout

SIGNATURE = 0xBEDA107F
VERSION_1_1 = 0x00010001
TYPE_DYNAMIC = 1
TYPE_STATIC = 2
TEXT = b"<<< QEMU VM Virtual Disk Image >>>\n"

SECTOR = 512
BLOCK_SIZE = 1 << 20                    # the only block size QEMU accepts
HEADER_SIZE = 512                       # the struct QEMU reads and writes
V1_1_HEADER_SIZE = 0x180                # the header_size field QEMU writes
BMAP_OFFSET = 0x200                     # where QEMU puts the block map

UNALLOCATED = 0xFFFFFFFF                # never written: reads as zeroes here
DISCARDED = 0xFFFFFFFE                  # discarded: reads as zeroes
ENTRY = 4

#: the block map is read in one piece that must stay below 2 GiB (QEMU's INT_MAX)
BLOCKS_IN_IMAGE_MAX = ((1 << 31) - SECTOR) // ENTRY
DISK_SIZE_MAX = BLOCKS_IN_IMAGE_MAX * BLOCK_SIZE

#: text[64], signature, version, header_size, image_type, image_flags,
#: description[256], offset_bmap, offset_data, cylinders, heads, sectors, sector_size,
#: unused1, disk_size, block_size, block_extra, blocks_in_image, blocks_allocated,
#: uuid_image, uuid_last_snap, uuid_link, uuid_parent, unused2[56]
HEADER_STRUCT = struct.Struct("<64sIIIII256sIIIIIIIQIIII16s16s16s16s56s")
assert HEADER_STRUCT.size == HEADER_SIZE
NULL_UUID = bytes(16)


def is_allocated(entry: int) -> bool:
    return entry < DISCARDED


@dataclass(frozen=True, slots=True)
class Header(StructLayout):
    """The VDI header at offset 0."""

    STRUCT: ClassVar[struct.Struct] = HEADER_STRUCT

    text: bytes = TEXT
    signature: int = SIGNATURE
    version: int = VERSION_1_1
    header_size: int = V1_1_HEADER_SIZE
    image_type: int = TYPE_DYNAMIC
    image_flags: int = 0
    description: bytes = b""
    offset_bmap: int = BMAP_OFFSET
    offset_data: int = 0
    cylinders: int = 0
    heads: int = 0
    sectors: int = 0
    sector_size: int = SECTOR
    unused1: int = 0
    disk_size: int = 0
    block_size: int = BLOCK_SIZE
    block_extra: int = 0
    blocks_in_image: int = 0
    blocks_allocated: int = 0
    uuid_image: bytes = NULL_UUID
    uuid_last_snap: bytes = NULL_UUID
    uuid_link: bytes = NULL_UUID
    uuid_parent: bytes = NULL_UUID
    unused2: bytes = b""

    @property
    def is_static(self) -> bool:
        return self.image_type == TYPE_STATIC

    @property
    def bmap_bytes(self) -> int:
        """The block map as QEMU reads it: whole sectors."""
        return round_up(self.blocks_in_image * ENTRY, SECTOR)

    def data_offset(self, entry: int) -> int:
        """Where block number ``entry`` (a block map value) starts in the file."""
        return self.offset_data + entry * self.block_size


def round_up(n: int, align: int) -> int:
    return -(-n // align) * align


# ---------------------------------------------------------------------------------------
# Validation (QEMU's wording and order)
# ---------------------------------------------------------------------------------------

def validate_header(h: Header, file_bytes: int) -> Header:
    """Refuse what QEMU refuses; returns the header with the disk size rounded up to
    whole sectors (as QEMU keeps it, and writes it back).

    Unlike QEMU, a block map that reaches past the end of the file is refused (QEMU
    would read zeroes there, up to 2 GiB of them)."""
    if h.disk_size > DISK_SIZE_MAX:
        raise NotSupported("Unsupported VDI image size (size is 0x%x, max supported is "
                           "0x%x)" % (h.disk_size, DISK_SIZE_MAX))
    h = h.with_(disk_size=round_up(h.disk_size, SECTOR))
    if h.signature != SIGNATURE:
        raise InvalidArgument("Image not in VDI format (bad signature %08x)" % h.signature)
    checks = (
        (h.version != VERSION_1_1,
         "version %d.%d" % (h.version >> 16, h.version & 0xFFFF)),
        (h.offset_bmap % SECTOR != 0, "unaligned block map offset 0x%x" % h.offset_bmap),
        (h.offset_data % SECTOR != 0, "unaligned data offset 0x%x" % h.offset_data),
        (h.sector_size != SECTOR, "sector size %d is not %d" % (h.sector_size, SECTOR)),
        (h.block_size != BLOCK_SIZE,
         "block size %d is not %d" % (h.block_size, BLOCK_SIZE)),
        (h.disk_size > h.blocks_in_image * h.block_size,
         "disk size %d, image bitmap has room for %d"
         % (h.disk_size, h.blocks_in_image * h.block_size)),
        (h.uuid_link != NULL_UUID, "non-NULL link UUID"),
        (h.uuid_parent != NULL_UUID, "non-NULL parent UUID"),
        (h.blocks_in_image > BLOCKS_IN_IMAGE_MAX,
         "too many blocks %d, max is %d" % (h.blocks_in_image, BLOCKS_IN_IMAGE_MAX)),
    )
    for bad, what in checks:
        if bad:
            raise NotSupported(f"unsupported VDI image ({what})")
    if h.blocks_in_image and h.offset_bmap + h.bmap_bytes > round_up(file_bytes, SECTOR):
        raise InvalidArgument("unsupported VDI image (block map at 0x%x reaches past the "
                              "end of the file)" % h.offset_bmap, errno.EINVAL)
    return h


# ---------------------------------------------------------------------------------------
# The block map
# ---------------------------------------------------------------------------------------

def parse_bmap(buf: bytes | bytearray | memoryview, count: int) -> array:
    """Little-endian u32 entries -> ``array('I')`` of ``count`` entries."""
    bmap = array("I")
    bmap.frombytes(bytes(buf[:count * ENTRY]))
    if sys.byteorder != "little":
        bmap.byteswap()
    return bmap


def build_bmap(bmap: array, first: int = 0, end: int | None = None) -> bytes:
    part = bmap[first:end]
    if sys.byteorder != "little":
        part.byteswap()
    return part.tobytes()


def bmap_sectors(bmap: array, first: int, last: int) -> tuple[int, bytes]:
    """The block map sectors holding entries ``first..last`` (inclusive), as QEMU
    writes them after an allocation: the byte offset within the map and the bytes
    (the last sector padded with zeroes past the final entry)."""
    per = SECTOR // ENTRY
    lo, hi = first // per * per, (last // per + 1) * per
    data = build_bmap(bmap, lo, hi)
    return lo * ENTRY, data.ljust((hi - lo) * ENTRY, b"\0")


def initial_bmap(blocks: int, static: bool) -> bytes:
    """The block map of a new image, in whole sectors (zero padding after the entries)."""
    if static:
        bmap = array("I", range(blocks))
    else:
        bmap = array("I", [UNALLOCATED]) * blocks
    return build_bmap(bmap).ljust(round_up(blocks * ENTRY, SECTOR), b"\0")
