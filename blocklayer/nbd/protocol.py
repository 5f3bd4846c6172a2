"""The NBD protocol as a sans-I/O state machine, one core for the server and the client.

A :class:`Connection` never touches a socket.  Bytes from the peer go in with
:meth:`Connection.receive_data` (``b""`` for end of file) and come out as events from
:meth:`Connection.next_event` (or :data:`NEED_DATA`); events of our own go in with
:meth:`Connection.send` and come out as bytes to write.  Which event may come in which
state is the one table :data:`TRANSITIONS`, checked by the one function
:func:`transition`: a wrong event we send raises :class:`LocalProtocolError`, a wrong
one the peer sends raises :class:`RemoteProtocolError`.  After a
:class:`RemoteProtocolError` the connection is in state ``ERROR`` and should be closed.

What both sides learn during the handshake (structured replies, the selected meta
contexts, the export's size, flags and block sizes) is kept here from the events that
passed, so the two machines of a connection always agree; requests are checked against
it on both sides, and so are replies against the requests in flight.  Lengths coming
from the peer are checked against the limits before any payload is buffered, so a
connection holds at most one request (``max_payload``) or one option
(``max_option_data``) in memory.

Client use (the ``nbd`` protocol driver drives this)::

    conn = Connection(CLIENT)
    conn.receive_data(sock.recv(...))        # until next_event() gives Greeting
    sock.sendall(conn.send(ClientFlags(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)))
    sock.sendall(conn.send(StructuredReplyOption()))      # -> OptionAck / OptionError
    sock.sendall(conn.send(SetMetaContextOption("exp", ("base:allocation",))))
    #   -> MetaContextReply(id, name)* then OptionAck; conn.meta_contexts = {id: name}
    sock.sendall(conn.send(GoOption("exp", (InfoType.BLOCK_SIZE,))))
    #   -> InfoReply(...)* then OptionAck: conn.state is TRANSMISSION, conn.export_size,
    #      conn.export_flags and conn.block_size are set
    req = conn.request(Cmd.READ, offset, length)          # picks a free cookie
    sock.sendall(conn.send(req))
    #   -> SimpleReply or ReadData / ReadHole / ErrorReply ... until event.done
    sock.sendall(conn.send(Disconnect()))

The server side is symmetric: it sends :class:`Greeting`, receives options and answers
each with replies ending in a final one (:class:`OptionAck` or :class:`OptionError`),
then receives :class:`Request` (already checked as qemu-nbd checks them; the ones it
would refuse arrive as :class:`InvalidRequest`) and sends replies.
"""
from __future__ import annotations

import enum
import errno as _errno
from collections.abc import Iterable
from dataclasses import dataclass

from ..core.errors import BlockError
from . import wire
from .events import (
    NEED_DATA,
    SERVER,
    AbortOption,
    BadOption,
    BlockStatusReply,
    ClientFlags,
    ConnectionClosed,
    Disconnect,
    ErrorReply,
    Event,
    ExportInfo,
    ExportNameOption,
    GoOption,
    Greeting,
    InfoOption,
    InfoReply,
    InvalidRequest,
    ListMetaContextOption,
    ListOption,
    MetaContextReply,
    Option,
    OptionAck,
    OptionError,
    ReadData,
    ReadHole,
    Reply,
    ReplyDone,
    Request,
    Role,
    ServerReply,
    SetMetaContextOption,
    SimpleReply,
    StartTLSOption,
    StructuredReplyOption,
    UnknownOption,
    _NeedData,
)
from .wire import ChunkType, ClientFlag, Cmd, CmdFlag, HandshakeFlag, Opt, Rep
from .wire import TransmissionFlag as TF

MAX_OPTION_DATA = 64 * 1024       # a known option's data is buffered up to this
MAX_OPTION_REPLY = 3 * wire.MAX_STRING_SIZE   # one option reply's data, client side
MAX_ERROR_CHUNK = 6 + wire.MAX_STRING_SIZE + 8


class ProtocolError(BlockError):
    """Root of the protocol machine's errors."""

    default_errno = _errno.EIO


class LocalProtocolError(ProtocolError):
    """Our side asked the machine for something the protocol does not allow now."""

    default_errno = _errno.EINVAL


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol (bad bytes, or a message out of turn)."""


class State(enum.Enum):
    GREETING = "greeting"                   # server to send the greeting
    CLIENT_FLAGS = "client flags"           # client to send its flags
    OPTIONS = "options"                     # client to send an option
    EXPORT_NAME_REPLY = "export name reply"
    ABORT_REPLY = "abort reply"
    LIST_REPLY = "list reply"
    STARTTLS_REPLY = "starttls reply"
    TLS_HANDSHAKE = "tls handshake"         # outside the machine; then tls_established()
    INFO_REPLY = "info reply"
    GO_REPLY = "go reply"
    ACK_REPLY = "ack reply"                 # STRUCTURED_REPLY: ACK or an error
    META_LIST_REPLY = "list meta context reply"
    META_SET_REPLY = "set meta context reply"
    ERROR_REPLY = "error reply"             # unknown or malformed option: an error only
    TRANSMISSION = "transmission"
    DISCONNECTING = "disconnecting"         # DISC sent: only replies still in flight
    CLOSED = "closed"
    ERROR = "error"


class TLSEstablished(Event):
    """The adapter finished the TLS handshake after STARTTLS (see tls_established())."""

    __slots__ = ()


_S = State
_META_REPLY = {MetaContextReply: None, OptionAck: _S.OPTIONS, OptionError: _S.OPTIONS}
_REPLIES = (SimpleReply, ReadData, ReadHole, BlockStatusReply, ErrorReply, ReplyDone)

# state -> {event type: next state}; None means "stay".  Options and requests come from
# the client, replies from the server (Event.SENDER); BadOption and InvalidRequest are
# what a server machine makes of a malformed option or a refused request.
TRANSITIONS: dict[State, dict[type[Event], State | None]] = {
    _S.GREETING: {Greeting: _S.CLIENT_FLAGS},
    _S.CLIENT_FLAGS: {ClientFlags: _S.OPTIONS},
    _S.OPTIONS: {
        ExportNameOption: _S.EXPORT_NAME_REPLY, AbortOption: _S.ABORT_REPLY,
        ListOption: _S.LIST_REPLY, StartTLSOption: _S.STARTTLS_REPLY,
        InfoOption: _S.INFO_REPLY, GoOption: _S.GO_REPLY,
        StructuredReplyOption: _S.ACK_REPLY,
        ListMetaContextOption: _S.META_LIST_REPLY, SetMetaContextOption: _S.META_SET_REPLY,
        UnknownOption: _S.ERROR_REPLY, BadOption: _S.ERROR_REPLY,
    },
    _S.EXPORT_NAME_REPLY: {ExportInfo: _S.TRANSMISSION},
    _S.ABORT_REPLY: {OptionAck: _S.CLOSED, OptionError: _S.CLOSED},
    _S.LIST_REPLY: {ServerReply: None, OptionAck: _S.OPTIONS, OptionError: _S.OPTIONS},
    _S.STARTTLS_REPLY: {OptionAck: _S.TLS_HANDSHAKE, OptionError: _S.OPTIONS},
    _S.TLS_HANDSHAKE: {TLSEstablished: _S.OPTIONS},
    _S.INFO_REPLY: {InfoReply: None, OptionAck: _S.OPTIONS, OptionError: _S.OPTIONS},
    _S.GO_REPLY: {InfoReply: None, OptionAck: _S.TRANSMISSION, OptionError: _S.OPTIONS},
    _S.ACK_REPLY: {OptionAck: _S.OPTIONS, OptionError: _S.OPTIONS},
    _S.META_LIST_REPLY: dict(_META_REPLY),
    _S.META_SET_REPLY: dict(_META_REPLY),
    _S.ERROR_REPLY: {OptionError: _S.OPTIONS},
    _S.TRANSMISSION: {Request: None, InvalidRequest: None, Disconnect: _S.DISCONNECTING,
                      **{r: None for r in _REPLIES}},
    _S.DISCONNECTING: {r: None for r in _REPLIES},
    _S.CLOSED: {},
    _S.ERROR: {},
}


def transition(state: State, event: type[Event], local: Role, sending: bool) -> State:
    """The state after ``event`` (sent by us if ``sending``, else received) in ``state``;
    the one place that refuses an event out of turn."""
    error = LocalProtocolError if sending else RemoteProtocolError
    if event is ConnectionClosed:
        return State.CLOSED
    sender = event.SENDER         # None: made by a machine (or, TLSEstablished, by us)
    if sending and sender not in (local, None):
        raise LocalProtocolError(f"a {local.value} cannot send {event.__name__}")
    if not sending and sender is local:
        raise RemoteProtocolError(f"the peer sent {event.__name__}, which a "
                                  f"{local.value} sends")
    allowed = TRANSITIONS[state]
    if event not in allowed:
        raise error(f"{event.__name__} not allowed in state '{state.value}'")
    following = allowed[event]
    return state if following is None else following


# Option events by code, and the code of each (for the header of what we send).
_OPTION_CODES: dict[type[Event], int] = {
    ExportNameOption: Opt.EXPORT_NAME, AbortOption: Opt.ABORT, ListOption: Opt.LIST,
    StartTLSOption: Opt.STARTTLS, InfoOption: Opt.INFO, GoOption: Opt.GO,
    StructuredReplyOption: Opt.STRUCTURED_REPLY,
    ListMetaContextOption: Opt.LIST_META_CONTEXT, SetMetaContextOption: Opt.SET_META_CONTEXT,
}
_NO_DATA_OPTIONS = {Opt.LIST: ListOption, Opt.STARTTLS: StartTLSOption,
                    Opt.STRUCTURED_REPLY: StructuredReplyOption}

OPTION_NAMES = {
    Opt.EXPORT_NAME: "export name", Opt.ABORT: "abort", Opt.LIST: "list",
    Opt.PEEK_EXPORT: "peek export", Opt.STARTTLS: "starttls", Opt.INFO: "info",
    Opt.GO: "go", Opt.STRUCTURED_REPLY: "structured reply",
    Opt.LIST_META_CONTEXT: "list meta context", Opt.SET_META_CONTEXT: "set meta context",
}
COMMAND_NAMES = {
    Cmd.READ: "read", Cmd.WRITE: "write", Cmd.DISC: "disconnect", Cmd.FLUSH: "flush",
    Cmd.TRIM: "trim", Cmd.CACHE: "cache", Cmd.WRITE_ZEROES: "write zeroes",
    Cmd.BLOCK_STATUS: "block status",
}
# What a client may only ask when the export advertises it.
_NEEDS_FLAG = {Cmd.FLUSH: TF.SEND_FLUSH, Cmd.TRIM: TF.SEND_TRIM, Cmd.CACHE: TF.SEND_CACHE,
               Cmd.WRITE_ZEROES: TF.SEND_WRITE_ZEROES}
_FLAG_NEEDS = {CmdFlag.FUA: TF.SEND_FUA, CmdFlag.DF: TF.SEND_DF,
               CmdFlag.FAST_ZERO: TF.SEND_FAST_ZERO}
# The flags as plain ints for the per-request checks (an IntFlag operation costs a
# microsecond or so: it makes a new enum member).
_READ_ONLY = int(TF.READ_ONLY)
_VALID_FLAGS: dict[int, int] = {Cmd.READ: int(CmdFlag.FUA), Cmd.WRITE_ZEROES: int(
    CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO), Cmd.BLOCK_STATUS: int(
    CmdFlag.FUA | CmdFlag.REQ_ONE)}
_FUA_ONLY = int(CmdFlag.FUA)
_DF = int(CmdFlag.DF)
_DONE = int(wire.ReplyFlag.DONE)
_WRITE_COMMANDS = (Cmd.WRITE, Cmd.WRITE_ZEROES, Cmd.TRIM)
_PAYLOAD_LIMITED = (Cmd.READ, Cmd.WRITE, Cmd.CACHE)


def option_code(event: Option) -> int:
    """The NBD_OPT_* number of an option event."""
    if isinstance(event, UnknownOption):
        return event.option
    return _OPTION_CODES[type(event)]


def option_name(option: int) -> str:
    return OPTION_NAMES.get(option, "<unknown>")   # type: ignore[call-overload]


def command_name(command: int) -> str:
    return COMMAND_NAMES.get(command, "<unknown>")  # type: ignore[call-overload]


@dataclass(slots=True)
class InFlight:
    """A request sent (client) or received (server) whose last reply is still due."""

    command: int
    offset: int
    length: int
    flags: int


Parts = list[bytes | bytearray | memoryview]


class Connection:
    """One NBD connection, seen from ``role``'s side; see the module docstring."""

    def __init__(self, role: Role, *, max_payload: int = wire.MAX_PAYLOAD,
                 max_option_data: int = MAX_OPTION_DATA) -> None:
        self.role = role
        self.state = State.GREETING
        self.max_payload = max_payload          # server: the largest request accepted
        self.max_option_data = max_option_data
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._skip = 0                          # option data being discarded
        self._after_skip: Event | None = None
        self._close_after: int | None = None    # cookie whose reply ends the connection
        # What the handshake agreed (the same on both sides).
        self.handshake_flags = 0
        self.client_flags = 0
        self.structured_replies = False
        self.meta_contexts: dict[int, str] = {}
        self.meta_export: str | None = None     # the export the contexts were set for
        self._pending_contexts: dict[int, str] = {}
        self.option: Option | None = None       # the option being answered
        self._infos: list[wire.Info] = []
        self.export_name: str | None = None
        self.export_size = 0
        self.export_flags = 0
        self.block_size: wire.InfoBlockSize | None = None
        self.in_flight: dict[int, InFlight] = {}
        self._next_cookie = 1
        self._stopped = False                   # a fatal request: read nothing more
        self._sending = False
        self._closing = False

    # -- public API -------------------------------------------------------------------

    @property
    def no_zeroes(self) -> bool:
        return bool(self.handshake_flags & HandshakeFlag.NO_ZEROES
                    and self.client_flags & ClientFlag.NO_ZEROES)

    @property
    def max_request(self) -> int:
        """The largest READ/WRITE payload the export takes."""
        return self.block_size.maximum if self.block_size else wire.MAX_PAYLOAD

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer; ``b""`` means it closed its side."""
        if not data:
            self._eof = True
            return
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet made into events."""
        return len(self._buf) - self._pos

    def next_event(self) -> Event | _NeedData:
        """The next event from the peer, or NEED_DATA; raises RemoteProtocolError."""
        if self.state is State.ERROR:
            raise RemoteProtocolError("the connection already failed")
        if self.state is State.CLOSED:
            return ConnectionClosed()
        if self._stopped:
            return NEED_DATA
        try:
            event = self._parse()
            if event is None:
                if self._eof:
                    if self.buffered or self._skip:
                        raise RemoteProtocolError("connection closed in the middle of a "
                                                  "message")
                    event = ConnectionClosed()
                else:
                    return NEED_DATA
            self._apply(event, sending=False)
        except wire.WireError as exc:
            self.state = State.ERROR
            raise RemoteProtocolError(str(exc)) from exc
        except RemoteProtocolError:
            self.state = State.ERROR
            raise
        return event

    def send(self, event: Event) -> bytes:
        """The bytes for one event of ours; raises LocalProtocolError."""
        return b"".join(self.send_parts(event))

    def send_parts(self, event: Event) -> Parts:
        """As :meth:`send`, as a list of buffers (a write's payload is not copied)."""
        transition(self.state, type(event), self.role, sending=True)
        if isinstance(event, Request):
            self._check_outgoing_request(event)
        elif isinstance(event, Reply):
            self._check_reply(event, LocalProtocolError)
        try:
            parts = self._build(event)
        except wire.WireError as exc:
            raise LocalProtocolError(str(exc)) from exc
        self._apply(event, sending=True)
        return parts

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS succeeded: negotiation starts afresh."""
        self._apply(TLSEstablished(), sending=True)

    def request(self, command: int, offset: int = 0, length: int = 0, flags: int = 0,
                data: bytes | bytearray | memoryview = b"") -> Request:
        """A Request with a cookie not in flight (client side); pass it to send()."""
        if command == Cmd.WRITE and not length:
            length = len(data)
        while self._next_cookie in self.in_flight:
            self._next_cookie = (self._next_cookie + 1) & 0xFFFFFFFFFFFFFFFF
        cookie = self._next_cookie
        self._next_cookie = (cookie + 1) & 0xFFFFFFFFFFFFFFFF
        return Request(command, cookie, offset, length, flags, data)

    # -- state ------------------------------------------------------------------------

    def _apply(self, event: Event, sending: bool) -> None:
        """Check the event against the table, record what it agreed, change state."""
        before = self.state
        after = transition(before, type(event), self.role, sending)
        self._sending = sending
        self._closing = False
        self._record(before, event)
        self.state = State.CLOSED if self._closing else after

    def _record(self, before: State, event: Event) -> None:
        if isinstance(event, Reply):                 # the hot ones first
            self._reply_sent(event)
        elif isinstance(event, (Request, InvalidRequest)):
            self._track(event)
        elif isinstance(event, Option):
            self.option = event
            self._infos = []
            self._pending_contexts = {}
            if isinstance(event, StartTLSOption) and self.role is SERVER:
                self._discard_buffered()
        elif isinstance(event, BadOption):
            self.option = UnknownOption(event.option)
            if event.fatal:
                self._close_after = -1
        elif isinstance(event, (OptionAck, OptionError, InfoReply, MetaContextReply)):
            self._option_reply(before, event)
        elif isinstance(event, ClientFlags):
            self.client_flags = event.flags
        elif isinstance(event, Greeting):
            self.handshake_flags = event.flags
        elif isinstance(event, ExportInfo):
            self._enter_transmission(event.size, event.flags,
                                     self._option_name(), None)
        elif isinstance(event, TLSEstablished):
            self._reset_negotiation()

    def _option_name(self) -> str:
        option = self.option
        return getattr(option, "name", "")

    def _option_reply(self, before: State, event: Event) -> None:
        if isinstance(event, InfoReply):
            self._infos.append(event.info)
            return
        if isinstance(event, MetaContextReply):
            if before is State.META_SET_REPLY:
                if event.context_id in self._pending_contexts:
                    raise self._error("meta context id used twice")
                self._pending_contexts[event.context_id] = event.name
            return
        final_ok = isinstance(event, OptionAck)
        if before in (State.INFO_REPLY, State.GO_REPLY) and final_ok:
            self._export_described(before)
        elif before is State.ACK_REPLY and final_ok:
            self.structured_replies = True
        elif before is State.META_SET_REPLY:
            self.meta_contexts = self._pending_contexts if final_ok else {}
            self.meta_export = self._option_name() if final_ok else None
        elif before is State.STARTTLS_REPLY and final_ok and self.role is SERVER:
            self._discard_buffered()
        if self._close_after == -1:
            self._closing = True
        self.option = None

    def _export_described(self, before: State) -> None:
        exports = [i for i in self._infos if isinstance(i, wire.InfoExport)]
        if not exports:
            raise self._error("NBD_INFO_EXPORT missing from the reply")
        sizes = [i for i in self._infos if isinstance(i, wire.InfoBlockSize)]
        if before is State.GO_REPLY:
            self._enter_transmission(exports[-1].size, exports[-1].flags,
                                     self._option_name(), sizes[-1] if sizes else None)

    def _enter_transmission(self, size: int, flags: int, name: str,
                            block_size: wire.InfoBlockSize | None) -> None:
        self.export_name, self.export_size, self.export_flags = name, size, flags
        self.block_size = block_size
        if block_size is not None:
            self.max_payload = min(self.max_payload, block_size.maximum)
        if self.meta_export != name:
            self.meta_contexts = {}
        self.option = None

    def _reset_negotiation(self) -> None:
        self.structured_replies = False
        self.meta_contexts = {}
        self.meta_export = None

    def _discard_buffered(self) -> None:
        # Plaintext that arrived behind STARTTLS must never be acted on after it.
        self._buf.clear()
        self._pos = 0

    def _error(self, message: str) -> ProtocolError:
        """The error for a fact we are about to record: ours if we are sending it."""
        return (LocalProtocolError if self._sending else RemoteProtocolError)(message)

    # -- requests and replies ---------------------------------------------------------

    def _track(self, event: Request | InvalidRequest) -> None:
        if isinstance(event, Request):
            self.in_flight[event.cookie] = InFlight(event.command, event.offset,
                                                    event.length, event.flags)
        else:
            self.in_flight[event.cookie] = InFlight(event.command, 0, 0, 0)
            if event.fatal:
                self._close_after = event.cookie

    def _reply_sent(self, event: Reply) -> None:
        if event.done:
            del self.in_flight[event.cookie]
            if self._close_after == event.cookie:
                self._closing = True

    def request_problem(self, command: int, flags: int, offset: int,
                        length: int) -> str | None:
        """Why qemu-nbd would refuse this request (its words), or None."""
        if self.export_flags & _READ_ONLY and command in _WRITE_COMMANDS:
            return "Export is read-only"
        size = self.export_size
        if offset > size or length > size - offset:
            return (f"operation past EOF; From: {offset}, Len: {length}, "
                    f"Size: {size}")
        valid = _VALID_FLAGS.get(command, _FUA_ONLY)
        if command == Cmd.READ and self.structured_replies:
            valid |= _DF
        if flags & ~valid:
            return (f"unsupported flags for command {command_name(command)} "
                    f"(got 0x{flags:x})")
        if command not in COMMAND_NAMES or command == Cmd.DISC:
            return f"invalid request type ({command}) received"
        if command == Cmd.BLOCK_STATUS:
            if not length:
                return "need non-zero length"
            if not self.meta_contexts:
                return "CMD_BLOCK_STATUS not negotiated"
        return None

    def _check_outgoing_request(self, req: Request) -> None:
        if req.cookie in self.in_flight:
            raise LocalProtocolError(f"cookie {req.cookie} is already in flight")
        if req.command == Cmd.WRITE and len(req.data) != req.length:
            raise LocalProtocolError("write payload and length differ")
        if req.command in _PAYLOAD_LIMITED and req.length > self.max_request:
            raise LocalProtocolError(f"request of {req.length} bytes is larger than the "
                                     f"export's maximum {self.max_request}")
        needed = _NEEDS_FLAG.get(req.command)       # type: ignore[call-overload]
        if needed is not None and not self.export_flags & needed:
            raise LocalProtocolError(f"the export does not support "
                                     f"{command_name(req.command)}")
        if req.flags:
            for flag, advertised in _FLAG_NEEDS.items():
                if req.flags & flag and not self.export_flags & advertised:
                    raise LocalProtocolError(f"the export does not support {flag.name}")
        problem = self.request_problem(req.command, req.flags, req.offset, req.length)
        if problem is not None:
            raise LocalProtocolError(problem)

    def _check_reply(self, event: Reply, error: type[ProtocolError]) -> None:
        """A reply must answer a request in flight, in the form it allows."""
        req = self.in_flight.get(event.cookie)
        if req is None:
            raise error(f"reply to cookie {event.cookie}, which is not in flight")
        structured = not isinstance(event, SimpleReply)
        if structured and not self.structured_replies:
            raise error("structured reply chunk without structured replies negotiated")
        if isinstance(event, SimpleReply):
            if error is LocalProtocolError and self.structured_replies and \
                    req.command in (Cmd.READ, Cmd.BLOCK_STATUS) and not event.error:
                raise error("a structured reply is needed for this command")
            if req.command == Cmd.BLOCK_STATUS and not event.error:
                raise error("block status needs a structured reply")
            if req.command == Cmd.READ and not event.error and \
                    len(event.data) != req.length:
                raise error("simple read reply of the wrong length")
        elif isinstance(event, (ReadData, ReadHole)):
            size = len(event.data) if isinstance(event, ReadData) else event.size
            if req.command != Cmd.READ:
                raise error("read chunk in reply to a request that is not a read")
            if not size or event.offset < req.offset or \
                    event.offset + size > req.offset + req.length:
                raise error("read chunk outside the request")
        elif isinstance(event, BlockStatusReply):
            if req.command != Cmd.BLOCK_STATUS:
                raise error("block status chunk in reply to another command")
            if event.context_id not in self.meta_contexts:
                raise error(f"block status for context {event.context_id}, "
                            "which was not negotiated")
            if not event.extents or any(e.length == 0 for e in event.extents):
                raise error("block status chunk with no or empty extents")
        elif isinstance(event, ErrorReply) and event.offset is not None:
            if not req.offset <= event.offset < req.offset + max(req.length, 1):
                raise error("error offset outside the request")

    # -- building ---------------------------------------------------------------------

    def _build(self, event: Event) -> Parts:
        if isinstance(event, Request):
            head = wire.RequestHeader(event.flags, event.command, event.cookie,
                                      event.offset, event.length).build()
            return [head, event.data] if event.command == Cmd.WRITE else [head]
        if isinstance(event, Reply):
            return _build_reply(event)
        if isinstance(event, Option):
            return [_build_option(event)]
        if isinstance(event, (OptionAck, OptionError, ServerReply, InfoReply,
                              MetaContextReply)):
            assert self.option is not None or isinstance(event, OptionError)
            return [_build_option_reply(self._current_option_code(), event)]
        if isinstance(event, Disconnect):
            return [wire.RequestHeader(0, Cmd.DISC, event.cookie, 0, 0).build()]
        if isinstance(event, Greeting):
            return [wire.Greeting(event.flags).build()]
        if isinstance(event, ClientFlags):
            return [wire.ClientFlags(event.flags).build()]
        if isinstance(event, ExportInfo):
            return [wire.ExportNameReply(event.size, event.flags).build(self.no_zeroes)]
        raise LocalProtocolError(f"{type(event).__name__} cannot be sent")

    def _current_option_code(self) -> int:
        option = self.option
        if option is None:
            raise LocalProtocolError("no option to reply to")
        return option_code(option)

    # -- parsing ----------------------------------------------------------------------

    def _peek(self, n: int) -> bytes | None:
        if len(self._buf) - self._pos < n:
            return None
        return bytes(self._buf[self._pos:self._pos + n])

    def _take(self, n: int) -> bytes | None:
        if len(self._buf) - self._pos < n:
            return None
        with memoryview(self._buf) as view:
            data = bytes(view[self._pos:self._pos + n])
        self._pos += n
        return data

    def _consume(self, n: int) -> None:
        self._pos += n

    def _parse(self) -> Event | None:
        if self._skip:
            n = min(self._skip, self.buffered)
            self._consume(n)
            self._skip -= n
            if self._skip:
                return None
            event, self._after_skip = self._after_skip, None
            return event
        parser = (_SERVER_PARSERS if self.role is SERVER else _CLIENT_PARSERS).get(self.state)
        if parser is None:
            return None
        return parser(self)

    def _parse_client_flags(self) -> Event | None:
        raw = self._take(4)
        if raw is None:
            return None
        flags = wire.ClientFlags.parse(raw).flags
        if flags & ~int(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES):
            raise RemoteProtocolError(f"Unsupported client flags 0x{flags:x}")
        return ClientFlags(flags)

    def _parse_option(self) -> Event | None:
        head = self._peek(wire.OptionHeader.SIZE)
        if head is None:
            return None
        hdr = wire.OptionHeader.parse(head)
        option, length = hdr.option, hdr.length
        if not self.client_flags & ClientFlag.FIXED_NEWSTYLE and option != Opt.EXPORT_NAME:
            raise RemoteProtocolError(f"Unsupported option {option} "
                                      f"({option_name(option)}) in non-fixed mode")
        if option == Opt.EXPORT_NAME:
            if length > wire.MAX_STRING_SIZE:
                raise RemoteProtocolError("Bad length received")
        elif option == Opt.ABORT:
            return self._skip_option(length, AbortOption())
        elif option not in OPTION_NAMES or option == Opt.PEEK_EXPORT:
            return self._skip_option(length, UnknownOption(option, length))
        elif length > self.max_option_data:
            return self._skip_option(length, BadOption(option, "option too long",
                                                       Rep.ERR_TOO_BIG))
        raw = self._take(wire.OptionHeader.SIZE + length)
        if raw is None:
            return None
        return _option_event(option, memoryview(raw)[wire.OptionHeader.SIZE:])

    def _skip_option(self, length: int, event: Event) -> Event | None:
        self._consume(wire.OptionHeader.SIZE)
        if not length:
            return event
        self._skip, self._after_skip = length, event
        return self._parse()

    def _parse_request(self) -> Event | None:
        head = self._peek(wire.RequestHeader.SIZE)
        if head is None:
            return None
        hdr = wire.RequestHeader.parse(head)
        cmd, length = hdr.type, hdr.length
        if cmd == Cmd.DISC:
            self._consume(wire.RequestHeader.SIZE)
            return Disconnect(hdr.cookie)
        if hdr.cookie in self.in_flight:
            raise RemoteProtocolError(f"cookie {hdr.cookie} is already in flight")
        if cmd in _PAYLOAD_LIMITED and length > self.max_payload:
            self._consume(wire.RequestHeader.SIZE)
            message = f"len ({length}) is larger than max len ({self.max_payload})"
            if cmd == Cmd.WRITE:
                self._stopped = True
            return InvalidRequest(hdr.cookie, cmd, wire.Errno.EINVAL, message,
                                  fatal=cmd == Cmd.WRITE)
        data = b""
        if cmd == Cmd.WRITE:
            raw = self._take(wire.RequestHeader.SIZE + length)
            if raw is None:
                return None
            data = raw[wire.RequestHeader.SIZE:]
        else:
            self._consume(wire.RequestHeader.SIZE)
        problem = self.request_problem(cmd, hdr.flags, hdr.offset, length)
        if problem is not None:
            return InvalidRequest(hdr.cookie, cmd, wire.Errno.EINVAL, problem)
        return Request(cmd, hdr.cookie, hdr.offset, length, hdr.flags, data)

    def _parse_discard(self) -> Event | None:
        # After DISC the client must send nothing more; whatever comes is dropped.
        self._consume(self.buffered)
        return None

    def _parse_greeting(self) -> Event | None:
        raw = self._take(wire.Greeting.SIZE)
        return None if raw is None else Greeting(wire.Greeting.parse(raw).flags)

    def _parse_option_reply(self) -> Event | None:
        head = self._peek(wire.OptionReplyHeader.SIZE)
        if head is None:
            return None
        hdr = wire.OptionReplyHeader.parse(head)
        expected = self._current_option_code()
        if hdr.option != expected:
            raise RemoteProtocolError(f"reply to option {hdr.option} while option "
                                      f"{expected} was asked")
        if hdr.length > MAX_OPTION_REPLY:
            raise RemoteProtocolError(f"option reply of {hdr.length} bytes is too long")
        raw = self._take(wire.OptionReplyHeader.SIZE + hdr.length)
        if raw is None:
            return None
        return _option_reply_event(hdr.reply, memoryview(raw)[wire.OptionReplyHeader.SIZE:])

    def _parse_export_info(self) -> Event | None:
        size = wire.ExportNameReply.SIZE + (0 if self.no_zeroes else wire.EXPORT_NAME_PADDING)
        raw = self._take(size)
        if raw is None:
            return None
        info = wire.ExportNameReply.parse(raw)
        return ExportInfo(info.size, info.flags)

    def _parse_reply(self) -> Event | None:
        head = self._peek(4)
        if head is None:
            return None
        magic = wire.reply_magic(head)
        if magic == wire.SIMPLE_REPLY_MAGIC:
            return self._parse_simple_reply()
        if magic == wire.STRUCTURED_REPLY_MAGIC:
            return self._parse_chunk()
        raise RemoteProtocolError(f"bad reply magic 0x{magic:x}")

    def _parse_simple_reply(self) -> Event | None:
        head = self._peek(wire.SimpleReplyHeader.SIZE)
        if head is None:
            return None
        hdr = wire.SimpleReplyHeader.parse(head)
        req = self._in_flight_for(hdr.cookie)
        length = req.length if req.command == Cmd.READ and not hdr.error else 0
        raw = self._take(wire.SimpleReplyHeader.SIZE + length)
        if raw is None:
            return None
        event = SimpleReply(hdr.cookie, hdr.error, raw[wire.SimpleReplyHeader.SIZE:])
        self._check_reply(event, RemoteProtocolError)
        return event

    def _parse_chunk(self) -> Event | None:
        head = self._peek(wire.ChunkHeader.SIZE)
        if head is None:
            return None
        hdr = wire.ChunkHeader.parse(head)
        req = self._in_flight_for(hdr.cookie)
        limit = _chunk_limit(hdr.type, req)
        if hdr.length > limit:
            raise RemoteProtocolError(f"structured reply chunk of type {hdr.type} with "
                                      f"length {hdr.length} is too long")
        raw = self._take(wire.ChunkHeader.SIZE + hdr.length)
        if raw is None:
            return None
        event = _chunk_event(hdr, memoryview(raw)[wire.ChunkHeader.SIZE:])
        self._check_reply(event, RemoteProtocolError)
        return event

    def _in_flight_for(self, cookie: int) -> InFlight:
        req = self.in_flight.get(cookie)
        if req is None:
            raise RemoteProtocolError(f"reply to cookie {cookie}, which is not in flight")
        return req


_SERVER_PARSERS = {
    State.CLIENT_FLAGS: Connection._parse_client_flags,
    State.OPTIONS: Connection._parse_option,
    State.TRANSMISSION: Connection._parse_request,
    State.DISCONNECTING: Connection._parse_discard,
}
_CLIENT_PARSERS = {
    State.GREETING: Connection._parse_greeting,
    State.EXPORT_NAME_REPLY: Connection._parse_export_info,
    State.TRANSMISSION: Connection._parse_reply,
    State.DISCONNECTING: Connection._parse_reply,
    **{s: Connection._parse_option_reply for s in (
        State.ABORT_REPLY, State.LIST_REPLY, State.STARTTLS_REPLY, State.INFO_REPLY,
        State.GO_REPLY, State.ACK_REPLY, State.META_LIST_REPLY, State.META_SET_REPLY,
        State.ERROR_REPLY)},
}


# -- option events <-> bytes ----------------------------------------------------------

def _option_event(option: int, data: memoryview) -> Event:
    """A known option's event from its data (a BadOption when the data is wrong)."""
    try:
        if option == Opt.EXPORT_NAME:
            return ExportNameOption(wire.parse_export_name(data))
        if option in _NO_DATA_OPTIONS:
            if len(data):
                return BadOption(option, f"option '{option_name(option)}' has "
                                 "unexpected length", fatal=option == Opt.STARTTLS)
            return _NO_DATA_OPTIONS[option]()       # type: ignore[index]
        if option in (Opt.INFO, Opt.GO):
            info = wire.InfoRequest.parse(data)
            cls = InfoOption if option == Opt.INFO else GoOption
            return cls(info.name, info.types)
        meta = wire.MetaContextRequest.parse(data)
        if option == Opt.LIST_META_CONTEXT:
            return ListMetaContextOption(meta.name, meta.queries)
        return SetMetaContextOption(meta.name, meta.queries)
    except wire.WireError as exc:
        if option == Opt.EXPORT_NAME:
            raise RemoteProtocolError(str(exc)) from exc
        return BadOption(option, str(exc))


def _build_option(event: Option) -> bytes:
    if isinstance(event, UnknownOption):
        return wire.OptionHeader(event.option, 0).build()
    code = _OPTION_CODES[type(event)]
    data: bytes = b""
    if isinstance(event, ExportNameOption):
        data = event.name.encode("utf-8")
        if len(data) > wire.MAX_STRING_SIZE:
            raise wire.WireError("export name too long")
    elif isinstance(event, (InfoOption, GoOption)):
        data = wire.InfoRequest(event.name, tuple(event.types)).build()
    elif isinstance(event, (ListMetaContextOption, SetMetaContextOption)):
        data = wire.MetaContextRequest(event.name, tuple(event.queries)).build()
    return wire.OptionHeader(code, len(data)).build() + data


def _build_option_reply(option: int, event: Event) -> bytes:
    reply: int
    if isinstance(event, OptionAck):
        reply, data = Rep.ACK, b""
    elif isinstance(event, OptionError):
        if not event.reply & wire.REP_FLAG_ERROR:
            raise wire.WireError(f"option error reply {event.reply} lacks the error bit")
        reply, data = event.reply, event.message.encode("utf-8")[:wire.MAX_STRING_SIZE]
    elif isinstance(event, ServerReply):
        reply, data = Rep.SERVER, wire.ServerEntry(event.name, event.description).build()
    elif isinstance(event, InfoReply):
        reply, data = Rep.INFO, event.info.build()
    else:
        assert isinstance(event, MetaContextReply)
        reply = Rep.META_CONTEXT
        data = wire.MetaContextEntry(event.context_id, event.name).build()
    return wire.OptionReplyHeader(option, reply, len(data)).build() + data


def _option_reply_event(reply: int, data: memoryview) -> Event:
    if reply == Rep.ACK:
        if len(data):
            raise RemoteProtocolError("NBD_REP_ACK with data")
        return OptionAck()
    if reply == Rep.SERVER:
        entry = wire.ServerEntry.parse(data)
        return ServerReply(entry.name, entry.description)
    if reply == Rep.INFO:
        return InfoReply(wire.parse_info(data))
    if reply == Rep.META_CONTEXT:
        ctx = wire.MetaContextEntry.parse(data)
        return MetaContextReply(ctx.context_id, ctx.name)
    if reply & wire.REP_FLAG_ERROR:
        return OptionError(reply, wire.parse_error_message(data))
    raise RemoteProtocolError(f"unknown option reply type {reply}")


# -- reply events <-> bytes -----------------------------------------------------------

def _chunk(event: Reply, chunk_type: int, payload_len: int) -> bytes:
    flags = _DONE if event.done else 0
    return wire.ChunkHeader(flags, chunk_type, event.cookie, payload_len).build()


def _build_reply(event: Reply) -> Parts:
    if isinstance(event, SimpleReply):
        head = wire.SimpleReplyHeader(event.error, event.cookie).build()
        return [head, event.data] if event.data else [head]
    if isinstance(event, ReadData):
        head = _chunk(event, ChunkType.OFFSET_DATA, 8 + len(event.data))
        return [head + wire.OFFSET_DATA_HEADER.pack(event.offset), event.data]
    if isinstance(event, ReadHole):
        return [_chunk(event, ChunkType.OFFSET_HOLE, wire.OffsetHole.SIZE)
                + wire.OffsetHole(event.offset, event.size).build()]
    if isinstance(event, BlockStatusReply):
        payload = wire.BlockStatusPayload(event.context_id, tuple(event.extents)).build()
        return [_chunk(event, ChunkType.BLOCK_STATUS, len(payload)) + payload]
    if isinstance(event, ErrorReply):
        err = wire.ErrorPayload(event.error, event.message, event.offset)
        payload = err.build()
        return [_chunk(event, event.chunk_type or err.chunk_type, len(payload)) + payload]
    assert isinstance(event, ReplyDone)
    return [_chunk(event, ChunkType.NONE, 0)]


def _chunk_limit(chunk_type: int, req: InFlight) -> int:
    """The longest payload a chunk of this type may have for this request."""
    if chunk_type == ChunkType.NONE:
        return 0
    if chunk_type == ChunkType.OFFSET_DATA:
        return 8 + req.length
    if chunk_type == ChunkType.OFFSET_HOLE:
        return wire.OffsetHole.SIZE
    if chunk_type == ChunkType.BLOCK_STATUS:
        return 4 + 8 * wire.MAX_BLOCK_STATUS_EXTENTS
    if chunk_type & wire.CHUNK_ERROR_BIT:
        return MAX_ERROR_CHUNK
    raise RemoteProtocolError(f"unknown structured reply chunk type {chunk_type}")


def _chunk_event(hdr: wire.ChunkHeader, payload: memoryview) -> Reply:
    done = bool(hdr.flags & _DONE)
    kind, cookie = hdr.type, hdr.cookie
    if kind == ChunkType.NONE:
        if not done:
            raise RemoteProtocolError("NBD_REPLY_TYPE_NONE without the DONE flag")
        return ReplyDone(cookie)
    if kind == ChunkType.OFFSET_DATA:
        if len(payload) <= 8:
            raise RemoteProtocolError("NBD_REPLY_TYPE_OFFSET_DATA without data")
        (offset,) = wire.OFFSET_DATA_HEADER.unpack(payload[:8])
        return ReadData(cookie, offset, bytes(payload[8:]), done)
    if kind == ChunkType.OFFSET_HOLE:
        hole = wire.OffsetHole.parse(payload)
        return ReadHole(cookie, hole.offset, hole.size, done)
    if kind == ChunkType.BLOCK_STATUS:
        status = wire.BlockStatusPayload.parse(payload)
        return BlockStatusReply(cookie, status.context_id, status.extents, done)
    if kind in (ChunkType.ERROR, ChunkType.ERROR_OFFSET):
        err = wire.ErrorPayload.parse(payload, kind == ChunkType.ERROR_OFFSET)
        return ErrorReply(cookie, err.error, err.message, err.offset, done)
    # An unknown error chunk: the request failed; the first 4 bytes are the error.
    error = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else 0
    return ErrorReply(cookie, error or wire.Errno.EINVAL, "", None, done, chunk_type=kind)


def parts_length(parts: Iterable[bytes | bytearray | memoryview]) -> int:
    return sum(len(p) for p in parts)
