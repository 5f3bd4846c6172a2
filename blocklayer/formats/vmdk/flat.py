"""Flat extents named by a descriptor file (monolithicFlat, twoGbMaxExtentFlat).

Each FLAT extent is a host file holding its guest sectors from ``offset``; a ZERO
extent reads as zeroes.  Extent names are relative to the descriptor's directory; as
names in an image, they are external files, refused when
``OpenFlags.allow_external_files`` is False (as backing files are).
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...core.driver import BlockStatus, ChildRole, Status
from ...core.errors import BlockError, NotSupported
from ...core.options import OpenFlags
from ..vdi.shared import read_padded
from .layout import SECTOR, Descriptor

if TYPE_CHECKING:
    from ...core.node import BlockNode


@dataclass(slots=True)
class FlatExtent:
    start: int                  # guest byte offset
    length: int                 # bytes
    node: BlockNode | None    # None: a ZERO extent
    host: int                   # byte offset in ``node``
    filename: str
    kind: str


async def open_extents(node: BlockNode, desc: Descriptor, flags: OpenFlags
                       ) -> list[FlatExtent]:
    from ...core.open import open_node
    base = os.path.dirname(node.file.filename) if node.file is not None else ""
    out: list[FlatExtent] = []
    pos = 0
    for i, ext in enumerate(desc.extents):
        n = ext.sectors * SECTOR
        if ext.kind == "ZERO":
            out.append(FlatExtent(pos, n, None, 0, "", ext.kind))
        elif ext.kind in ("FLAT", "VMFS"):
            if not flags.allow_external_files:
                raise BlockError(f"Could not open extent: opening '{ext.filename}' named "
                                 "by the image is not allowed", errno.EPERM)
            path = ext.filename if os.path.isabs(ext.filename) else \
                os.path.join(base, ext.filename)
            child = await open_node(node.graph, path, {"driver": "file"}, flags=flags,
                                    role=ChildRole.OTHER)
            node.attach_child(f"extents.{i}", ChildRole.OTHER, child)
            out.append(FlatExtent(pos, n, child, ext.offset * SECTOR, ext.filename,
                                  ext.kind))
        else:
            raise NotSupported(f"vmdk: {ext.kind} extents in descriptor files are not "
                               "supported yet")
        pos += n
    return out


def pieces(extents: list[FlatExtent], offset: int, length: int
           ) -> list[tuple[FlatExtent, int, int]]:
    """(extent, guest offset, length) for each extent ``[offset, offset+length)`` touches."""
    out = []
    end = offset + length
    for e in extents:
        lo, hi = max(offset, e.start), min(end, e.start + e.length)
        if lo < hi:
            out.append((e, lo, hi - lo))
    return out


async def read(extents: list[FlatExtent], offset: int, length: int) -> bytearray:
    out = bytearray(length)
    for e, pos, n in pieces(extents, offset, length):
        if e.node is not None:
            rel = pos - offset
            out[rel:rel + n] = await read_padded(e.node, e.host + pos - e.start, n)
    return out


async def write(extents: list[FlatExtent], offset: int, data: Any) -> None:
    view = memoryview(data)
    for e, pos, n in pieces(extents, offset, len(view)):
        if e.node is None:
            raise NotSupported("vmdk: cannot write to a ZERO extent", errno.ENOTSUP)
        await e.node.write(e.host + pos - e.start, view[pos - offset:pos - offset + n])


def status(extents: list[FlatExtent], offset: int, length: int) -> BlockStatus:
    e, pos, n = pieces(extents, offset, length)[0]
    if e.node is None:
        return BlockStatus(Status.ZERO, n)
    return BlockStatus(Status.DATA | Status.OFFSET_VALID | Status.RECURSE, n,
                       e.host + pos - e.start, e.node)
