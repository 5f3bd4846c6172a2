"""VMDK on-disk layout: the sparse extent header, the text descriptor and the grain
directory, declared once.

A hosted sparse extent starts with ``KDMV`` and a little-endian header (VMware's
SparseExtentHeader, QEMU's VMDK4Header after the magic).  Offsets in it count 512-byte
sectors.  The grain directory (GD) lists the sectors of the grain tables (GTs); a GT
entry (GTE) is the sector of a grain, 0 for unallocated, 1 for a zeroed grain (when the
header's ZERO_GRAIN flag is set).  The redundant GD (RGD) and its GTs mirror them.
Everything here is pure.
"""
from __future__ import annotations

import errno
import re
import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import ClassVar

from ...core.errors import InvalidArgument, NotSupported
from ..vdi.shared import StructLayout

MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"                    # VMware 3 (not supported here)
SECTOR = 512

FLAG_NL_DETECT = 1 << 0
FLAG_RGD = 1 << 1
FLAG_ZERO_GRAIN = 1 << 2
FLAG_COMPRESS = 1 << 16
FLAG_MARKER = 1 << 17

GTE_ZEROED = 1
GRANULARITY = 128                       # sectors per grain QEMU creates (64 KiB)
GTES_PER_GT = 512
DESC_OFFSET = 1
DESC_SECTORS = 20
DESC_BYTES = DESC_SECTORS * SECTOR      # the descriptor buffer QEMU reads and writes
ENTRY = 4

#: QEMU's limits on what it opens
MAX_GRANULARITY = 2 * 1024 * 1024       # sectors (1 GiB grains)
MAX_L1_ENTRIES = 512 * 1024 * 1024 // ENTRY  # QEMU's bound on the GD (read in one piece)
INT64_MAX = (1 << 63) - 1

#: version, flags, capacity, granularity, desc_offset, desc_size, num_gtes_per_gt,
#: rgd_offset, gd_offset, grain_offset, filler, check_bytes, compress_algorithm
HEADER_STRUCT = struct.Struct("<4sIIQQQQIQQQc4sH")
CHECK_BYTES = b"\n \r\n"


@dataclass(frozen=True, slots=True)
class Header(StructLayout):
    """The sparse extent header at offset 0 (79 bytes, in a 512-byte sector)."""

    STRUCT: ClassVar[struct.Struct] = HEADER_STRUCT

    magic: bytes = MAGIC
    version: int = 1
    flags: int = FLAG_RGD | FLAG_NL_DETECT
    capacity: int = 0
    granularity: int = GRANULARITY
    desc_offset: int = DESC_OFFSET
    desc_size: int = DESC_SECTORS
    num_gtes_per_gt: int = GTES_PER_GT
    rgd_offset: int = 0
    gd_offset: int = 0
    grain_offset: int = 0
    filler: bytes = b"\0"
    check_bytes: bytes = CHECK_BYTES
    compress_algorithm: int = 0

    @property
    def grain_bytes(self) -> int:
        return self.granularity * SECTOR

    @property
    def grains(self) -> int:
        return -(-self.capacity // self.granularity)

    @property
    def gt_count(self) -> int:
        return -(-self.grains // self.num_gtes_per_gt)

    @property
    def gt_sectors(self) -> int:
        return -(-self.num_gtes_per_gt * ENTRY // SECTOR)

    @property
    def gd_sectors(self) -> int:
        return -(-self.gt_count * ENTRY // SECTOR)

    @property
    def zero_grain(self) -> bool:
        return bool(self.flags & FLAG_ZERO_GRAIN) and self.version >= 2

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESS)


def new_header(size: int, zeroed_grain: bool, compress: bool = False) -> Header:
    """The header QEMU's create writes for an image of ``size`` bytes."""
    version = 3 if compress else 2 if zeroed_grain else 1
    flags = FLAG_RGD | FLAG_NL_DETECT
    if compress:
        flags |= FLAG_COMPRESS | FLAG_MARKER
    if zeroed_grain:
        flags |= FLAG_ZERO_GRAIN
    h = Header(version=version, flags=flags, capacity=size // SECTOR,
               compress_algorithm=1 if compress else 0)
    tables = h.gd_sectors + h.gt_sectors * h.gt_count
    rgd = DESC_OFFSET + DESC_SECTORS
    gd = rgd + tables
    grain = round_up(gd + tables, GRANULARITY)
    return h.with_(rgd_offset=rgd, gd_offset=gd, grain_offset=grain)


def initial_gd(h: Header, gd_offset: int) -> bytes:
    """A new grain directory at ``gd_offset``: its tables follow it, one after another."""
    first = gd_offset + h.gd_sectors
    gd = array("I", (first + i * h.gt_sectors for i in range(h.gt_count)))
    return to_le(gd).ljust(h.gd_sectors * SECTOR, b"\0")


def round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def to_le(table: array) -> bytes:
    if sys.byteorder != "little":
        table = array(table.typecode, table)
        table.byteswap()
    return table.tobytes()


def from_le(buf: bytes | bytearray | memoryview, count: int) -> array:
    table = array("I")
    table.frombytes(bytes(buf[:count * ENTRY]).ljust(count * ENTRY, b"\0"))
    if sys.byteorder != "little":
        table.byteswap()
    return table


def validate_header(h: Header) -> None:
    """Refuse what QEMU refuses, in its order and words.  A grain directory past the
    end of the file reads as zeroes (all unallocated), as QEMU's does; its size is
    bounded by the L1 check."""
    if h.version > 3:
        raise NotSupported(f"Unsupported VMDK version {h.version}")
    if h.num_gtes_per_gt > GTES_PER_GT:
        raise InvalidArgument("L2 table size too big")
    if (h.num_gtes_per_gt * h.granularity) & 0xFFFFFFFF == 0:    # QEMU's u32 product
        raise InvalidArgument("L1 entry size is invalid")
    if h.capacity * SECTOR > INT64_MAX:
        raise InvalidArgument("File too large", errno.EFBIG)
    if h.gt_count > MAX_L1_ENTRIES:
        raise InvalidArgument("L1 size too big")
    if h.granularity > MAX_GRANULARITY:
        raise InvalidArgument("Invalid granularity, image may be corrupt")


# ---------------------------------------------------------------------------------------
# The descriptor
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Extent:
    access: str         # RW | RDONLY | NOACCESS
    sectors: int
    kind: str           # SPARSE | FLAT | ZERO | VMFS | VMFSSPARSE
    filename: str
    offset: int = 0     # FLAT: the extent's first sector in its file


@dataclass(frozen=True, slots=True)
class Descriptor:
    cid: int
    parent_cid: int
    create_type: str
    extents: tuple[Extent, ...] = ()
    parent_hint: str | None = None
    text: str = field(default="", compare=False)


_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?')


def _value(text: str, key: str) -> str | None:
    m = re.search(rf'^\s*{key}\s*=\s*"?([^"\r\n]*)"?\s*$', text, re.MULTILINE)
    return m.group(1) if m else None


def parse_descriptor(text: str) -> Descriptor:
    """The fields QEMU reads from a descriptor (CID, parentCID, createType, extents)."""
    cid = _value(text, "CID")
    parent = _value(text, "parentCID")
    create_type = _value(text, "createType")
    if create_type is None:
        raise InvalidArgument("invalid VMDK image descriptor")
    extents = []
    for line in text.splitlines():
        m = _EXTENT.match(line.strip())
        if m:
            extents.append(Extent(m.group(1), int(m.group(2)), m.group(3),
                                  m.group(4) or "", int(m.group(5) or 0)))
    return Descriptor(_hex(cid), _hex(parent), create_type, tuple(extents),
                      _value(text, "parentFileNameHint"), text)


def _hex(s: str | None) -> int:
    try:
        return int(s or "0", 16) & 0xFFFFFFFF
    except ValueError:
        return 0


def build_descriptor(cid: int, parent_cid: int, create_type: str, extent_lines: str,
                     parent_hint: str | None, hwversion: str, cylinders: int, heads: int,
                     adapter: str, toolsversion: str) -> str:
    """The descriptor text QEMU's create writes."""
    # QEMU's template: the hint takes the place of the blank line after createType
    hint = f'parentFileNameHint="{parent_hint}"' if parent_hint else ""
    return ("# Disk DescriptorFile\n"
            "version=1\n"
            f"CID={cid:x}\n"
            f"parentCID={parent_cid:x}\n"
            f'createType="{create_type}"\n'
            f"{hint}"
            "\n"
            "# Extent description\n"
            f"{extent_lines}"
            "\n"
            "# The Disk Data Base\n"
            "#DDB\n"
            "\n"
            f'ddb.virtualHWVersion = "{hwversion}"\n'
            f'ddb.geometry.cylinders = "{cylinders}"\n'
            f'ddb.geometry.heads = "{heads}"\n'
            'ddb.geometry.sectors = "63"\n'
            f'ddb.adapterType = "{adapter}"\n'
            f'ddb.toolsVersion = "{toolsversion}"\n')


def probe_text(buf: bytes) -> bool:
    """A text descriptor: its first line that is not blank or a comment is
    ``version=1``, ``2`` or ``3`` (QEMU's probe)."""
    for raw in buf.split(b"\n"):
        line = raw.strip(b" \t\r")
        if not line or line.startswith(b"#"):
            continue
        return re.fullmatch(rb"version=[123]", line) is not None
    return False


def replace_cid(area: bytes, cid: int) -> bytes | None:
    """The descriptor area with ``CID=`` set to ``cid``, as QEMU rewrites it: the text
    from the first ``CID`` is replaced up to ``parentCID``, NUL-terminated, and the
    bytes after the terminator are left as they were; None without ``parentCID``."""
    buf = bytearray(area[:DESC_BYTES])
    buf[-1] = 0
    text = bytes(buf[:buf.index(0)])
    parent = text.find(b"parentCID")
    name = text.find(b"CID")
    if parent < 0:
        return None
    new = b"%x\n" % cid + text[parent:] + b"\0"
    at = name + 4
    new = new[:len(buf) - at - 1] + b"\0" if at + len(new) > len(buf) else new
    buf[at:at + len(new)] = new
    return bytes(buf)
