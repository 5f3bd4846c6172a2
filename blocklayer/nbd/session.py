"""The server core: one client's session, answering its options and requests as
qemu-nbd 7.2 does, with the exports' nodes behind it.

A :class:`ServerSession` owns the server-side :class:`~.protocol.Connection` and turns
what it receives into replies; it does no I/O of its own except the node's request
path (``node.read/write/write_zeroes/discard/flush/block_status``).  The asyncio adapter
(:mod:`.server`) moves the bytes; the tests drive it in memory.
"""
from __future__ import annotations

import errno as _errno
from collections.abc import AsyncIterator, Callable, Mapping

from ..core.driver import ReqFlag
from ..core.errors import BlockError
from ..core.io import is_zero
from . import events as ev
from . import wire
from .events import SERVER
from .export import Export
from .protocol import Connection, option_code, option_name
from .wire import Cmd, CmdFlag, Errno, HandshakeFlag, InfoType, Rep

# errno -> NBD error, as qemu-nbd's system_errno_to_nbd_errno (anything else: EINVAL).
_NBD_ERRNO = {
    _errno.EPERM: Errno.EPERM, _errno.EROFS: Errno.EPERM, _errno.EIO: Errno.EIO,
    _errno.ENOMEM: Errno.ENOMEM, _errno.ENOSPC: Errno.ENOSPC, _errno.EFBIG: Errno.ENOSPC,
    _errno.EDQUOT: Errno.ENOSPC, _errno.EOVERFLOW: Errno.EOVERFLOW,
    _errno.ENOTSUP: Errno.ENOTSUP, _errno.ESHUTDOWN: Errno.ESHUTDOWN,
}


_FUA, _DF, _NO_HOLE, _FAST_ZERO, _REQ_ONE = (int(f) for f in (
    CmdFlag.FUA, CmdFlag.DF, CmdFlag.NO_HOLE, CmdFlag.FAST_ZERO, CmdFlag.REQ_ONE))
SMALL_READ = 64 * 1024            # reads up to this skip the block status query


def nbd_errno(code: int) -> int:
    """The NBD error for a system errno (qemu-nbd's mapping)."""
    return int(_NBD_ERRNO.get(code, Errno.EINVAL))


class ServerSession:
    """One client of an NBD server."""

    def __init__(self, exports: Mapping[str, Export], *, tls: bool = False) -> None:
        self.exports = exports
        self.tls = tls                       # TLS configured: required before options
        self.tls_done = False
        self.conn = Connection(SERVER)
        self.export: Export | None = None    # set once in transmission

    def greeting(self) -> ev.Greeting:
        return ev.Greeting(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES)

    # -- handshake ---------------------------------------------------------------------

    def answer_option(self, event: ev.Event) -> list[ev.Event]:
        """The replies to one option event (BadOption included), in order.  An empty
        list means drop the connection (qemu-nbd's answer to a bad EXPORT_NAME); so
        does the connection's state being CLOSED once they are sent (after ABORT, or
        a fatal BadOption)."""
        if self.tls and not self.tls_done:
            return self._before_tls(event)
        if isinstance(event, ev.BadOption):
            return [ev.OptionError(event.reply, event.message)]
        if isinstance(event, ev.ExportNameOption):
            return self._export_name(event.name)
        if isinstance(event, (ev.InfoOption, ev.GoOption)):
            return self._info(event)
        if isinstance(event, ev.StartTLSOption):
            if self.tls:
                return [ev.OptionError(Rep.ERR_INVALID, "TLS already enabled")]
            return [ev.OptionError(Rep.ERR_POLICY, "TLS not configured")]
        if isinstance(event, ev.StructuredReplyOption):
            if self.conn.structured_replies:
                return [ev.OptionError(Rep.ERR_INVALID, "structured reply already negotiated")]
            return [ev.OptionAck()]
        if isinstance(event, (ev.ListMetaContextOption, ev.SetMetaContextOption)):
            return self._meta_contexts(event)
        if isinstance(event, ev.ListOption):
            return [*(ev.ServerReply(e.name, e.description) for e in self.exports.values()),
                    ev.OptionAck()]
        if isinstance(event, ev.AbortOption):
            return [ev.OptionAck()]
        assert isinstance(event, ev.UnknownOption)
        return [ev.OptionError(Rep.ERR_UNSUP, f"Unsupported option {event.option} "
                                           f"({option_name(event.option)})")]

    def _before_tls(self, event: ev.Event) -> list[ev.Event]:
        if isinstance(event, ev.StartTLSOption):
            return [ev.OptionAck()]
        if isinstance(event, ev.ExportNameOption):
            return []
        if isinstance(event, ev.BadOption):
            if event.fatal:
                return [ev.OptionError(event.reply, event.message)]
            code = event.option
        else:
            assert isinstance(event, ev.Option)
            code = option_code(event)
        return [ev.OptionError(Rep.ERR_TLS_REQD, f"Option 0x{code:x} not permitted before TLS")]

    def _export_name(self, name: str) -> list[ev.Event]:
        export = self.exports.get(name)
        if export is None:
            return []                       # "export not found": no way to say it
        self.export = export
        return [ev.ExportInfo(export.size, export.flags(self.conn.structured_replies))]

    def _info(self, event: ev.InfoOption | ev.GoOption) -> list[ev.Event]:
        export = self.exports.get(event.name)
        if export is None:
            return [ev.OptionError(Rep.ERR_UNKNOWN, f"export '{_sane(event.name)}' not present")]
        asked_sizes = InfoType.BLOCK_SIZE in event.types
        replies: list[ev.Event] = []
        if InfoType.NAME in event.types:
            replies.append(ev.InfoReply(wire.InfoName(export.name)))
        if export.description:
            replies.append(ev.InfoReply(wire.InfoDescription(export.description)))
        info_asked = isinstance(event, ev.InfoOption)
        replies.append(ev.InfoReply(export.block_size(asked_sizes or info_asked)))
        replies.append(ev.InfoReply(wire.InfoExport(
            export.size, export.flags(self.conn.structured_replies))))
        if info_asked and not asked_sizes and export.request_alignment > 1:
            replies.append(ev.OptionError(Rep.ERR_BLOCK_SIZE_REQD,
                                       "request NBD_INFO_BLOCK_SIZE to use this export"))
            return replies
        replies.append(ev.OptionAck())
        if isinstance(event, ev.GoOption):
            self.export = export
        return replies

    def _meta_contexts(self, event: ev.ListMetaContextOption | ev.SetMetaContextOption) -> list[ev.Event]:
        listing = isinstance(event, ev.ListMetaContextOption)
        if not self.conn.structured_replies:
            return [ev.OptionError(Rep.ERR_INVALID, f"request option '{option_name(option_code(event))}' "
                                                 "when structured reply is not negotiated")]
        export = self.exports.get(event.name)
        if export is None:
            return [ev.OptionError(Rep.ERR_UNKNOWN, f"export '{_sane(event.name)}' not present")]
        chosen = export.match_contexts(tuple(event.queries), listing)
        return [*(ev.MetaContextReply(0 if listing else i, name) for i, name in chosen.items()),
                ev.OptionAck()]

    # -- transmission ------------------------------------------------------------------

    def refuse(self, event: ev.InvalidRequest) -> ev.Reply:
        """The reply to a request the machine refused (qemu-nbd answers EINVAL)."""
        return self._error(event.cookie, _errno.EINVAL, event.message)

    def _error(self, cookie: int, code: int, message: str) -> ev.Reply:
        if self.conn.structured_replies:
            return ev.ErrorReply(cookie, nbd_errno(code), message)
        return ev.SimpleReply(cookie, nbd_errno(code))

    def _done(self, cookie: int) -> ev.Reply:
        return ev.ReplyDone(cookie) if self.conn.structured_replies else ev.SimpleReply(cookie)

    async def serve(self, req: ev.Request) -> AsyncIterator[ev.Reply]:
        """The replies to one valid request, through the export node's request path."""
        export = self.export
        assert export is not None
        handler = _HANDLERS[req.command]
        if export.node.state.quiesce:
            await export.ready()
        try:
            async for reply in handler(self, export, req):
                yield reply
        except BlockError as exc:
            yield self._error(req.cookie, exc.errno, _FAILED[req.command])
        except OSError as exc:
            yield self._error(req.cookie, exc.errno or _errno.EIO, _FAILED[req.command])

    async def _read(self, export: Export, req: ev.Request) -> AsyncIterator[ev.Reply]:
        node = export.node
        if req.flags & _FUA:
            try:
                await node.flush()
            except BlockError as exc:
                yield self._error(req.cookie, exc.errno, "flush failed")
                return
        if self.conn.structured_replies and not req.flags & _DF and req.length:
            async for reply in self._sparse_read(export, req):
                yield reply
            return
        data = await node.read(req.offset, req.length) if req.length else b""
        if not self.conn.structured_replies:
            yield ev.SimpleReply(req.cookie, 0, data)
        elif req.length:
            yield ev.ReadData(req.cookie, req.offset, data, done=True)
        else:
            yield ev.ReplyDone(req.cookie)

    async def _sparse_read(self, export: Export, req: ev.Request) -> AsyncIterator[ev.Reply]:
        """Holes where the range reads as zeroes, data elsewhere.  A read up to
        SMALL_READ is read first and answered as one hole if it is all zeroes, else as
        one data chunk (a block status query would cost more than the read); a larger
        one is split where block status says zeroes, as qemu-nbd splits it."""
        if req.length <= SMALL_READ:
            data = await export.node.read(req.offset, req.length)
            if is_zero(data):
                yield ev.ReadHole(req.cookie, req.offset, req.length, True)
            else:
                yield ev.ReadData(req.cookie, req.offset, data, True)
            return
        node, pos, end = export.node, req.offset, req.offset + req.length
        while pos < end:
            try:
                st = await node.block_status_above(None, pos, end - pos)
            except BlockError as exc:
                yield ev.ErrorReply(req.cookie, nbd_errno(exc.errno),
                                 f"unable to check for holes: {exc.strerror}")
                return
            n = max(1, min(st.length, end - pos))
            final = pos + n == end
            if st.zero:
                yield ev.ReadHole(req.cookie, pos, n, final)
            else:
                yield ev.ReadData(req.cookie, pos, await node.read(pos, n), final)
            pos += n

    async def _write(self, export: Export, req: ev.Request) -> AsyncIterator[ev.Reply]:
        flags = ReqFlag.FUA if req.flags & _FUA else ReqFlag.NONE
        await export.node.write(req.offset, req.data, flags)
        yield self._done(req.cookie)

    async def _write_zeroes(self, export: Export, req: ev.Request) -> AsyncIterator[ev.Reply]:
        flags = ReqFlag.NONE
        if not req.flags & _NO_HOLE:
            flags |= ReqFlag.MAY_UNMAP
        if req.flags & _FUA:
            flags |= ReqFlag.FUA
        if req.flags & _FAST_ZERO:
            flags |= ReqFlag.NO_FALLBACK
        await export.node.write_zeroes(req.offset, req.length, flags)
        yield self._done(req.cookie)

    async def _flush(self, export: Export, req: ev.Request) -> AsyncIterator[ev.Reply]:
        await export.node.flush()
        yield self._done(req.cookie)

    async def _trim(self, export: Export, req: ev.Request) -> AsyncIterator[ev.Reply]:
        await export.node.discard(req.offset, req.length)
        if req.flags & _FUA:
            await export.node.flush()
        yield self._done(req.cookie)

    async def _cache(self, export: Export, req: ev.Request) -> AsyncIterator[ev.Reply]:
        if req.length:
            await export.node.read(req.offset, req.length)   # a read warms the cache
        yield self._done(req.cookie)

    async def _block_status(self, export: Export, req: ev.Request) -> AsyncIterator[ev.Reply]:
        max_extents = 1 if req.flags & _REQ_ONE else wire.MAX_BLOCK_STATUS_EXTENTS
        contexts = sorted(self.conn.meta_contexts.items())
        for n, (context_id, name) in enumerate(contexts):
            try:
                extents = await export.extents(name, req.offset, req.length, max_extents)
            except BlockError as exc:
                yield ev.ErrorReply(req.cookie, nbd_errno(exc.errno), "can't get block status")
                return
            yield ev.BlockStatusReply(req.cookie, context_id, tuple(extents),
                                   n == len(contexts) - 1)


_HANDLERS: dict[int, Callable[[ServerSession, Export, ev.Request], AsyncIterator[ev.Reply]]] = {
    Cmd.READ: ServerSession._read, Cmd.WRITE: ServerSession._write,
    Cmd.WRITE_ZEROES: ServerSession._write_zeroes, Cmd.FLUSH: ServerSession._flush,
    Cmd.TRIM: ServerSession._trim, Cmd.CACHE: ServerSession._cache,
    Cmd.BLOCK_STATUS: ServerSession._block_status,
}
_FAILED: dict[int, str] = {
    Cmd.READ: "reading from file failed", Cmd.WRITE: "writing to file failed",
    Cmd.WRITE_ZEROES: "writing to file failed", Cmd.FLUSH: "flush failed",
    Cmd.TRIM: "discard failed", Cmd.CACHE: "caching data failed",
    Cmd.BLOCK_STATUS: "can't get block status",
}


def _sane(name: str) -> str:
    """An export name fit for a message (qemu-nbd's nbd_sanitize_name: at most 80)."""
    return name if len(name) <= 80 else name[:80] + "..."

