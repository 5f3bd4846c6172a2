"""The asyncio adapter for the client side of :class:`~.protocol.Connection`.

:class:`NBDClient` owns one socket: :func:`connect` opens it (retrying until an open
timeout), negotiates as QEMU 7.2's nbd client does (fixed newstyle, structured replies,
one meta context, GO asking for the block sizes, EXPORT_NAME when the server has no
GO), then serves requests with many in flight, replies matched by cookie.  The bytes
are the machine's; this module only moves them and turns events into results.

A connection that breaks fails every request in flight and every later one with
:class:`ConnectionLost` (EIO); the ``nbd`` driver decides whether to reconnect.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno as _errno
import os
import socket
import time
from dataclasses import dataclass

from ..core.errors import BlockError, NoSpace, NotSupported
from . import wire
from .events import (
    CLIENT,
    AbortOption,
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
    InfoReply,
    MetaContextReply,
    OptionAck,
    OptionError,
    ReadData,
    ReadHole,
    Reply,
    SetMetaContextOption,
    SimpleReply,
    StructuredReplyOption,
    _NeedData,
)
from .protocol import Connection, ProtocolError, State, option_name
from .wire import ClientFlag, Cmd, HandshakeFlag, InfoType, Rep

MAX_REQUESTS = 16                   # QEMU's MAX_NBD_REQUESTS
RECV_BUFFER = 1 << 20              # bytes taken from the socket at once
CLOSE_TIMEOUT = 5.0                 # seconds a close waits for the socket to shut
RETRY_INTERVAL = 1.0                # seconds between connection attempts (open-timeout)

# NBD error values -> host errno (QEMU's nbd_errno_to_system_errno; unknown: EINVAL)
_ERRNO = {wire.Errno.EPERM: _errno.EPERM, wire.Errno.EIO: _errno.EIO,
          wire.Errno.ENOMEM: _errno.ENOMEM, wire.Errno.EINVAL: _errno.EINVAL,
          wire.Errno.ENOSPC: _errno.ENOSPC, wire.Errno.EOVERFLOW: _errno.EOVERFLOW,
          wire.Errno.ENOTSUP: _errno.ENOTSUP, wire.Errno.ESHUTDOWN: _errno.ESHUTDOWN}


class ConnectionLost(BlockError):
    """The connection to the server is gone (requests fail with EIO)."""

    default_errno = _errno.EIO


class NegotiationError(BlockError):
    """The server refused what the client asked during the handshake."""

    default_errno = _errno.EINVAL


@dataclass(frozen=True)
class Address:
    """Where the server listens: a unix socket ``path`` or an inet ``host``/``port``."""

    kind: str                       # "unix" | "inet"
    host: str = ""
    port: str = ""
    path: str = ""

    def __str__(self) -> str:
        return self.path if self.kind == "unix" else f"{self.host}:{self.port}"


@dataclass(slots=True)
class ExportDetails:
    """What the handshake learnt about the export."""

    size: int
    flags: int
    structured: bool
    context_id: int | None          # the one meta context selected, if any
    block_size: wire.InfoBlockSize | None


def request_error(error: int) -> BlockError:
    """The error a request fails with when the server answers ``error``."""
    code = _ERRNO.get(error, _errno.EINVAL)     # type: ignore[call-overload]
    cls = {_errno.ENOTSUP: NotSupported, _errno.ENOSPC: NoSpace}.get(code, BlockError)
    return cls(os.strerror(code), code)


# -- connecting -----------------------------------------------------------------------

async def _open_socket(address: Address) -> socket.socket:
    """A connected non-blocking socket, or QEMU's error for why there is none."""
    loop = asyncio.get_running_loop()
    where = str(address)
    if address.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address.path)
        except OSError as exc:
            sock.close()
            raise _connect_error(where, exc) from None
        return sock
    try:
        infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BlockError(f"address resolution failed for {where}: {exc.strerror}",
                         _errno.EINVAL) from None
    last: OSError = OSError(_errno.ECONNREFUSED, os.strerror(_errno.ECONNREFUSED))
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise _connect_error(where, last)


def _connect_error(where: str, exc: OSError) -> BlockError:
    code = exc.errno or _errno.EIO
    return BlockError(f"Failed to connect to '{where}': {os.strerror(code)}", code)


async def connect(address: Address, export: str, *, context: str | None,
                  open_timeout: float = 0) -> NBDClient:
    """Connect and negotiate; with ``open_timeout`` > 0 failed attempts are retried
    until that many seconds have passed (the last error is raised)."""
    deadline = time.monotonic() + open_timeout
    while True:
        try:
            sock = await _open_socket(address)
            break
        except BlockError:
            if time.monotonic() + RETRY_INTERVAL > deadline:
                raise
            await asyncio.sleep(RETRY_INTERVAL)
    loop = asyncio.get_running_loop()
    try:
        _, client = await loop.create_connection(NBDClient, sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        await client.negotiate(export, context)
    except NegotiationError:
        client.send_abort()
        client.abort()
        raise
    except BaseException:
        client.abort()
        raise
    return client


# -- the connection -------------------------------------------------------------------

class _Pending:
    """A request whose last reply is still due."""

    __slots__ = ("command", "data", "error", "extents", "future", "length", "offset")

    def __init__(self, future: asyncio.Future[None], command: int, offset: int,
                 length: int) -> None:
        self.future = future
        self.command, self.offset, self.length = command, offset, length
        self.data: bytes | bytearray | None = None
        self.error = 0
        self.extents: dict[int, tuple[wire.Extent, ...]] = {}


class NBDClient(asyncio.BufferedProtocol):
    """One client connection; made by :func:`connect`."""

    def __init__(self) -> None:
        self.conn = Connection(CLIENT)
        self.transport: asyncio.Transport | None = None
        self.details: ExportDetails | None = None
        self._handshake: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self._pending: dict[int, _Pending] = {}
        self._slots = asyncio.Semaphore(MAX_REQUESTS)
        self._drained: asyncio.Future[None] | None = None
        self.lost: BlockError | None = None       # why the connection is unusable
        self._recv_view = memoryview(bytearray(RECV_BUFFER))
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.protocol_failed = False              # the server broke the protocol

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._recv_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._recv_view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        conn = self.conn
        conn.receive_data(data)
        while True:
            try:
                event = conn.next_event()
            except ProtocolError as exc:
                self.protocol_failed = True
                self._broken(ConnectionLost(f"Protocol error: {exc.message}"))
                return
            if isinstance(event, _NeedData):
                return
            if isinstance(event, Reply):
                self._reply(event)
            elif isinstance(event, ConnectionClosed):
                self._broken(ConnectionLost("Connection closed by the NBD server"))
                return
            else:
                self._handshake.put_nowait(event)

    def eof_received(self) -> bool | None:
        self.data_received(b"")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else \
            "Connection closed by the NBD server"
        self._broken(ConnectionLost(reason))
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- handshake ----------------------------------------------------------------------

    def _send(self, event: Event) -> None:
        if self.lost is not None:
            raise self.lost
        assert self.transport is not None
        self.transport.writelines(self.conn.send_parts(event))

    async def _next(self) -> Event:
        item = await self._handshake.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def negotiate(self, export: str, context: str | None) -> None:
        """The handshake of QEMU 7.2's client; fills :attr:`details`."""
        greeting = await self._next()
        assert isinstance(greeting, Greeting)
        fixed = bool(greeting.flags & HandshakeFlag.FIXED_NEWSTYLE)
        flags = ClientFlag.FIXED_NEWSTYLE if fixed else ClientFlag(0)
        if greeting.flags & HandshakeFlag.NO_ZEROES:
            flags |= ClientFlag.NO_ZEROES
        self._send(ClientFlags(flags))
        if not fixed:
            await self._export_name(export)
            return
        structured = await self._simple_option(StructuredReplyOption())
        context_id = await self._meta_context(export, context) if structured else None
        self._send(GoOption(export, (InfoType.BLOCK_SIZE,)))
        while True:
            event = await self._next()
            if isinstance(event, OptionAck):
                break
            if isinstance(event, OptionError):
                if event.reply == Rep.ERR_UNSUP:
                    await self._export_name(export)
                    return
                raise _option_error(event, wire.Opt.GO)
            assert isinstance(event, InfoReply)
        conn = self.conn
        self.details = ExportDetails(conn.export_size, conn.export_flags, structured,
                                     context_id, conn.block_size)

    async def _simple_option(self, option: Event) -> bool:
        """Send an option without data; True on ACK, False if unsupported."""
        self._send(option)
        event = await self._next()
        if isinstance(event, OptionError):
            if event.reply == Rep.ERR_UNSUP:
                return False
            raise _option_error(event, wire.Opt.STRUCTURED_REPLY)
        return True

    async def _meta_context(self, export: str, query: str | None) -> int | None:
        """Select the one context ``query`` (QEMU's simple meta context negotiation)."""
        if query is None:
            return None
        self._send(SetMetaContextOption(export, (query,)))
        found: int | None = None
        while True:
            event = await self._next()
            if isinstance(event, MetaContextReply):
                if event.name != query:
                    raise NegotiationError(
                        f"Failed to negotiate meta context '{query}', server answered "
                        f"with different context '{event.name}'")
                if found is not None:
                    raise NegotiationError("Server replied with more than one context")
                found = event.context_id
                continue
            if isinstance(event, OptionError):
                if event.reply == Rep.ERR_UNSUP:
                    return None
                raise _option_error(event, wire.Opt.SET_META_CONTEXT)
            return found

    async def _export_name(self, export: str) -> None:
        """The old way in (no GO): no block sizes, no meta contexts."""
        self._send(ExportNameOption(export))
        event = await self._next()
        assert isinstance(event, ExportInfo)
        self.details = ExportDetails(event.size, event.flags, self.conn.structured_replies,
                                     None, None)

    # -- transmission -------------------------------------------------------------------

    async def request(self, command: int, offset: int = 0, length: int = 0,
                      flags: int = 0,
                      data: bytes | bytearray | memoryview = b"") -> _Pending:
        """Send one request and wait for its last reply; raises the request's error."""
        async with self._slots:
            if self.lost is not None:
                raise self.lost
            req = self.conn.request(command, offset, length, flags, data)
            loop = asyncio.get_running_loop()
            pending = _Pending(loop.create_future(), command, offset, req.length)
            parts = self.conn.send_parts(req)
            self._pending[req.cookie] = pending
            assert self.transport is not None
            self.transport.writelines(parts)
            if self._drained is not None:
                await asyncio.shield(self._drained)
            await pending.future
        if pending.error:
            raise request_error(pending.error)
        return pending

    def _reply(self, event: Reply) -> None:
        pending = self._pending.get(event.cookie)
        if pending is None:
            return
        if isinstance(event, ReadData):
            _place(pending, event.offset - pending.offset, event.data)
        elif isinstance(event, ReadHole):
            if pending.data is None:
                pending.data = bytearray(pending.length)
            else:
                _place(pending, event.offset - pending.offset, bytes(event.size))
        elif isinstance(event, BlockStatusReply):
            pending.extents[event.context_id] = event.extents
        elif isinstance(event, ErrorReply):
            pending.error = pending.error or event.error
        elif isinstance(event, SimpleReply):
            pending.error = event.error
            if pending.command == Cmd.READ and not event.error:
                pending.data = event.data           # type: ignore[assignment]
        if event.done:
            del self._pending[event.cookie]
            if not pending.future.done():
                pending.future.set_result(None)

    def _broken(self, error: BlockError) -> None:
        if self.lost is None:
            self.lost = error
        self._handshake.put_nowait(error)
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.future.done():
                p.future.set_exception(self.lost)
        self.resume_writing()
        if self.transport is not None:
            self.transport.abort()

    # -- closing ------------------------------------------------------------------------

    async def close(self) -> None:
        """Soft disconnect (NBD_CMD_DISC) and close the socket."""
        if self.transport is None:
            return
        if self.lost is None and self.conn.state is State.TRANSMISSION:
            try:
                self._send(Disconnect())
            except (BlockError, RuntimeError):
                pass
        transport, self.transport = self.transport, None
        transport.close()
        # the DISC is written before the socket closes; a peer that never reads it
        # cannot hold the close up for long
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_TIMEOUT)

    def send_abort(self) -> None:
        """NBD_OPT_ABORT after a failed negotiation, without waiting for its reply."""
        if self.lost is None and self.conn.state is State.OPTIONS:
            self._send(AbortOption())
            transport, self.transport = self.transport, None
            assert transport is not None
            transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


def _place(pending: _Pending, start: int, data: bytes | bytearray | memoryview) -> None:
    """Put a data chunk where it belongs in the read buffer (no copy for the whole)."""
    if pending.data is None:
        if start == 0 and len(data) == pending.length:
            pending.data = data if isinstance(data, (bytes, bytearray)) else bytes(data)
            return
        pending.data = bytearray(pending.length)
    elif isinstance(pending.data, bytes):
        pending.data = bytearray(pending.data)
    pending.data[start:start + len(data)] = data      # type: ignore[index]


_REPLY_ERRORS: dict[int, str] = {
    Rep.ERR_POLICY: "Denied by server for option {} ({})",
    Rep.ERR_INVALID: "Invalid parameters for option {} ({})",
    Rep.ERR_PLATFORM: "Server lacks support for option {} ({})",
    Rep.ERR_TLS_REQD: "TLS negotiation required before option {} ({})",
    Rep.ERR_UNKNOWN: "Requested export not available",
    Rep.ERR_SHUTDOWN: "Server shutting down before option {} ({})",
    Rep.ERR_BLOCK_SIZE_REQD: "Server requires INFO_BLOCK_SIZE for option {} ({})",
}


def _option_error(event: OptionError, option: int) -> NegotiationError:
    """QEMU's message for an option error reply, with its hints."""
    text = _REPLY_ERRORS.get(event.reply,                  # type: ignore[call-overload]
                             "Unknown error code when asking for option {} ({})")
    message = text.format(option, option_name(option))
    if event.reply == Rep.ERR_TLS_REQD:
        message += "\nDid you forget a valid tls-creds?"
    if event.message:
        message += f"\nserver reported: {event.message}"
    return NegotiationError(message)

