"""The asyncio adapter of the NBD server: sockets in, :class:`~.session.ServerSession` on
top, bytes moved both ways.  Nothing here knows the protocol beyond the events.

:class:`NBDServer` serves a set of exports to many clients at once on TCP and unix
sockets (or sockets handed over, as systemd's socket activation does).  Each client has
its own session: one that sends garbage, oversized or truncated requests, or goes away
mid-request is dropped alone; requests in flight on other connections carry on.  At
most ``MAX_REQUESTS`` requests of one client are served at once (qemu-nbd's 16), and
nothing more is read from it meanwhile, so a client holds a bounded amount of memory.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from .events import (
    ClientFlags,
    ConnectionClosed,
    Disconnect,
    Event,
    InvalidRequest,
    Request,
)
from .export import Export
from .protocol import Connection, ProtocolError, State
from .session import ServerSession

MAX_REQUESTS = 16
READ_SIZE = 256 * 1024
FLUSH_BYTES = 256 * 1024          # corked replies are written at this size at once

log = logging.getLogger(__name__)


class NBDServer:
    """Serves ``exports`` to at most ``shared`` clients at once (0: no limit); later
    clients wait for a free place, as they wait in qemu-nbd's listen backlog."""

    def __init__(self, exports: Mapping[str, Export], *, shared: int = 0,
                 tls: ssl.SSLContext | None = None, tls_authz: str | None = None,
                 on_client_change: Callable[[int], None] | None = None) -> None:
        self.exports = exports
        self.tls = tls
        self.tls_authz = tls_authz             # the client certificate's DN, if set
        self.places = asyncio.Semaphore(shared) if shared > 0 else None
        self.on_client_change = on_client_change
        self.clients: set[asyncio.Task[None]] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.served = 0                       # clients that got a session so far
        self.connections: set[_Client] = set()   # clients in their session now

    # -- listening --------------------------------------------------------------------

    async def listen_tcp(self, host: str | None, port: int) -> list[tuple[str, int]]:
        """Listen on every address ``host`` resolves to; the bound addresses."""
        server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        self.servers.append(server)
        return [s.getsockname()[:2] for s in server.sockets]

    async def listen_unix(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            if os.path.exists(path) and not os.path.isfile(path):
                os.unlink(path)
        self.servers.append(await asyncio.start_unix_server(self._accept, path))

    async def listen_socket(self, sock: socket.socket) -> None:
        """Serve on a listening socket made elsewhere (systemd socket activation)."""
        if sock.family == socket.AF_UNIX:
            server = await asyncio.start_unix_server(self._accept, sock=sock)
        else:
            server = await asyncio.start_server(self._accept, sock=sock)
        self.servers.append(server)

    async def serve_connection(self, sock: socket.socket) -> None:
        """Serve one connected socket (tests, -c)."""
        reader, writer = await asyncio.open_connection(sock=sock)
        await self._accept(reader, writer)

    async def close(self) -> None:
        """Stop listening and drop every client."""
        for server in self.servers:
            server.close()
        for task in list(self.clients):
            task.cancel()
        await asyncio.gather(*self.clients, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()

    def clients_of(self, export: Export) -> list[_Client]:
        """The clients in transmission on ``export``."""
        return [c for c in self.connections if c.session.export is export]

    def drop_clients(self, export: Export) -> None:
        """Disconnect every client of ``export`` (block-export-del mode=hard)."""
        for client in self.clients_of(export):
            client._break("")

    # -- one client -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.clients.add(task)
        try:
            if self.places is None:
                await self._client(reader, writer)
            else:
                async with self.places:
                    await self._client(reader, writer)
        finally:
            self.clients.discard(task)
            writer.close()
            if self.on_client_change is not None:
                self.on_client_change(len(self.clients))

    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self.served += 1
        if self.on_client_change is not None:
            self.on_client_change(len(self.clients))
        client = _Client(self, ServerSession(self.exports, tls=self.tls is not None),
                         reader, writer)
        self.connections.add(client)
        try:
            await client.run()
        except ProtocolError as exc:
            log.info("nbd client dropped: %s", exc)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.info("nbd client connection failed: %s", exc)
        except Exception:                       # a bug: this client only
            log.exception("nbd client failed")
        finally:
            self.connections.discard(client)


class _Client:
    """The loop of one connection: handshake, then requests served concurrently."""

    def __init__(self, server: NBDServer, session: ServerSession,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.session = session
        self.conn: Connection = session.conn
        self.reader = reader
        self.writer = writer
        self.slots = asyncio.Semaphore(MAX_REQUESTS)
        self.tasks: set[asyncio.Task[None]] = set()
        self.broken = False
        self.pending: list[bytes | bytearray | memoryview] = []   # corked replies
        self.pending_bytes = 0

    async def run(self) -> None:
        self._send(self.session.greeting())
        self._flush()
        if not await self._handshake():
            return
        try:
            await self._transmission()
        finally:
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            if not self.broken:
                self._flush()

    async def _next(self) -> Event:
        while True:
            event = self.conn.next_event()
            if isinstance(event, Event):
                return event
            data = await self.reader.read(READ_SIZE)
            self.conn.receive_data(data)

    def _send(self, event: Event) -> None:
        """Queue an event's bytes; replies made in one loop iteration go out in one
        write (one system call and one wake-up of the peer, not one per reply)."""
        parts = self.conn.send_parts(event)
        if not self.pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self.pending += parts
        self.pending_bytes += sum(len(p) for p in parts)
        if self.pending_bytes >= FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.writelines(self.pending)
            self.pending, self.pending_bytes = [], 0

    async def _handshake(self) -> bool:
        conn = self.conn
        while conn.state is not State.TRANSMISSION:
            event = await self._next()
            if isinstance(event, ConnectionClosed):
                return False
            if isinstance(event, ClientFlags):
                continue
            replies = self.session.answer_option(event)
            if not replies:
                return False
            for reply in replies:
                self._send(reply)
            self._flush()
            await self.writer.drain()
            if conn.state is State.CLOSED:
                return False
            if conn.state is State.TLS_HANDSHAKE:
                assert self.server.tls is not None
                await self.writer.start_tls(self.server.tls)
                self._authorize()
                conn.tls_established()
                self.session.tls_done = True
        return True

    def _authorize(self) -> None:
        """--tls-authz: the client certificate's distinguished name must match."""
        wanted = self.server.tls_authz
        if wanted is None:
            return
        ssl_object = self.writer.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        name = distinguished_name(cert or {})
        if name != wanted:
            raise ssl.SSLError(f"TLS x509 authz check for {name} is denied")

    async def _transmission(self) -> None:
        while not self.broken:
            await self.slots.acquire()
            try:
                event = await self._next()
            except BaseException:
                self.slots.release()
                raise
            if isinstance(event, Request):
                task = asyncio.create_task(self._serve(event))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                continue
            self.slots.release()
            if isinstance(event, InvalidRequest):
                self._send(self.session.refuse(event))
                self._flush()
                await self.writer.drain()
                if self.conn.state is State.CLOSED:
                    return
            elif isinstance(event, (Disconnect, ConnectionClosed)):
                return

    async def _serve(self, req: Request) -> None:
        try:
            async for reply in self.session.serve(req):
                if self.broken:
                    return
                self._send(reply)
                await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self._break(f"nbd client connection failed: {exc}")
        except Exception:
            log.exception("nbd request failed")
            self._break("")
        finally:
            self.slots.release()

    def _break(self, why: str) -> None:
        """A reply cannot be sent: the connection is done (others carry on)."""
        if why:
            log.info(why)
        self.broken = True
        self.writer.transport.abort()


_DN_KEYS = {"countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
            "organizationName": "O", "organizationalUnitName": "OU", "commonName": "CN",
            "emailAddress": "EMAIL", "domainComponent": "DC"}


def distinguished_name(cert: dict[str, Any]) -> str:
    """A certificate subject as QEMU 7.2's authz compares it: the names in the
    certificate's order (``C=GB,O=Test,CN=client``; checked against QSD)."""
    parts = [f"{_DN_KEYS.get(key, key)}={value}"
             for rdn in cert.get("subject", ()) for key, value in rdn]
    return ",".join(parts)
