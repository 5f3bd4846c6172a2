"""Serving an image as qemu-nbd does: listen first, then open the image, export it,
write the pid file, tell a ``--fork`` parent, and run until the last client leaves
(unless ``-t``) or a signal arrives."""
from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...core import dirty
from ...core.errors import BlockError, InvalidArgument, describe
from ...core.node import BlockGraph
from ...core.open import open_image, open_node
from ...core.options import OpenFlags, split_keyval
from ...nbd.export import Export
from ...nbd.server import NBDServer
from .args import Invocation

if TYPE_CHECKING:
    from ...core.node import BlockNode

FIRST_ACTIVATION_FD = 3


class Failed(Exception):
    """qemu-nbd's message; the program exits 1."""


def activation_fds() -> int:
    """How many sockets systemd passed us (LISTEN_PID / LISTEN_FDS), as qemu-nbd."""
    if os.environ.get("LISTEN_PID", "") != str(os.getpid()):
        return 0
    try:
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return 0
    for fd in range(FIRST_ACTIVATION_FD, FIRST_ACTIVATION_FD + count):
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    return count


def activation_problem(inv: Invocation, count: int) -> str | None:
    checks = [(inv.device, "NBD device can't be set when using socket activation"),
              (inv.socket, "Unix socket can't be set when using socket activation"),
              (inv.bind, "The interface can't be set when using socket activation"),
              (inv.port, "TCP port number can't be set when using socket activation"),
              (inv.selinux_label, "SELinux label can't be set when using socket activation"),
              (inv.list_mode, "List mode is incompatible with socket activation")]
    for value, message in checks:
        if value:
            return message
    if count > 1:
        return "qemu-nbd does not support socket activation with LISTEN_FDS > 1"
    return None


def listen_sockets(inv: Invocation, activated: int) -> list[socket.socket]:
    """The listening sockets, made before the image is opened (as qemu-nbd)."""
    if activated:
        return [socket.socket(fileno=FIRST_ACTIVATION_FD)]
    backlog = socket.SOMAXCONN if inv.persistent or inv.shared == 0 else \
        min(inv.shared, socket.SOMAXCONN)
    if inv.socket is not None:
        if inv.selinux_label is not None:
            # No libselinux here: setting a context fails as it does on a host
            # without SELinux policy.
            raise Failed("Cannot set SELinux socket create context to "
                         f"{inv.selinux_label}: {os.strerror(errno.EINVAL)}")
        return [_unix_socket(inv.socket, backlog)]
    return _tcp_sockets(inv.bind or "0.0.0.0", inv.port or "10809", backlog)


def _unix_socket(path: str, backlog: int) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise Failed(f"Failed to unlink socket {path}: {exc.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise Failed(f"Failed to bind socket to {path}: {exc.strerror}") from None
    return sock


def _tcp_sockets(host: str, port: str, backlog: int) -> list[socket.socket]:
    try:
        addrs = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Failed(f"address resolution failed for {host}:{port}: {exc.strerror}") from None
    socks, last = [], None
    for family, kind, proto, _name, addr in addrs:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            socks.append(sock)
        except OSError as exc:
            sock.close()
            last = exc
    if not socks:
        reason = last.strerror if last else "no address"
        raise Failed(f"Failed to find an available port: {reason}")
    return socks


async def open_export(inv: Invocation, graph: BlockGraph) -> BlockNode:
    """The node to export: the image, a raw layer at ``-o``, a snapshot at ``-l``."""
    name = inv.filename or ""
    options: dict[str, Any] = {}
    filename: str | None = name
    if inv.image_opts:
        if inv.fmt:
            raise Failed("--image-opts and -f are mutually exclusive")
        try:
            options, filename = split_keyval(name), None
        except InvalidArgument as exc:
            raise Failed(exc.message) from None
    flags = OpenFlags(read_only=inv.read_only, cache=inv.cache,
                      discard_unmap=inv.discard_unmap, detect_zeroes=inv.detect_zeroes)
    try:
        if inv.aio == "native" and not inv.cache.direct:
            raise InvalidArgument("aio=native was specified, but it requires "
                                  "cache.direct=on, which was not specified.")
        node = await open_image(filename, options, fmt=inv.fmt, flags=flags, graph=graph,
                                snapshot=inv.snapshot, owner="qemu-nbd")
    except (BlockError, OSError, ValueError) as exc:
        raise Failed(f"Failed to blk_new_open '{name}': {describe(exc)}") from None
    try:
        if inv.offset:
            node = await _with_offset(node, inv.offset, flags, graph)
        if inv.load_snapshot is not None:
            await _load_snapshot(node, inv.load_snapshot)
    except BaseException:
        await node.close()
        raise
    return node


async def _with_offset(node: BlockNode, offset: int, flags: OpenFlags,
                       graph: BlockGraph) -> BlockNode:
    if offset > node.total_bytes:
        raise Failed(f"Offset ({offset}) cannot be greater than size of the containing "
                     f"file ({node.total_bytes})")
    try:
        top = await open_node(graph, None, {"driver": "raw", "offset": offset,
                                            "file": node.name}, flags=flags)
    except BlockError as exc:
        raise Failed(exc.message) from None
    await node.unref()                 # the raw layer holds it now
    return top


async def _load_snapshot(node: BlockNode, spec: str) -> None:
    sid: str | None
    name: str | None
    if spec.startswith("snapshot."):
        keys = split_keyval(spec)
        sid, name = keys.get("snapshot.id"), keys.get("snapshot.name")
        attempts = [(sid, name)]
    else:
        attempts = [(spec, None), (None, spec)]
    error: BlockError | None = None
    for sid, name in attempts:
        try:
            await node.driver.snapshot_load_tmp(sid, name)
            return
        except BlockError as exc:
            error = error or exc
    assert error is not None
    raise Failed(f"Failed to load snapshot: {error.message}")


def write_pid_file(path: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise Failed(f"Could not create '{path}': {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")


async def serve(inv: Invocation, tls: ssl.SSLContext | None, activated: int,
                ready: Callable[[], None]) -> None:
    """Listen, open, export, and serve until done; raises :class:`Failed`."""
    socks = listen_sockets(inv, activated)
    graph = BlockGraph()
    graph.event_handlers.append(_print_warning)
    node = await open_export(inv, graph)
    done = asyncio.Event()
    try:
        if inv.device is not None:
            _kernel_device(inv.device)
        readonly = inv.read_only or node.read_only
        try:
            bitmaps = dirty.export_bitmaps(node, inv.bitmaps, readonly)
        except BlockError as exc:
            raise Failed(exc.message) from exc
        export = Export(inv.export_name or "", node, inv.description or "",
                        readonly=readonly, multi_conn=inv.shared != 1,
                        allocation_depth=inv.allocation_depth,
                        bitmaps=tuple(bitmaps), dirty_bitmaps=bitmaps)

        def clients_changed(count: int) -> None:
            if count == 0 and not inv.persistent and server.served:
                done.set()

        authz = inv.objects.authz_identity(inv.tls_authz) if inv.tls_authz else None
        server = NBDServer({export.name: export}, shared=inv.shared, tls=tls,
                           tls_authz=authz, on_client_change=clients_changed)
        for sock in socks:
            await server.listen_socket(sock)
        if inv.pid_file:
            write_pid_file(inv.pid_file)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, done.set)
        ready()
        await done.wait()
        await server.close()
    finally:
        with contextlib.suppress(BlockError, OSError):
            await node.close()


def _kernel_device(device: str) -> None:
    """-c: this host's kernel NBD client is not driven (there is no /dev/nbd* here)."""
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        raise Failed(f"Failed to open {device}: {exc.strerror}") from None
    os.close(fd)
    raise Failed(f"Failed to set NBD socket: {os.strerror(errno.ENOTSUP)} "
                 "(kernel NBD devices are not supported)")


def _print_warning(event: str, data: dict[str, Any]) -> None:
    if event == "warning":
        sys.stderr.write(f"{data.get('message', '')}\n")
        sys.stderr.flush()
