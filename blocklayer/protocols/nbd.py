"""The ``nbd`` protocol driver: a node whose data lives on an NBD server (QEMU's
block/nbd.c).

Filenames are the URLs ``nbd://host[:port]/export``, ``nbd+tcp://...`` and
``nbd+unix:///export?socket=PATH``, or the legacy ``nbd:unix:PATH[:exportname=X]`` and
``nbd:HOST:PORT[:exportname=X]``; options are QEMU's (``server.type`` = inet | unix with
``server.host``/``server.port`` or ``server.path``, the legacy ``host``/``port``/``path``,
``export``, ``x-dirty-bitmap``, ``reconnect-delay``, ``open-timeout``, ``tls-creds``,
``tls-hostname``).  The protocol is :mod:`blocklayer.nbd.protocol`'s, driven by
:mod:`blocklayer.nbd.client`; this module maps the node's requests onto NBD commands
and declares the capabilities the server advertised, so the request path falls back
for the rest.
"""
from __future__ import annotations

import asyncio
import errno
import os
import time
import urllib.parse
from typing import Any

from ..core.driver import (
    BlockDriver,
    BlockStatus,
    Cap,
    CreateOption,
    Limits,
    Prealloc,
    ReqFlag,
    Status,
)
from ..core.errors import BlockError, InvalidArgument, NotSupported, ReadOnlyError
from ..core.options import OpenFlags
from ..nbd import wire
from ..nbd.client import Address, ConnectionLost, ExportDetails, NBDClient, connect
from ..nbd.wire import Cmd, CmdFlag
from ..nbd.wire import TransmissionFlag as TF

DEFAULT_PORT = "10809"
EXPORTNAME_OPT = ":exportname="
INT_MAX = 0x7FFFFFFF
SECTOR = 512
_LOST_MESSAGE = "Could not open image: {}"
LEGACY_KEYS = ("host", "port", "path")
SERVER_KEYS = {"unix": ("type", "path", "abstract", "tight"),
               "inet": ("type", "host", "port", "numeric", "to", "ipv4", "ipv6",
                        "keep-alive", "mptcp")}


# -- options --------------------------------------------------------------------------

def parse_filename(filename: str, options: dict[str, Any]) -> None:
    """Add the server address and export a filename names to ``options`` (QEMU's
    nbd_parse_filename)."""
    if any(k in options for k in LEGACY_KEYS):
        raise InvalidArgument("host/port/path and a file name may not be specified at "
                              "the same time")
    if "://" in filename:
        if not _parse_uri(filename, options):
            raise InvalidArgument("No valid URL specified")
        return
    file = filename
    at = file.find(EXPORTNAME_OPT)
    if at >= 0:
        export = file[at + len(EXPORTNAME_OPT):]
        if not export:
            return
        file = file[:at]
        options["export"] = export
    if not file.startswith("nbd:"):
        raise InvalidArgument("File name string for NBD must start with 'nbd:'")
    spec = file[len("nbd:"):]
    if not spec:
        return
    if spec.startswith("unix:"):
        options["server.type"] = "unix"
        options["server.path"] = spec[len("unix:"):]
        return
    host, port = _parse_inet(spec)
    options.update({"server.type": "inet", "server.host": host, "server.port": port})


def _parse_inet(spec: str) -> tuple[str, str]:
    """``host:port`` or ``[v6]:port`` (QEMU's inet_parse, without its ``,opt`` tail)."""
    spec = spec.split(",", 1)[0]
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise InvalidArgument(f"error parsing IPv6 address '{spec}'")
        return host, rest[1:]
    host, sep, port = spec.rpartition(":")
    if not sep or ":" in host:
        raise InvalidArgument(f"error parsing address '{spec}'")
    return host, port


def _parse_uri(filename: str, options: dict[str, Any]) -> bool:
    """QEMU's nbd_parse_uri: False for anything it calls an invalid URL."""
    try:
        uri = urllib.parse.urlsplit(filename)
        port = uri.port
    except ValueError:
        return False
    if uri.scheme not in ("nbd", "nbd+tcp", "nbd+unix"):
        return False
    path = urllib.parse.unquote(uri.path)
    path = path.removeprefix("/")
    if path:
        options["export"] = path
    query = [p for p in uri.query.replace(";", "&").split("&") if p] if uri.query else []
    is_unix = uri.scheme == "nbd+unix"
    if len(query) > 1 or is_unix != bool(query):
        return False
    if is_unix:
        name, _, value = query[0].partition("=")
        if uri.netloc or name != "socket":
            return False
        options["server.type"] = "unix"
        options["server.path"] = urllib.parse.unquote(value)
        return True
    if not uri.hostname:
        return False
    options["server.type"] = "inet"
    options["server.host"] = uri.hostname
    options["server.port"] = str(port or DEFAULT_PORT)
    return True


def _legacy_socket_options(options: dict[str, Any]) -> None:
    """``host``/``port``/``path`` become ``server.*`` (QEMU's legacy keys)."""
    host, port, path = (options.pop(k, None) for k in LEGACY_KEYS)
    if host is None and port is None and path is None:
        return
    if any(k.startswith("server.") for k in options):
        raise InvalidArgument("Cannot use 'server' and path/host/port at the same time")
    if path is not None and host is not None:
        raise InvalidArgument("path and host may not be used at the same time")
    if path is not None:
        if port is not None:
            raise InvalidArgument("port may not be used without host")
        options.update({"server.type": "unix", "server.path": str(path)})
    elif host is not None:
        options.update({"server.type": "inet", "server.host": str(host),
                        "server.port": str(port if port is not None else DEFAULT_PORT)})
    else:
        raise InvalidArgument("port may not be used without host")


def server_address(options: dict[str, Any]) -> Address:
    """The ``server.*`` options as an address, with QEMU's messages."""
    server = options.get("server")
    flat = {k[len("server."):]: v for k, v in options.items() if k.startswith("server.")}
    if isinstance(server, dict):
        flat = {**{str(k): v for k, v in server.items()}, **flat}
    if not flat:
        raise InvalidArgument("NBD server address missing")
    kind = flat.get("type")
    if kind is None:
        raise InvalidArgument("Parameter 'type' is missing")
    kind = str(kind)
    if kind in ("fd", "vsock"):
        raise NotSupported(f"NBD server address type '{kind}' is not supported")
    if kind not in SERVER_KEYS:
        raise InvalidArgument(f"Parameter 'type' does not accept value '{kind}'")
    for key in flat:
        if key not in SERVER_KEYS[kind]:
            raise InvalidArgument(f"Parameter 'server.{key}' is unexpected")
    needed = ("path",) if kind == "unix" else ("host", "port")
    for key in needed:
        if key not in flat:
            raise InvalidArgument(f"Parameter '{key}' is missing")
    if kind == "unix":
        return Address("unix", path=str(flat["path"]))
    return Address("inet", host=str(flat["host"]), port=str(flat["port"]))


def _number(options: dict[str, Any], key: str) -> int:
    value = options.get(key, 0)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"Parameter '{key}' expects a number") from None
    if number < 0:
        raise InvalidArgument(f"Parameter '{key}' expects a number")
    return number


def exact_filename(address: Address, export: str | None) -> str:
    """The pseudo-filename QEMU gives an nbd node (nbd_refresh_filename)."""
    if address.kind == "unix":
        return (f"nbd+unix:///{export}?socket={address.path}" if export is not None
                else f"nbd+unix://?socket={address.path}")
    base = f"nbd://{address.host}:{address.port}"
    return f"{base}/{export}" if export is not None else base


# -- the driver -----------------------------------------------------------------------

def server_caps(details: ExportDetails) -> Cap:
    """The capabilities an export's transmission flags (and a selected meta context)
    give the node."""
    caps = Cap.NONE
    if details.flags & TF.SEND_FUA:
        caps |= Cap.FUA
    if details.flags & TF.SEND_WRITE_ZEROES:
        caps |= Cap.WRITE_ZEROES
    if details.flags & TF.SEND_TRIM:
        caps |= Cap.DISCARD
    if details.context_id is not None:
        caps |= Cap.BLOCK_STATUS
    return caps


class NBDDriver(BlockDriver):
    format_name = "nbd"
    is_protocol = True
    open_options = ("filename", "server", "export", "tls-creds", "tls-hostname",
                    "x-dirty-bitmap", "reconnect-delay", "open-timeout", *LEGACY_KEYS)

    create_options = (
        CreateOption("size", "size", "Virtual disk size"),
        CreateOption("preallocation", "string", "Preallocation mode (allowed values: off)"),
    )

    address: Address
    export: str | None = None
    #: what the export offers (its transmission flags, a selected meta context)
    server_caps: Cap = Cap.NONE
    x_dirty_bitmap: str | None = None
    reconnect_delay = 0
    open_timeout = 0
    details: ExportDetails
    client: NBDClient | None = None

    @classmethod
    async def create(cls, filename: str, options: dict[str, Any], *,
                     open_file: Any = None) -> None:
        """An export exists already (QEMU's bdrv_co_create_opts_simple): it must be
        big enough, and its first sector is cleared."""
        from ..core.open import open_image
        prealloc = str(options.get("preallocation", "off"))
        if prealloc != "off":
            raise NotSupported(f"Unsupported preallocation mode '{prealloc}'")
        try:
            node = await open_image(filename, {"driver": "nbd"})
        except BlockError as exc:
            raise BlockError("Protocol driver 'nbd' does not support image creation, and "
                             f"opening the image failed: {exc.message}", exc.errno) from None
        try:
            await node.truncate(int(options.get("size", 0)))
            head = min(node.total_bytes, SECTOR)
            if head:
                try:
                    await node.write_zeroes(0, head, ReqFlag.MAY_UNMAP)
                except BlockError as exc:
                    raise BlockError("Failed to clear the new image's first sector: "
                                     f"{exc.strerror}", exc.errno) from None
        finally:
            await node.close()

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        opts = dict(options)
        filename = opts.pop("filename", None)
        if filename:
            parse_filename(str(filename), opts)
        _legacy_socket_options(opts)
        self.address = server_address(opts)
        self.export = None if opts.get("export") is None else str(opts["export"])
        if self.export is not None and len(self.export.encode()) > wire.MAX_STRING_SIZE:
            raise InvalidArgument("export name too long to send to server")
        if opts.get("tls-creds") is not None:
            raise InvalidArgument(f"No TLS credentials with id '{opts['tls-creds']}'")
        bitmap = opts.get("x-dirty-bitmap")
        self.x_dirty_bitmap = None if bitmap is None else str(bitmap)
        if self.x_dirty_bitmap and len(self.x_dirty_bitmap.encode()) > wire.MAX_STRING_SIZE:
            raise InvalidArgument("x-dirty-bitmap query too long to send to server")
        self.reconnect_delay = _number(opts, "reconnect-delay")
        self.open_timeout = _number(opts, "open-timeout")
        self.node.filename = exact_filename(self.address, self.export)
        self._reconnecting = asyncio.Lock()
        self._lost_at = 0.0
        self.client = await self._connect(self.open_timeout)
        self.details = self._accept(self.client, flags)

    async def _connect(self, open_timeout: float) -> NBDClient:
        query = self.x_dirty_bitmap or "base:allocation"
        return await connect(self.address, self.export or "", context=query,
                             open_timeout=open_timeout)

    def _accept(self, client: NBDClient, flags: OpenFlags) -> ExportDetails:
        """Check what the server offered and declare it (nbd_handle_updated_info)."""
        details = client.details
        assert details is not None
        # QEMU 7.2 drops its own message here ("requested x-dirty-bitmap ... not
        # found", "NBD export is read-only") and reports only the errno
        problem: BlockError | None = None
        if self.x_dirty_bitmap and details.context_id is None:
            problem = InvalidArgument(_LOST_MESSAGE.format(os.strerror(errno.EINVAL)))
        elif details.flags & TF.READ_ONLY and not flags.read_only:
            problem = ReadOnlyError(_LOST_MESSAGE.format(os.strerror(errno.EACCES)),
                                    errno.EACCES)
        if problem is not None:
            client.abort()
            raise problem
        self.server_caps = server_caps(details)
        return details

    def capabilities(self) -> Cap:
        return self.server_caps

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.close()

    def limits(self) -> Limits:
        d = self.details
        size = d.block_size
        minimum = size.minimum if size else 0
        if not minimum:
            minimum = 1 if d.size % SECTOR or d.context_id is not None else SECTOR
        maximum = wire.MAX_PAYLOAD
        if size and size.maximum:
            maximum = min(maximum, size.maximum)
        return Limits(request_alignment=minimum, max_transfer=maximum,
                      opt_transfer=size.preferred if size else 0,
                      max_pwrite_zeroes=maximum,
                      max_pdiscard=INT_MAX // minimum * minimum)

    # -- requests -------------------------------------------------------------------

    async def _request(self, command: int, offset: int = 0, length: int = 0,
                       flags: int = 0, data: bytes | bytearray | memoryview = b"") -> Any:
        """One request; with ``reconnect-delay`` a request the connection lost is
        sent again once reconnected, until the delay has passed (QEMU's nbd_co_request)."""
        while True:
            client = await self._live_client()
            try:
                return await client.request(command, offset, length, flags, data)
            except ConnectionLost:
                if not self._will_reconnect(client):
                    raise

    def _will_reconnect(self, client: NBDClient) -> bool:
        if not self._lost_at:
            self._lost_at = time.monotonic()
        return (not client.protocol_failed and self.reconnect_delay > 0
                and time.monotonic() - self._lost_at < self.reconnect_delay)

    async def _live_client(self) -> NBDClient:
        client = self.client
        if client is None:
            raise ConnectionLost("NBD node is closed")
        if client.lost is None:
            return client
        if client.protocol_failed:
            raise client.lost
        async with self._reconnecting:
            if self.client is not client and self.client is not None:
                return self.client
            return await self._reconnect(client)

    async def _reconnect(self, old: NBDClient) -> NBDClient:
        """A new connection for a lost one: once, or retried until reconnect-delay."""
        if not self._lost_at:
            self._lost_at = time.monotonic()
        while True:
            try:
                client = await self._connect(0)
                break
            except BlockError:
                if time.monotonic() - self._lost_at + 1 >= self.reconnect_delay:
                    assert old.lost is not None
                    raise old.lost from None
                await asyncio.sleep(1)
        details = client.details
        assert details is not None
        if (details.size, details.flags) != (self.details.size, self.details.flags):
            await client.close()
            raise ConnectionLost("NBD server changed the export while reconnecting")
        self.client, self._lost_at = client, 0.0
        return client

    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        size = self.details.size
        n = min(length, size - offset)
        if n <= 0:
            return bytes(length)
        pending = await self._request(Cmd.READ, offset, n)
        data = pending.data if pending.data is not None else bytearray(n)
        if n < length:                  # an unaligned tail beyond the export's end
            data = bytearray(data) + bytes(length - n)
        return data

    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        await self._request(Cmd.WRITE, offset, len(data), self._fua(flags), data)

    def _fua(self, flags: ReqFlag) -> int:
        return CmdFlag.FUA if flags & ReqFlag.FUA and self.server_caps & Cap.FUA else 0

    async def write_zeroes(self, offset: int, length: int, flags: ReqFlag) -> None:
        if not self.server_caps & Cap.WRITE_ZEROES:
            raise NotSupported("write zeroes not supported")
        cmd_flags = self._fua(flags)
        if not flags & ReqFlag.MAY_UNMAP:
            cmd_flags |= CmdFlag.NO_HOLE
        if flags & ReqFlag.NO_FALLBACK:
            if not self.details.flags & TF.SEND_FAST_ZERO:
                raise NotSupported("write zeroes without fallback not supported")
            cmd_flags |= CmdFlag.FAST_ZERO
        if length:
            await self._request(Cmd.WRITE_ZEROES, offset, length, cmd_flags)

    async def discard(self, offset: int, length: int) -> None:
        if self.server_caps & Cap.DISCARD and length:
            await self._request(Cmd.TRIM, offset, length)

    async def flush_to_os(self) -> None:
        if self.details.flags & TF.SEND_FLUSH:
            await self._request(Cmd.FLUSH)

    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        d = self.details
        if d.context_id is None:
            return BlockStatus(Status.DATA | Status.OFFSET_VALID, length, offset, self.node)
        align = self.node.limits.request_alignment
        n = min(INT_MAX // align * align, length, d.size - offset)
        pending = await self._request(Cmd.BLOCK_STATUS, offset, n, CmdFlag.REQ_ONE)
        extents = pending.extents.get(d.context_id)
        if not extents:
            raise BlockError("Protocol error: server did not reply with any status "
                             "extents", errno.EIO)
        extent_len, state = min(extents[0].length, n), extents[0].flags
        minimum = d.block_size.minimum if d.block_size else 0
        if minimum and extent_len % minimum:
            extent_len = extent_len // minimum * minimum if extent_len > minimum else minimum
        if self.x_dirty_bitmap == "qemu:allocation-depth" and state > 2:
            state = 2           # QEMU's hack: depths past 2 look like 2 (zero, data)
        status = Status.OFFSET_VALID
        if not state & wire.STATE_HOLE:
            status |= Status.DATA
        if state & wire.STATE_ZERO:
            status |= Status.ZERO
        return BlockStatus(status, extent_len, offset, self.node)

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        if size != self.details.size and exact:
            raise NotSupported("Cannot resize NBD nodes")
        if size > self.details.size:
            raise InvalidArgument("Cannot grow NBD nodes")

    async def get_length(self) -> int:
        return self.details.size

    async def get_allocated_file_size(self) -> int:
        return -1
