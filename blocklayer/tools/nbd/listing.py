"""``-L``: list another server's exports as qemu-nbd does, over the client machine."""
from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys

from ...nbd import events as ev
from ...nbd.events import CLIENT
from ...nbd.protocol import Connection, ProtocolError
from ...nbd.wire import (
    ClientFlag,
    HandshakeFlag,
    InfoBlockSize,
    InfoExport,
    InfoType,
    TransmissionFlag,
)

FLAG_NAMES = {
    TransmissionFlag.READ_ONLY: "readonly", TransmissionFlag.SEND_FLUSH: "flush",
    TransmissionFlag.SEND_FUA: "fua", TransmissionFlag.ROTATIONAL: "rotational",
    TransmissionFlag.SEND_TRIM: "trim", TransmissionFlag.SEND_WRITE_ZEROES: "zeroes",
    TransmissionFlag.SEND_DF: "df", TransmissionFlag.CAN_MULTI_CONN: "multi",
    TransmissionFlag.SEND_RESIZE: "resize", TransmissionFlag.SEND_CACHE: "cache",
    TransmissionFlag.SEND_FAST_ZERO: "fast-zero",
}


class ListError(Exception):
    """Listing failed; the message is qemu-nbd's."""


class _Client:
    """Option negotiation on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn = Connection(CLIENT)
        self.reader, self.writer = reader, writer

    async def next(self) -> ev.Event:
        while True:
            event = self.conn.next_event()
            if isinstance(event, ev.Event):
                if isinstance(event, ev.ConnectionClosed):
                    raise ListError("Server closed the connection")
                return event
            self.conn.receive_data(await self.reader.read(65536))

    async def option(self, option: ev.Option) -> list[ev.Event]:
        """Send one option; its replies up to and including the final one."""
        self.writer.write(self.conn.send(option))
        replies = []
        while True:
            event = await self.next()
            replies.append(event)
            if isinstance(event, (ev.OptionAck, ev.OptionError)):
                return replies


async def list_exports(path: str | None, host: str, port: str,
                       tls: ssl.SSLContext | None, hostname: str) -> str:
    """The text qemu-nbd -L prints for the server at ``path`` or ``host:port``."""
    where = path if path is not None else f"{host}:{port}"
    try:
        if path is not None:
            reader, writer = await asyncio.open_unix_connection(path)
        else:
            reader, writer = await asyncio.open_connection(host, int(port))
    except socket.gaierror as exc:
        raise ListError(f"address resolution failed for {where}: {exc.strerror}") from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListError(f"Failed to connect to '{where}': {reason}") from None
    client = _Client(reader, writer)
    try:
        return await _negotiate(client, tls, hostname)
    except ProtocolError as exc:
        raise ListError(str(exc)) from None
    finally:
        writer.close()


async def _negotiate(client: _Client, tls: ssl.SSLContext | None, hostname: str) -> str:
    greeting = await client.next()
    assert isinstance(greeting, ev.Greeting)
    if not greeting.flags & HandshakeFlag.FIXED_NEWSTYLE:
        raise ListError("Server does not support fixed newstyle")
    flags = ClientFlag.FIXED_NEWSTYLE
    if greeting.flags & HandshakeFlag.NO_ZEROES:
        flags |= ClientFlag.NO_ZEROES
    client.writer.write(client.conn.send(ev.ClientFlags(flags)))
    if tls is not None:
        reply = (await client.option(ev.StartTLSOption()))[-1]
        if not isinstance(reply, ev.OptionAck):
            raise ListError("Server don't support STARTTLS option")
        await client.writer.start_tls(tls, server_hostname=hostname)
        client.conn.tls_established()
    await client.option(ev.StructuredReplyOption())
    replies = await client.option(ev.ListOption())
    if isinstance(replies[-1], ev.OptionError):
        raise ListError(replies[-1].message or "Server does not support export lists")
    exports = [r for r in replies if isinstance(r, ev.ServerReply)]
    lines = [f"exports available: {len(exports)}"]
    for export in exports:
        lines += await _describe(client, export)
    client.writer.write(client.conn.send(ev.AbortOption()))
    return "\n".join(lines) + "\n"


async def _describe(client: _Client, export: ev.ServerReply) -> list[str]:
    lines = [f" export: '{export.name}'"]
    if export.description:
        lines.append(f"  description: {export.description}")
    replies = await client.option(ev.InfoOption(export.name, (InfoType.BLOCK_SIZE,)))
    infos = [r.info for r in replies if isinstance(r, ev.InfoReply)]
    for info in infos:
        if isinstance(info, InfoExport) and info.flags & TransmissionFlag.HAS_FLAGS:
            names = "".join(f" {name}" for bit, name in FLAG_NAMES.items()
                            if info.flags & bit)
            lines += [f"  size:  {info.size}", f"  flags: 0x{info.flags:x} ({names} )"]
    for info in infos:
        if isinstance(info, InfoBlockSize):
            lines += [f"  min block: {info.minimum}", f"  opt block: {info.preferred}",
                      f"  max block: {info.maximum}"]
    if client.conn.structured_replies:
        contexts = await _contexts(client, export.name, ())
        if contexts and not any(c.startswith("qemu:") for c in contexts):
            contexts += await _contexts(client, export.name, ("qemu:",))
        if contexts:
            lines.append(f"  available meta contexts: {len(contexts)}")
            lines += [f"   {c}" for c in contexts]
    return lines


async def _contexts(client: _Client, name: str, queries: tuple[str, ...]) -> list[str]:
    replies = await client.option(ev.ListMetaContextOption(name, queries))
    return [r.name for r in replies if isinstance(r, ev.MetaContextReply)]


def run_list(prog: str, path: str | None, host: str, port: str,
             tls: ssl.SSLContext | None) -> int:
    try:
        text = asyncio.run(list_exports(path, host, port, tls, host))
    except ListError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1
    sys.stdout.write(text)
    return 0
