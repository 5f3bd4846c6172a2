"""asyncio adapters: QMP monitors on unix and TCP sockets.

A :class:`MonitorServer` is one listening socket (QEMU's socket chardev with a monitor
attached).  Like QEMU's socket chardev it serves one client at a time: a second
connection waits, ungreeted, until the first one leaves.  Several servers run at once,
each client with its own :class:`ServerConnection` (its own negotiation state).

Memory stays bounded per client: commands are read, run and answered one at a time and
the socket is not read again until the reply has been written out (a client that
pipelines without reading stalls itself, not the daemon); a message in progress is
bounded by the JSON streamer; events queue only up to ``max_event_backlog`` bytes in
the transport and are dropped beyond it.  A client that disconnects mid-command only
ends its own session; the command runs to completion.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from .dispatch import Dispatcher
from .protocol import LocalProtocolError, ServerConnection, State

READ_CHUNK = 64 * 1024


class Session:
    def __init__(self, conn: ServerConnection, writer: asyncio.StreamWriter,
                 max_event_backlog: int) -> None:
        self.conn = conn
        self.writer = writer
        self.max_event_backlog = max_event_backlog

    def send_event(self, name: str, data: dict[str, Any] | None, timestamp: float) -> None:
        if self.conn.state is not State.COMMAND or self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > self.max_event_backlog:
            return
        self.writer.write(self.conn.event(name, data, timestamp))


class MonitorServer:
    """One listening socket with a QMP monitor on it."""

    def __init__(self, dispatcher: Dispatcher, app: Any, version: dict[str, Any], *,
                 max_message: int | None = None, max_event_backlog: int = 16 << 20) -> None:
        self.dispatcher = dispatcher
        self.app = app
        self.version = version
        self.max_message = max_message
        self.max_event_backlog = max_event_backlog
        self.sessions: set[Session] = set()
        self._server: asyncio.base_events.Server | None = None
        self._one_client = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.path: str | None = None

    async def start_unix(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._accept, path=path)
        self.path = path

    async def start_tcp(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, host=host or None, port=port,
                                                  reuse_address=True)

    def broadcast(self, name: str, data: dict[str, Any] | None, timestamp: float) -> None:
        for session in list(self.sessions):
            session.send_event(name, data, timestamp)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with self._one_client:
                await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, LocalProtocolError):
            pass
        except asyncio.CancelledError:
            pass               # the server is closing: this session simply ends
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ServerConnection(self.version) if self.max_message is None else \
            ServerConnection(self.version, max_message=self.max_message)
        session = Session(conn, writer, self.max_event_backlog)
        writer.write(conn.greeting())
        self.sessions.add(session)
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    return
                for event in conn.receive_data(data):
                    reply = await self.dispatcher.handle(conn, event, self.app)
                    if writer.is_closing():
                        return
                    writer.write(reply)
                    await writer.drain()
        finally:
            self.sessions.discard(session)
            conn.close()
