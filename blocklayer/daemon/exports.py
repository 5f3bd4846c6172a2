"""Where the daemon meets the NBD server (``blocklayer/nbd/server.py``).

:class:`ExportHooks` is the interface: the daemon validates every call against the
schema and then calls one of these methods with the validated arguments (QMP names).
:class:`NBDExports` carries them out on one :class:`~blocklayer.nbd.server.NBDServer`
as QSD 7.2 does; :class:`NoExports` refuses everything (a daemon without exports).

An export holds its node (consistent read, and write when writable; everything
shared) so the node cannot be deleted while it exists.  Deleting an export takes it
off the server's list at once (no new clients) and marks it shutting down; it goes,
and ``BLOCK_EXPORT_DELETED`` is emitted, when its last client has left (``hard``
mode disconnects them first).
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Protocol

from blocklayer.core import dirty
from blocklayer.core.driver import Perm
from blocklayer.core.errors import BlockError
from blocklayer.core.node import BlockNode
from blocklayer.nbd.export import Export
from blocklayer.nbd.server import NBDServer
from blocklayer.qmp.protocol import CommandError

NBD_MAX_STRING = 4096                  # NBD_MAX_STRING_SIZE: names and descriptions
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")


class ExportHooks(Protocol):
    async def nbd_server_start(self, daemon: Any, args: dict[str, Any]) -> None:
        """``nbd-server-start`` (addr is SocketAddressLegacy) or ``--nbd-server`` (the
        flat SocketAddress form, converted to the legacy one by the daemon)."""

    async def nbd_server_stop(self, daemon: Any) -> None: ...

    async def nbd_server_add(self, daemon: Any, args: dict[str, Any]) -> None: ...

    async def nbd_server_remove(self, daemon: Any, args: dict[str, Any]) -> None: ...

    async def block_export_add(self, daemon: Any, args: dict[str, Any]) -> None:
        """``block-export-add`` or ``--export``: BlockExportOptions."""

    async def block_export_del(self, daemon: Any, args: dict[str, Any]) -> None:
        """Must emit ``BLOCK_EXPORT_DELETED {id}`` through ``daemon.emit`` when done."""

    def query_block_exports(self, daemon: Any) -> list[dict[str, Any]]: ...

    async def shutdown(self, daemon: Any) -> None:
        """Close every export and the server (daemon exit)."""


class NoExports:
    """No NBD server wired in yet: every export command fails, none exist."""

    NOT_WIRED = "NBD exports are not available in this build of blocklayer-storage-daemon"

    async def nbd_server_start(self, daemon: Any, args: dict[str, Any]) -> None:
        raise CommandError(self.NOT_WIRED)

    async def nbd_server_stop(self, daemon: Any) -> None:
        raise CommandError("NBD server not running")

    async def nbd_server_add(self, daemon: Any, args: dict[str, Any]) -> None:
        raise CommandError("NBD server not running")

    async def nbd_server_remove(self, daemon: Any, args: dict[str, Any]) -> None:
        raise CommandError("NBD server not running")

    async def block_export_add(self, daemon: Any, args: dict[str, Any]) -> None:
        raise CommandError(self.NOT_WIRED)

    async def block_export_del(self, daemon: Any, args: dict[str, Any]) -> None:
        raise CommandError(f"Export '{args['id']}' is not found")

    def query_block_exports(self, daemon: Any) -> list[dict[str, Any]]:
        return []

    async def shutdown(self, daemon: Any) -> None:
        return None


@dataclass
class BlockExport:
    """One export of the daemon (QEMU's BlockExport)."""

    id: str
    node: BlockNode
    nbd: Export
    shutting_down: bool = False

    def node_replaced(self, node: BlockNode) -> None:
        """The graph moved this export to ``node`` (an overlay or a filter above)."""
        self.node = self.nbd.node = node

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "type": "nbd", "node-name": self.node.name,
                "shutting-down": self.shutting_down}


class NBDExports:
    """The daemon's NBD server and its exports."""

    def __init__(self) -> None:
        self.server: NBDServer | None = None
        self.by_name: dict[str, Export] = {}        # what clients can still choose
        self.exports: dict[str, BlockExport] = {}   # by id, oldest first
        self.daemon: Any = None
        self.releasing: set[asyncio.Future[Any]] = set()

    # -- the server ----------------------------------------------------------------------
    async def nbd_server_start(self, daemon: Any, args: dict[str, Any]) -> None:
        if self.server is not None:
            raise CommandError("NBD server already running")
        self.daemon = daemon
        tls = _tls_context(daemon, args["tls-creds"]) if args.get("tls-creds") else None
        authz = _authz(daemon, args["tls-authz"]) if args.get("tls-authz") else None
        server = NBDServer(self.by_name, shared=args.get("max-connections") or 0, tls=tls,
                           tls_authz=authz, on_client_change=lambda _n: self._reap())
        addr = args["addr"]
        kind, data = addr["type"], addr["data"]
        try:
            if kind == "unix":
                await server.listen_unix(data["path"])
            elif kind == "inet":
                await server.listen_tcp(data["host"] or None, _port(data["port"]))
            else:
                raise CommandError(f"NBD server address type '{kind}' is not supported "
                                   "by blocklayer-storage-daemon")
        except OSError as exc:
            await server.close()
            raise CommandError(_listen_error(kind, data, exc)) from exc
        self.server = server

    async def nbd_server_stop(self, daemon: Any) -> None:
        if self.server is None:
            raise CommandError("NBD server not running")
        for exp in list(self.exports.values()):
            if not exp.shutting_down:
                self._request_shutdown(exp)
            self.server.drop_clients(exp.nbd)
        server, self.server = self.server, None
        await server.close()
        self._reap(server)
        await self._released()

    # -- exports -------------------------------------------------------------------------
    async def nbd_server_add(self, daemon: Any, args: dict[str, Any]) -> None:
        if self.server is None:
            raise CommandError("NBD server not running")
        name = args.get("name") or args["device"]
        opts = {"type": "nbd", "id": name, "node-name": args["device"], "name": name,
                "writable": args.get("writable", False)}
        for key in ("description",):
            if key in args:
                opts[key] = args[key]
        if args.get("bitmap"):
            opts["bitmaps"] = [args["bitmap"]]
        await self.block_export_add(daemon, opts)

    async def nbd_server_remove(self, daemon: Any, args: dict[str, Any]) -> None:
        await self.block_export_del(daemon, args)

    async def block_export_add(self, daemon: Any, args: dict[str, Any]) -> None:
        from .lookup import lookup_bs
        self.daemon = daemon
        if args["type"] != "nbd":
            raise CommandError(f"Export type '{args['type']}' is not supported by "
                               "blocklayer-storage-daemon")
        exp_id = args["id"]
        if not _ID.match(exp_id):
            raise CommandError("Invalid block export id")
        if exp_id in self.exports:
            raise CommandError(f"Block export id '{exp_id}' is already in use")
        node = lookup_bs(daemon, None, args["node-name"])
        writable = bool(args.get("writable", False))
        if writable and node.read_only:
            raise CommandError("Cannot export read-only node as writable")
        if self.server is None:
            raise CommandError("NBD server not running")
        name = args.get("name") or args["node-name"]
        if len(name) > NBD_MAX_STRING:
            raise CommandError(f"export name '{name}' too long")
        description = args.get("description") or ""
        if len(description) > NBD_MAX_STRING:
            raise CommandError(f"description '{description}' too long")
        if name in self.by_name:
            raise CommandError(f"NBD server already has export named '{name}'")
        try:
            bitmaps = dirty.export_bitmaps(node, args.get("bitmaps") or (), not writable)
        except BlockError as exc:
            raise CommandError(exc.message) from exc
        nbd = Export(name, node, description=description, readonly=not writable,
                     multi_conn=bool(args.get("multi-conn", False)) and writable,
                     allocation_depth=bool(args.get("allocation-depth", False)),
                     bitmaps=tuple(bitmaps), dirty_bitmaps=bitmaps)
        exp = BlockExport(exp_id, node, nbd)
        perm = Perm.CONSISTENT_READ | (Perm.WRITE if writable else Perm.NONE)
        try:
            node.add_user(exp, perm, Perm.ALL)
        except BlockError as exc:
            dirty.release_bitmaps(bitmaps)
            raise CommandError(exc.message) from exc
        self.exports[exp_id] = exp
        self.by_name[name] = nbd

    async def block_export_del(self, daemon: Any, args: dict[str, Any]) -> None:
        exp_id = str(args["id"] if "id" in args else args["name"])
        exp = self.exports.get(exp_id)
        if exp is None:
            raise CommandError(f"Export '{exp_id}' is not found")
        if exp.shutting_down:
            raise CommandError(f"Block export '{exp_id}' is already shutting down")
        clients = self.server.clients_of(exp.nbd) if self.server is not None else []
        if clients and args.get("mode", "safe") == "safe":
            raise CommandError(f"export '{exp_id}' still in use")
        self._request_shutdown(exp)
        if self.server is not None:
            self.server.drop_clients(exp.nbd)
        self._reap()
        await self._released()

    def query_block_exports(self, daemon: Any) -> list[dict[str, Any]]:
        return [exp.info() for exp in reversed(self.exports.values())]

    async def shutdown(self, daemon: Any) -> None:
        if self.server is not None:
            await self.nbd_server_stop(daemon)

    # -- going away ----------------------------------------------------------------------
    def _request_shutdown(self, exp: BlockExport) -> None:
        exp.shutting_down = True
        if self.by_name.get(exp.nbd.name) is exp.nbd:
            del self.by_name[exp.nbd.name]

    def _reap(self, server: NBDServer | None = None) -> None:
        """Delete the exports shutting down whose clients have all left."""
        server = server or self.server
        for exp in list(self.exports.values()):
            if not exp.shutting_down:
                continue
            if server is not None and server.clients_of(exp.nbd):
                continue
            del self.exports[exp.id]
            dirty.release_bitmaps(exp.nbd.dirty_bitmaps)
            exp.node.remove_user(exp)
            self._release(exp.node)
            if self.daemon is not None:
                self.daemon.emit("BLOCK_EXPORT_DELETED", {"id": exp.id})

    def _release(self, node: BlockNode) -> None:
        """A node only the export held (an overlay a snapshot put under it) goes."""
        if self.daemon is None or self.daemon.owned(node) or node.parents or node.users \
                or node.closed:
            return
        task = asyncio.ensure_future(node.unref())
        self.releasing.add(task)
        task.add_done_callback(self.releasing.discard)

    async def _released(self) -> None:
        if self.releasing:
            await asyncio.gather(*self.releasing, return_exceptions=True)

    def connections(self) -> dict[str, int]:
        """Clients per export id (the metrics)."""
        server = self.server
        return {i: len(server.clients_of(e.nbd)) if server is not None else 0
                for i, e in self.exports.items()}


def _port(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise CommandError(f"Service '{value}' is not a valid port") from None


def _listen_error(kind: str, data: dict[str, Any], exc: OSError) -> str:
    if kind == "unix":
        return f"Failed to bind socket to {data['path']}: {exc.strerror}"
    return f"Failed to bind socket: {exc.strerror}"


def _objects(daemon: Any) -> Any:
    from blocklayer.tools.nbd.objects import Objects

    def text(v: Any) -> str:
        return ("on" if v else "off") if isinstance(v, bool) else str(v)
    return Objects({o.id: {"qom-type": o.qom_type, **{k: text(v) for k, v in o.props.items()}}
                    for o in daemon.objects.values()})


def _tls_context(daemon: Any, creds: str) -> Any:
    try:
        return _objects(daemon).tls_context(creds, server=True)
    except BlockError as exc:
        raise CommandError(exc.message) from exc


def _authz(daemon: Any, authz: str) -> str:
    try:
        return str(_objects(daemon).authz_identity(authz))
    except BlockError as exc:
        raise CommandError(exc.message) from exc


def make_exports() -> ExportHooks:
    """The daemon's export implementation: an NBD server."""
    return NBDExports()
