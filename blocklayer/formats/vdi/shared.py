"""What the simple block-table formats share (vdi here, vpc imports it).

A layout declared as a dataclass whose fields are a ``struct``'s, in order; reads that
see zeroes past the end of the file, as QEMU's do; the guest run kinds; and the steps
every ``create`` and ``open`` of such a format takes.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import astuple, dataclass, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ClassVar, TypeVar

from ...core.driver import Prealloc
from ...core.errors import InvalidArgument, NotSupported

if TYPE_CHECKING:
    from ...core.node import BlockNode

S = TypeVar("S", bound="StructLayout")


class StructLayout:
    """A frozen dataclass mixin: ``STRUCT`` lists the fields, in declaration order."""

    __slots__ = ()
    STRUCT: ClassVar[struct.Struct]

    @classmethod
    def parse(cls: type[S], buf: bytes | bytearray | memoryview) -> S:
        """The fields from ``buf`` (zero-filled if it is shorter than the struct)."""
        size = cls.STRUCT.size
        return cls(*cls.STRUCT.unpack(bytes(buf[:size]).ljust(size, b"\0")))

    def build(self) -> bytes:
        return self.STRUCT.pack(*astuple(self))  # type: ignore[call-overload]

    def with_(self: S, **changes: Any) -> S:
        return replace(self, **changes)  # type: ignore[type-var]


class Kind(enum.Enum):
    DATA = "data"           # stored in the file at ``host``
    ZERO = "zero"           # not allocated: reads as zeroes


@dataclass(frozen=True, slots=True)
class Run:
    """Guest bytes ``[guest, guest + length)``, all in block ``block`` of the table."""

    guest: int
    length: int
    kind: Kind
    host: int = 0
    block: int = 0


async def read_padded(file: "BlockNode", offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``, zeroes where the file ends (as QEMU reads)."""
    n = max(0, min(length, file.total_bytes - offset))
    data = bytes(await file.read(offset, n)) if n else b""
    return data + bytes(length - n)


def check_prealloc(options: dict[str, Any]) -> None:
    """The protocol's ``preallocation`` option, refused as QEMU's file driver refuses
    it (there is nothing to preallocate: the image file starts empty)."""
    prealloc = str(options.get("preallocation", "off"))
    if prealloc not in [p.value for p in Prealloc]:
        raise InvalidArgument(f"invalid parameter value: {prealloc}")
    if prealloc == Prealloc.METADATA.value:
        raise InvalidArgument(f"Unsupported preallocation mode: {prealloc}")


async def create_on(fmt: str, filename: str, open_file: Any,
                    fill: Callable[["BlockNode"], Awaitable[None]]) -> None:
    """Create the protocol file, let ``fill`` write the image, flush and close."""
    if open_file is None:
        raise NotSupported(f"Driver '{fmt}' needs a protocol to create images on")
    file = await open_file(filename)
    try:
        await fill(file)
        await file.flush()
    finally:
        await file.close()


def file_child(node: "BlockNode", fmt: str) -> "BlockNode":
    file = node.file
    if file is None:
        raise InvalidArgument(f"A '{fmt}' node needs a 'file' child")
    return file


def no_resize() -> NotSupported:
    """QEMU's words for a format driver without ``bdrv_co_truncate``."""
    return NotSupported("Image format driver does not support resize")
