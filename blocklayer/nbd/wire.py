"""Every NBD structure on the wire, declared once (NetworkBlockDevice/nbd ``doc/proto.md``).

Names follow the spec without its ``NBD_`` prefix.  Each structure is a small frozen
dataclass with ``parse(buf)`` (raises :class:`WireError` on malformed bytes) and
``build()``.  Fixed-size headers also expose ``SIZE``.  Everything is big-endian.
This module knows what the bytes look like, not when they may be sent: that is
:mod:`blocklayer.nbd.protocol`.
"""
from __future__ import annotations

import dataclasses
import functools
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar, Self

# -- magics ---------------------------------------------------------------------------

NBDMAGIC = 0x4E42444D41474943          # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054          # "IHAVEOPT"
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# -- limits ---------------------------------------------------------------------------

MAX_STRING_SIZE = 4096                 # names, descriptions, queries, error messages
MAX_PAYLOAD = 32 * 1024 * 1024         # qemu-nbd's NBD_MAX_BUFFER_SIZE
MAX_BLOCK_STATUS_EXTENTS = 1 << 17     # qemu-nbd: 1 MiB of descriptors per chunk
EXPORT_NAME_PADDING = 124              # zero bytes after the EXPORT_NAME reply


class WireError(ValueError):
    """Bytes that do not form the structure they should."""


# -- constants ------------------------------------------------------------------------

class HandshakeFlag(IntFlag):
    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class ClientFlag(IntFlag):
    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class Opt(IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


REP_FLAG_ERROR = 1 << 31


class Rep(IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = REP_FLAG_ERROR | 1
    ERR_POLICY = REP_FLAG_ERROR | 2
    ERR_INVALID = REP_FLAG_ERROR | 3
    ERR_PLATFORM = REP_FLAG_ERROR | 4
    ERR_TLS_REQD = REP_FLAG_ERROR | 5
    ERR_UNKNOWN = REP_FLAG_ERROR | 6
    ERR_SHUTDOWN = REP_FLAG_ERROR | 7
    ERR_BLOCK_SIZE_REQD = REP_FLAG_ERROR | 8
    ERR_TOO_BIG = REP_FLAG_ERROR | 9
    ERR_EXT_HEADER_REQD = REP_FLAG_ERROR | 10


class InfoType(IntEnum):
    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class TransmissionFlag(IntFlag):
    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11


class Cmd(IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7
    RESIZE = 8


class CmdFlag(IntFlag):
    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4
    PAYLOAD_LEN = 1 << 5


class ReplyFlag(IntFlag):
    DONE = 1 << 0


CHUNK_ERROR_BIT = 1 << 15


class ChunkType(IntEnum):
    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    ERROR = CHUNK_ERROR_BIT | 1
    ERROR_OFFSET = CHUNK_ERROR_BIT | 2


class Errno(IntEnum):
    """The error values of the protocol (Linux numbers, but fixed by the spec)."""

    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


# base:allocation flags; qemu:dirty-bitmap:NAME uses STATE_DIRTY;
# qemu:allocation-depth's value is the depth itself.
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1
STATE_DIRTY = 1 << 0

# Which command flags a command may carry (DF only once structured replies are on).
COMMAND_FLAGS: dict[int, CmdFlag] = {
    Cmd.READ: CmdFlag.FUA | CmdFlag.DF,
    Cmd.WRITE: CmdFlag.FUA,
    Cmd.DISC: CmdFlag(0),
    Cmd.FLUSH: CmdFlag.FUA,
    Cmd.TRIM: CmdFlag.FUA,
    Cmd.CACHE: CmdFlag.FUA,
    Cmd.WRITE_ZEROES: CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO,
    Cmd.BLOCK_STATUS: CmdFlag.FUA | CmdFlag.REQ_ONE,
}


def name_of(enum: type[IntEnum], value: int) -> str:
    """The spec's name for a value, or the number for one this module does not know."""
    try:
        return enum(value).name
    except ValueError:
        return str(value)


# -- helpers --------------------------------------------------------------------------

def _need(buf: bytes | memoryview, size: int, what: str) -> None:
    if len(buf) < size:
        raise WireError(f"{what} truncated ({len(buf)} of {size} bytes)")


def _exact(buf: bytes | memoryview, size: int, what: str) -> None:
    if len(buf) != size:
        raise WireError(f"{what} has length {len(buf)}, expected {size}")


def _text(raw: bytes | memoryview, what: str) -> str:
    if len(raw) > MAX_STRING_SIZE:
        raise WireError(f"{what} too long")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"{what} is not valid UTF-8") from None


def _encode(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > MAX_STRING_SIZE:
        raise WireError(f"{what} too long")
    return raw


class _Reader:
    """Consumes a buffer front to back; every short read is a :class:`WireError`."""

    def __init__(self, buf: bytes | memoryview, what: str) -> None:
        self.buf = memoryview(buf)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> memoryview:
        if n > len(self.buf) - self.pos:
            raise WireError(f"{self.what} truncated")
        piece = self.buf[self.pos:self.pos + n]
        self.pos += n
        return piece

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        return fmt.unpack(self.take(fmt.size))

    def string(self, length_fmt: struct.Struct, what: str) -> str:
        (length,) = self.unpack(length_fmt)
        return _text(self.take(length), what)

    def rest(self) -> memoryview:
        return self.take(len(self.buf) - self.pos)

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise WireError(f"{self.what} has {len(self.buf) - self.pos} trailing bytes")


_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


# -- handshake ------------------------------------------------------------------------

@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


class _Fixed:
    """A fixed-size structure: ``FMT`` lays out an optional leading ``MAGIC`` (checked
    on parse, with ``MAGIC_ERROR`` as the message) and then the dataclass's fields."""

    FMT: ClassVar[struct.Struct]
    WHAT: ClassVar[str]
    MAGIC: ClassVar[int | None] = None
    MAGIC_ERROR: ClassVar[str] = "bad {what} magic 0x{magic:x}"
    SIZE: ClassVar[int]

    def __init_subclass__(cls) -> None:
        cls.SIZE = cls.FMT.size

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> Self:
        _exact(buf, cls.FMT.size, cls.WHAT)
        values = list(cls.FMT.unpack(buf))
        if cls.MAGIC is not None:
            magic = values.pop(0)
            if magic != cls.MAGIC:
                raise WireError(cls.MAGIC_ERROR.format(what=cls.WHAT, magic=magic))
        return cls(*values)

    def build(self) -> bytes:
        values = [getattr(self, name) for name in _field_names(type(self))]  # type: ignore[arg-type]
        if self.MAGIC is not None:
            values.insert(0, self.MAGIC)
        return self.FMT.pack(*values)



@dataclass(frozen=True)
class Greeting:
    """S: NBDMAGIC, IHAVEOPT, handshake flags (fixed newstyle)."""

    flags: int
    FMT: ClassVar = struct.Struct(">QQH")
    SIZE: ClassVar[int] = FMT.size

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> Greeting:
        _exact(buf, cls.SIZE, "greeting")
        magic, opt_magic, flags = cls.FMT.unpack(buf)
        if magic != NBDMAGIC:
            raise WireError(f"bad greeting magic 0x{magic:x}")
        if opt_magic != IHAVEOPT:
            raise WireError("server does not speak newstyle (oldstyle is not supported)")
        return cls(flags)

    def build(self) -> bytes:
        return self.FMT.pack(NBDMAGIC, IHAVEOPT, self.flags)


@dataclass(frozen=True)
class ClientFlags(_Fixed):
    """C: u32 client flags."""

    flags: int
    FMT: ClassVar = _U32
    WHAT: ClassVar[str] = "client flags"


@dataclass(frozen=True)
class OptionHeader(_Fixed):
    """C: IHAVEOPT, u32 option, u32 length (the data follows)."""

    option: int
    length: int
    FMT: ClassVar = struct.Struct(">QII")
    WHAT: ClassVar[str] = "option"
    MAGIC: ClassVar[int | None] = IHAVEOPT


@dataclass(frozen=True)
class OptionReplyHeader(_Fixed):
    """S: reply magic, u32 option, u32 reply type, u32 length (the data follows)."""

    option: int
    reply: int
    length: int
    FMT: ClassVar = struct.Struct(">QIII")
    WHAT: ClassVar[str] = "option reply"
    MAGIC: ClassVar[int | None] = OPTION_REPLY_MAGIC


@dataclass(frozen=True)
class ExportNameReply:
    """S, after EXPORT_NAME: u64 size, u16 transmission flags, 124 zero bytes (unless
    NO_ZEROES was agreed)."""

    size: int
    flags: int
    FMT: ClassVar = struct.Struct(">QH")
    SIZE: ClassVar[int] = FMT.size

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> ExportNameReply:
        _need(buf, cls.SIZE, "export name reply")
        return cls(*cls.FMT.unpack(buf[:cls.SIZE]))

    def build(self, no_zeroes: bool) -> bytes:
        pad = b"" if no_zeroes else bytes(EXPORT_NAME_PADDING)
        return self.FMT.pack(self.size, self.flags) + pad


# -- option data ----------------------------------------------------------------------

@dataclass(frozen=True)
class InfoRequest:
    """Data of INFO and GO: u32 namelen, name, u16 n, u16 info types[n]."""

    name: str
    types: tuple[int, ...] = ()

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> InfoRequest:
        r = _Reader(buf, "info request")
        name = r.string(_U32, "export name")
        (count,) = r.unpack(_U16)
        types = struct.unpack(f">{count}H", r.take(2 * count))
        r.end()
        return cls(name, tuple(types))

    def build(self) -> bytes:
        raw = _encode(self.name, "export name")
        return (_U32.pack(len(raw)) + raw + _U16.pack(len(self.types))
                + struct.pack(f">{len(self.types)}H", *self.types))


@dataclass(frozen=True)
class MetaContextRequest:
    """Data of LIST_META_CONTEXT and SET_META_CONTEXT: u32 namelen, name, u32 n,
    then n times (u32 len, query)."""

    name: str
    queries: tuple[str, ...] = ()

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> MetaContextRequest:
        r = _Reader(buf, "meta context request")
        name = r.string(_U32, "export name")
        (count,) = r.unpack(_U32)
        if count > len(buf) // 4:
            raise WireError("meta context request truncated")
        queries = tuple(r.string(_U32, "meta context query") for _ in range(count))
        r.end()
        return cls(name, queries)

    def build(self) -> bytes:
        raw = _encode(self.name, "export name")
        parts = [_U32.pack(len(raw)), raw, _U32.pack(len(self.queries))]
        for query in self.queries:
            q = _encode(query, "meta context query")
            parts += [_U32.pack(len(q)), q]
        return b"".join(parts)


def parse_export_name(buf: bytes | memoryview) -> str:
    """Data of EXPORT_NAME: the name itself, the rest of the option."""
    return _text(buf, "export name")


# -- option reply data ----------------------------------------------------------------

@dataclass(frozen=True)
class ServerEntry:
    """REP_SERVER data (reply to LIST): u32 namelen, name, description (the rest)."""

    name: str
    description: str = ""

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> ServerEntry:
        r = _Reader(buf, "server reply")
        name = r.string(_U32, "export name")
        return cls(name, _text(r.rest(), "export description"))

    def build(self) -> bytes:
        raw = _encode(self.name, "export name")
        return _U32.pack(len(raw)) + raw + _encode(self.description, "export description")


@dataclass(frozen=True)
class MetaContextEntry:
    """REP_META_CONTEXT data: u32 context id, name (the rest)."""

    context_id: int
    name: str

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> MetaContextEntry:
        r = _Reader(buf, "meta context reply")
        (context_id,) = r.unpack(_U32)
        return cls(context_id, _text(r.rest(), "meta context name"))

    def build(self) -> bytes:
        return _U32.pack(self.context_id) + _encode(self.name, "meta context name")


@dataclass(frozen=True)
class InfoExport:
    """NBD_INFO_EXPORT: u16 type, u64 size, u16 transmission flags."""

    size: int
    flags: int
    TYPE: ClassVar[int] = InfoType.EXPORT
    FMT: ClassVar = struct.Struct(">HQH")

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> InfoExport:
        _exact(buf, cls.FMT.size, "NBD_INFO_EXPORT")
        return cls(*cls.FMT.unpack(buf)[1:])

    def build(self) -> bytes:
        return self.FMT.pack(self.TYPE, self.size, self.flags)


@dataclass(frozen=True)
class InfoName:
    """NBD_INFO_NAME: u16 type, name (the rest)."""

    name: str
    TYPE: ClassVar[int] = InfoType.NAME

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> InfoName:
        return cls(_text(buf[2:], "export name"))

    def build(self) -> bytes:
        return _U16.pack(self.TYPE) + _encode(self.name, "export name")


@dataclass(frozen=True)
class InfoDescription:
    """NBD_INFO_DESCRIPTION: u16 type, description (the rest)."""

    description: str
    TYPE: ClassVar[int] = InfoType.DESCRIPTION

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> InfoDescription:
        return cls(_text(buf[2:], "export description"))

    def build(self) -> bytes:
        return _U16.pack(self.TYPE) + _encode(self.description, "export description")


@dataclass(frozen=True)
class InfoBlockSize:
    """NBD_INFO_BLOCK_SIZE: u16 type, u32 minimum, u32 preferred, u32 maximum payload."""

    minimum: int = 1
    preferred: int = 4096
    maximum: int = MAX_PAYLOAD
    TYPE: ClassVar[int] = InfoType.BLOCK_SIZE
    FMT: ClassVar = struct.Struct(">HIII")

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> InfoBlockSize:
        _exact(buf, cls.FMT.size, "NBD_INFO_BLOCK_SIZE")
        info = cls(*cls.FMT.unpack(buf)[1:])
        info.check()
        return info

    def check(self) -> None:
        """The spec's constraints: powers of two, min <= preferred, min <= max."""
        lo, pref, hi = self.minimum, self.preferred, self.maximum
        if not (_pow2(lo) and lo <= 65536 and _pow2(pref) and pref >= lo
                and hi >= lo and (hi % lo == 0 or hi == 0xFFFFFFFF)):
            raise WireError(f"invalid block size constraints {lo}/{pref}/{hi}")

    def build(self) -> bytes:
        return self.FMT.pack(self.TYPE, self.minimum, self.preferred, self.maximum)


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class UnknownInfo:
    """An information type this module does not know; clients ignore it."""

    def __init__(self, info_type: int, data: bytes) -> None:
        self.TYPE = info_type
        self.data = data

    def build(self) -> bytes:
        return _U16.pack(self.TYPE) + self.data

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, UnknownInfo) and other.TYPE == self.TYPE
                and other.data == self.data)

    def __repr__(self) -> str:
        return f"UnknownInfo({self.TYPE}, {self.data!r})"


Info = InfoExport | InfoName | InfoDescription | InfoBlockSize | UnknownInfo
_INFO_TYPES: dict[int, type[InfoExport | InfoName | InfoDescription | InfoBlockSize]] = {
    InfoType.EXPORT: InfoExport, InfoType.NAME: InfoName,
    InfoType.DESCRIPTION: InfoDescription, InfoType.BLOCK_SIZE: InfoBlockSize,
}


def parse_info(buf: bytes | memoryview) -> Info:
    """REP_INFO data: dispatch on the u16 information type."""
    _need(buf, 2, "NBD_REP_INFO")
    (info_type,) = _U16.unpack(buf[:2])
    cls = _INFO_TYPES.get(info_type)
    if cls is None:
        return UnknownInfo(info_type, bytes(buf[2:]))
    return cls.parse(buf)


def parse_error_message(buf: bytes | memoryview) -> str:
    """Data of an error option reply: an optional human-readable message."""
    return bytes(buf[:MAX_STRING_SIZE]).decode("utf-8", "replace")


# -- transmission ---------------------------------------------------------------------

@dataclass(frozen=True)
class RequestHeader(_Fixed):
    """C: magic, u16 command flags, u16 type, u64 cookie, u64 offset, u32 length."""

    flags: int
    type: int
    cookie: int
    offset: int
    length: int
    FMT: ClassVar = struct.Struct(">IHHQQI")
    WHAT: ClassVar[str] = "request"
    MAGIC: ClassVar[int | None] = REQUEST_MAGIC
    MAGIC_ERROR: ClassVar[str] = "invalid magic (got 0x{magic:x})"


@dataclass(frozen=True)
class SimpleReplyHeader(_Fixed):
    """S: magic, u32 error, u64 cookie (then the data of a successful READ)."""

    error: int
    cookie: int
    FMT: ClassVar = struct.Struct(">IIQ")
    WHAT: ClassVar[str] = "simple reply"
    MAGIC: ClassVar[int | None] = SIMPLE_REPLY_MAGIC


@dataclass(frozen=True)
class ChunkHeader(_Fixed):
    """S: magic, u16 flags, u16 type, u64 cookie, u32 length (the payload follows)."""

    flags: int
    type: int
    cookie: int
    length: int
    FMT: ClassVar = struct.Struct(">IHHQI")
    WHAT: ClassVar[str] = "structured reply"
    MAGIC: ClassVar[int | None] = STRUCTURED_REPLY_MAGIC


# Reply magics of both kinds start the same way: the first 4 bytes say which one it is.
def reply_magic(buf: bytes | memoryview) -> int:
    return int(_U32.unpack(buf[:4])[0])


@dataclass(frozen=True)
class OffsetHole(_Fixed):
    """OFFSET_HOLE payload: u64 offset, u32 hole size."""

    offset: int
    size: int
    FMT: ClassVar = struct.Struct(">QI")
    WHAT: ClassVar[str] = "NBD_REPLY_TYPE_OFFSET_HOLE"


OFFSET_DATA_HEADER = _U64               # OFFSET_DATA payload: u64 offset, then the data


@dataclass(frozen=True)
class Extent:
    """A block status descriptor: u32 length, u32 status flags."""

    length: int
    flags: int


_EXTENT = struct.Struct(">II")


@dataclass(frozen=True)
class BlockStatusPayload:
    """BLOCK_STATUS payload: u32 context id, then descriptors."""

    context_id: int
    extents: tuple[Extent, ...]

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> BlockStatusPayload:
        if len(buf) < 12 or (len(buf) - 4) % 8:
            raise WireError(f"NBD_REPLY_TYPE_BLOCK_STATUS has length {len(buf)}")
        (context_id,) = _U32.unpack(buf[:4])
        extents = tuple(Extent(*e) for e in _EXTENT.iter_unpack(buf[4:]))
        return cls(context_id, extents)

    def build(self) -> bytes:
        return _U32.pack(self.context_id) + b"".join(
            _EXTENT.pack(e.length, e.flags) for e in self.extents)


_ERROR = struct.Struct(">IH")


@dataclass(frozen=True)
class ErrorPayload:
    """ERROR payload: u32 error, u16 message length, message; ERROR_OFFSET adds u64
    offset (``offset`` is None for ERROR)."""

    error: int
    message: str = ""
    offset: int | None = None

    @classmethod
    def parse(cls, buf: bytes | memoryview, with_offset: bool) -> ErrorPayload:
        r = _Reader(buf, "error chunk")
        error, msglen = r.unpack(_ERROR)
        message = bytes(r.take(msglen)).decode("utf-8", "replace")
        offset = r.unpack(_U64)[0] if with_offset else None
        r.end()
        if error == 0:
            raise WireError("error chunk with error 0")
        return cls(error, message, offset)

    def build(self) -> bytes:
        msg = _encode(self.message, "error message")
        tail = b"" if self.offset is None else _U64.pack(self.offset)
        return _ERROR.pack(self.error, len(msg)) + msg + tail

    @property
    def chunk_type(self) -> ChunkType:
        return ChunkType.ERROR if self.offset is None else ChunkType.ERROR_OFFSET
