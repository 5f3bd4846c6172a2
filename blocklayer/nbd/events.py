"""The events of the NBD protocol machine: what :class:`~.protocol.Connection` gives out
of ``next_event()`` and takes in ``send()``.

Each event class says which side sends it (``SENDER``).  The same classes serve both
sides: a server sends :class:`OptionAck` and a client receives it.  Events that only a
machine produces (:class:`BadOption`, :class:`InvalidRequest`, :class:`ConnectionClosed`)
cannot be sent.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

from .wire import Extent, Info, Rep


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


CLIENT, SERVER = Role.CLIENT, Role.SERVER


class Event:
    """Base of every event."""

    SENDER: ClassVar[Role | None] = None     # None: produced by the machine itself
    __slots__ = ()


# -- handshake ------------------------------------------------------------------------

@dataclass(slots=True)
class Greeting(Event):
    """S: the newstyle greeting with its handshake flags."""

    flags: int
    SENDER: ClassVar[Role | None] = SERVER


@dataclass(slots=True)
class ClientFlags(Event):
    """C: the client's flags (FIXED_NEWSTYLE, NO_ZEROES)."""

    flags: int
    SENDER: ClassVar[Role | None] = CLIENT


class Option(Event):
    """Base of the option requests a client sends."""

    SENDER: ClassVar[Role | None] = CLIENT
    __slots__ = ()


@dataclass(slots=True)
class ExportNameOption(Option):
    """NBD_OPT_EXPORT_NAME: enter transmission on that export (no error path)."""

    name: str


@dataclass(slots=True)
class AbortOption(Option):
    """NBD_OPT_ABORT: end the session."""


@dataclass(slots=True)
class ListOption(Option):
    """NBD_OPT_LIST: list the exports."""


@dataclass(slots=True)
class StartTLSOption(Option):
    """NBD_OPT_STARTTLS: upgrade the connection to TLS."""


@dataclass(slots=True)
class InfoOption(Option):
    """NBD_OPT_INFO: describe an export (``types`` are NBD_INFO_* asked for)."""

    name: str
    types: tuple[int, ...] = ()


@dataclass(slots=True)
class GoOption(Option):
    """NBD_OPT_GO: describe an export and, on success, enter transmission."""

    name: str
    types: tuple[int, ...] = ()


@dataclass(slots=True)
class StructuredReplyOption(Option):
    """NBD_OPT_STRUCTURED_REPLY."""


@dataclass(slots=True)
class ListMetaContextOption(Option):
    """NBD_OPT_LIST_META_CONTEXT: which contexts match the queries (all, if none)."""

    name: str
    queries: tuple[str, ...] = ()


@dataclass(slots=True)
class SetMetaContextOption(Option):
    """NBD_OPT_SET_META_CONTEXT: select the contexts matching the queries."""

    name: str
    queries: tuple[str, ...] = ()


@dataclass(slots=True)
class UnknownOption(Option):
    """An option this machine does not parse; its data was skipped, not kept."""

    option: int
    length: int = 0


@dataclass(slots=True)
class BadOption(Event):
    """A known option whose data is malformed or too big: the server answers it with
    ``OptionError(reply, message)``; ``fatal`` asks it to close afterwards."""

    option: int
    message: str
    reply: int = Rep.ERR_INVALID
    fatal: bool = False


class OptionReply(Event):
    """Base of the option replies a server sends."""

    SENDER: ClassVar[Role | None] = SERVER
    __slots__ = ()


@dataclass(slots=True)
class OptionAck(OptionReply):
    """NBD_REP_ACK: the final reply of a successful option."""


@dataclass(slots=True)
class OptionError(OptionReply):
    """An NBD_REP_ERR_* final reply, with an optional message."""

    reply: int
    message: str = ""


@dataclass(slots=True)
class ServerReply(OptionReply):
    """NBD_REP_SERVER: one export in the reply to LIST."""

    name: str
    description: str = ""


@dataclass(slots=True)
class InfoReply(OptionReply):
    """NBD_REP_INFO: one item describing the export of INFO or GO."""

    info: Info


@dataclass(slots=True)
class MetaContextReply(OptionReply):
    """NBD_REP_META_CONTEXT: one context (its id is 0 in replies to LIST)."""

    context_id: int
    name: str


@dataclass(slots=True)
class ExportInfo(Event):
    """S: the reply to EXPORT_NAME (size and transmission flags)."""

    size: int
    flags: int
    SENDER: ClassVar[Role | None] = SERVER


# -- transmission ---------------------------------------------------------------------

@dataclass(slots=True)
class Request(Event):
    """C: a command (``data`` is the payload of a WRITE)."""

    command: int
    cookie: int
    offset: int = 0
    length: int = 0
    flags: int = 0
    data: bytes | bytearray | memoryview = b""
    SENDER: ClassVar[Role | None] = CLIENT


@dataclass(slots=True)
class Disconnect(Event):
    """C: NBD_CMD_DISC, a soft disconnect (no reply)."""

    cookie: int = 0
    SENDER: ClassVar[Role | None] = CLIENT


@dataclass(slots=True)
class InvalidRequest(Event):
    """A request the server must refuse (what qemu-nbd refuses before serving it): the
    server replies ``error`` with ``message`` to ``cookie``; ``fatal`` means the payload
    was not read, so the connection must close after that reply."""

    cookie: int
    command: int
    error: int
    message: str
    fatal: bool = False


class Reply(Event):
    """Base of replies to requests; ``done`` says it is the request's last."""

    SENDER: ClassVar[Role | None] = SERVER
    __slots__ = ()
    cookie: int
    done: bool


@dataclass(slots=True)
class SimpleReply(Reply):
    """A simple reply (error 0 and, for a READ, its data)."""

    cookie: int
    error: int = 0
    data: bytes | bytearray | memoryview = b""
    done: bool = field(default=True, init=False)


@dataclass(slots=True)
class ReadData(Reply):
    """NBD_REPLY_TYPE_OFFSET_DATA."""

    cookie: int
    offset: int
    data: bytes | bytearray | memoryview
    done: bool = False


@dataclass(slots=True)
class ReadHole(Reply):
    """NBD_REPLY_TYPE_OFFSET_HOLE: ``size`` bytes at ``offset`` read as zeroes."""

    cookie: int
    offset: int
    size: int
    done: bool = False


@dataclass(slots=True)
class BlockStatusReply(Reply):
    """NBD_REPLY_TYPE_BLOCK_STATUS for one context."""

    cookie: int
    context_id: int
    extents: tuple[Extent, ...]
    done: bool = False


@dataclass(slots=True)
class ErrorReply(Reply):
    """NBD_REPLY_TYPE_ERROR (``offset`` None) or ERROR_OFFSET; a structured error chunk
    of a type this machine does not know arrives with ``chunk_type`` set."""

    cookie: int
    error: int
    message: str = ""
    offset: int | None = None
    done: bool = True
    chunk_type: int | None = None


@dataclass(slots=True)
class ReplyDone(Reply):
    """NBD_REPLY_TYPE_NONE with DONE: success with nothing more to say."""

    cookie: int
    done: bool = field(default=True, init=False)


# -- end ------------------------------------------------------------------------------

@dataclass(slots=True)
class ConnectionClosed(Event):
    """The peer closed its side (at a message boundary)."""


class _NeedData:
    """``next_event()`` needs more bytes before it can give an event."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
