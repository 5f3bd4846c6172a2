"""Carrying out the daemon's command-line options, in the order given.  Each one is
validated by the QMP schema (keyval or JSON) and applied as its QMP command would be."""
from __future__ import annotations

import socket
from typing import Any

from blocklayer.daemon.nodes import add_node
from blocklayer.daemon.objects import add_object
from blocklayer.daemon.state import Chardev, Daemon
from blocklayer.qmp import keyval, qjson
from blocklayer.qmp.protocol import CommandError


def _parse(text: str, implied: str | None) -> tuple[dict[str, Any], bool]:
    """JSON if it looks like JSON, else key=value; says which (keyval needs converting)."""
    if text.lstrip().startswith("{"):
        try:
            value = qjson.loads(text)
        except qjson.JSONParseError as exc:
            raise CommandError(exc.desc) from None
        if not isinstance(value, dict):
            raise CommandError("JSON must be an object")
        return value, False
    return keyval.parse(text, implied), True


async def blockdev(daemon: Daemon, text: str) -> None:
    opts, kv = _parse(text, "driver")
    await add_node(daemon, daemon.schema.check_arguments("blockdev-add", opts, keyval=kv))


async def object_(daemon: Daemon, text: str) -> None:
    opts, kv = _parse(text, "qom-type")
    add_object(daemon, daemon.schema.check_arguments("object-add", opts, keyval=kv))


async def chardev(daemon: Daemon, text: str) -> None:
    opts = keyval.parse(text, "backend")
    backend = opts.pop("backend", None)
    if "id" not in opts:
        raise CommandError("Parameter 'id' is missing")
    if backend != "socket":
        raise CommandError(f"chardev backend '{backend}' is not supported by "
                           "blocklayer-storage-daemon")
    if opts["id"] in daemon.chardevs:
        raise CommandError(f"Duplicate ID '{opts['id']}' for chardev")
    path = opts.get("path")
    server = keyval_bool(opts.get("server", "off"), "server")
    if not server:
        target = path or f"{opts.get('host', '')}:{opts.get('port', '')}"
        raise CommandError(_connect_error(path, target))
    port = opts.get("port")
    dev = Chardev(opts["id"], path=path, host=opts.get("host"),
                  port=int(port) if port is not None else None)
    if path is None and port is None:
        raise CommandError("chardev: socket: no host given")
    daemon.chardevs[dev.id] = dev


def keyval_bool(value: str, name: str) -> bool:
    table = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}
    if value not in table:
        raise CommandError(f"Parameter '{name}' expects 'on' or 'off'")
    return table[value]


def _connect_error(path: str | None, target: str) -> str:
    if path is None:
        return f"Failed to connect to '{target}'"
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
    except OSError as exc:
        return f"Failed to connect to '{path}': {exc.strerror}"
    return "client socket chardevs are not supported by blocklayer-storage-daemon"


async def monitor(daemon: Daemon, text: str) -> None:
    opts = keyval.parse(text, "chardev")
    if opts.get("mode", "control") != "control":
        raise CommandError("Only QMP is supported")
    dev = daemon.chardevs.get(opts.get("chardev", ""))
    if dev is None:
        raise CommandError(f"chardev \"{opts.get('chardev', '')}\" not found")
    if dev.monitor is not None:
        raise CommandError(f"Device '{dev.id}' is in use")
    await daemon.add_monitor(dev)


def _nbd_server_type(daemon: Daemon) -> dict[str, Any]:
    """NbdServerOptions (not reachable from any command, so absent from introspection),
    built from the schema's SocketAddress (the type of blockdev-add nbd's ``server``)."""
    schema = daemon.schema
    command = schema.command("blockdev-add")
    assert command is not None
    union = schema.entities[command["arg-type"]]
    variant = next(v["type"] for v in union["variants"] if v["case"] == "nbd")
    sockaddr = next(m["type"] for m in schema.entities[variant]["members"]
                    if m["name"] == "server")
    return {"name": "NbdServerOptions", "meta-type": "object", "members": [
        {"name": "addr", "type": sockaddr},
        {"name": "tls-creds", "default": None, "type": "str"},
        {"name": "tls-authz", "default": None, "type": "str"},
        {"name": "max-connections", "default": None, "type": "int"}]}


async def nbd_server(daemon: Daemon, text: str) -> None:
    opts, kv = _parse(text, None)
    ent = _nbd_server_type(daemon)
    daemon.schema.entities.setdefault(ent["name"], ent)
    args = daemon.schema.check(ent["name"], opts, (), kv)
    addr = dict(args["addr"])
    kind = addr.pop("type")
    args["addr"] = {"type": kind, "data": addr}       # the legacy form nbd-server-start takes
    await daemon.exports.nbd_server_start(daemon, args)


async def export(daemon: Daemon, text: str) -> None:
    opts, kv = _parse(text, "type")
    await daemon.exports.block_export_add(
        daemon, daemon.schema.check_arguments("block-export-add", opts, keyval=kv))


async def metrics(daemon: Daemon, text: str) -> None:
    """--metrics host:port (blocklayer's): Prometheus metrics over HTTP."""
    from blocklayer.daemon.metrics import MetricsServer, parse_address
    host, port = parse_address(text)
    server = MetricsServer(daemon)
    await server.start(host, port)
    daemon.closing.append(server.close)


APPLY = {"metrics": metrics, "blockdev": blockdev, "object": object_, "chardev": chardev, "monitor": monitor,
         "nbd-server": nbd_server, "export": export}
