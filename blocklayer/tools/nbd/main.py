"""``blocklayer-nbd``'s main: qemu-nbd 7.2's modes (serve, ``-L``, ``-d``, ``-c``) in
qemu-nbd's order, with its messages and exit codes."""
from __future__ import annotations

import asyncio
import fcntl
import os
import ssl
import sys
from collections.abc import Callable

from ...core.errors import InvalidArgument
from .args import Invocation, parse
from .listing import run_list
from .serve import Failed, activation_fds, activation_problem, serve

NBD_DISCONNECT = 0xAB08
NBD_CLEAR_SOCK = 0xAB04


def program_name(argv0: str) -> str:
    """argv[0], except under ``python -m`` (where it is the module's file)."""
    return "blocklayer-nbd" if os.path.basename(argv0) in ("__main__.py", "") else argv0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    try:
        inv = parse(program_name(argv[0]), argv[1:])
        code = run(inv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    except KeyboardInterrupt:
        code = 1
    sys.stdout.flush()
    raise SystemExit(code)


def run(inv: Invocation) -> int:
    activated = activation_fds()
    if activated:
        problem = activation_problem(inv, activated)
        if problem:
            inv.fail(problem)
    for spec in inv.trace:
        pattern = spec.split(",")[0].removeprefix("enable=")
        if pattern and "*" not in pattern and "=" not in pattern:
            sys.stderr.write(f"{inv.prog}: warning: trace event '{pattern}' does not exist\n")
    tls = _tls(inv)
    if inv.list_mode:
        return run_list(inv.prog, inv.socket, inv.bind or "0.0.0.0", inv.port or "10809",
                        tls)
    if inv.disconnect:
        return _disconnect(inv)
    if inv.fork:
        return _fork(inv, tls, activated)
    return _serve(inv, tls, activated, lambda: None)


def _tls(inv: Invocation) -> ssl.SSLContext | None:
    if not inv.tls_creds:
        return None
    try:
        ctx = inv.objects.tls_context(inv.tls_creds, server=not inv.list_mode)
        if inv.tls_authz:
            inv.objects.authz_identity(inv.tls_authz)
    except InvalidArgument as exc:
        inv.fail(f"Failed to get TLS creds: {exc.message}")
    return ctx


def _serve(inv: Invocation, tls: ssl.SSLContext | None, activated: int,
           ready: Callable[[], None]) -> int:
    try:
        asyncio.run(serve(inv, tls, activated, ready))
    except Failed as exc:
        sys.stderr.write(f"{inv.prog}: {exc}\n")
        return 1
    return 0


def _disconnect(inv: Invocation) -> int:
    device = inv.filename or ""
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        inv.fail(f"Cannot open {device}: {exc.strerror}")
    for request in (NBD_DISCONNECT, NBD_CLEAR_SOCK):
        try:
            fcntl.ioctl(fd, request)
        except OSError:
            pass                   # qemu-nbd ignores these failures too
    os.close(fd)
    sys.stdout.write(f"{device} disconnected\n")
    return 0


def _fork(inv: Invocation, tls: ssl.SSLContext | None, activated: int) -> int:
    """--fork: the parent exits once the child serves (0) or failed (1)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        with os.fdopen(rfd, "rb") as pipe:
            ok = pipe.read(1) == b"\0"
        return 0 if ok else 1
    os.close(rfd)
    os.setsid()

    def ready() -> None:
        os.write(wfd, b"\0")
        os.close(wfd)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)

    code = _serve(inv, tls, activated, ready)
    os._exit(code)
