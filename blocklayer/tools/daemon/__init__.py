"""blocklayer-storage-daemon: qemu-storage-daemon's command line and QMP monitors over
the block graph (entry point ``main``; ``python -m blocklayer.tools.daemon``)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from . import args as cli


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    invoked = argv[0] if argv else ""
    prog = os.path.basename(invoked)
    if prog in ("__main__.py", "-m", ""):
        invoked = prog = "blocklayer-storage-daemon"
    try:
        options = cli.parse(argv[1:])
    except cli.UsageError as exc:
        _fail(invoked, str(exc))        # getopt names the program as invoked
    for opt in options:
        if opt.name == "help":
            sys.stdout.write(cli.HELP.format(prog=prog))
            raise SystemExit(0)
        if opt.name == "version":
            from blocklayer import __version__
            sys.stdout.write(f"{prog} version 7.2.22 (blocklayer {__version__})\n"
                             "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project "
                             "developers\n")
            raise SystemExit(0)
    daemonize = any(o.name == "daemonize" for o in options)
    ready = _fork_daemon() if daemonize else None
    raise SystemExit(asyncio.run(_run(prog, options, ready)))


def _fail(prog: str, message: str) -> None:
    sys.stderr.write(f"{prog}: {message}\n")
    raise SystemExit(1)


def _fork_daemon() -> int:
    """Fork; the parent waits for the child's startup and exits with its status.
    Returns the pipe end on which the child reports that startup is complete."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        status = os.read(rfd, 1)
        os._exit(0 if status == b"\0" else 1)
    os.close(rfd)
    os.setsid()
    return wfd


def _detach(ready: int) -> None:
    os.write(ready, b"\0")
    os.close(ready)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


async def _run(prog: str, options: list[cli.Option], ready: int | None) -> int:
    from blocklayer.core.errors import BlockError
    from blocklayer.daemon.state import Daemon
    from blocklayer.qmp.protocol import CommandError

    from .options import APPLY
    daemon = Daemon()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, daemon.quit_requested.set)
    pidfile = None
    try:
        for opt in options:
            try:
                if opt.name in APPLY:
                    await APPLY[opt.name](daemon, opt.arg or "")
                elif opt.name == "pidfile":
                    pidfile = _write_pidfile(opt.arg or "")
            except (CommandError, BlockError, OSError) as exc:
                text = exc.desc if isinstance(exc, CommandError) else \
                    exc.message if isinstance(exc, BlockError) else str(exc)
                sys.stderr.write(f"{prog}: {opt.spelled} {opt.arg}: {text}\n")
                return 1
        if ready is not None:
            _detach(ready)
        await daemon.quit_requested.wait()
        return 0
    finally:
        await daemon.shutdown()
        if pidfile is not None:
            with contextlib.suppress(OSError):
                os.unlink(pidfile)


def _write_pidfile(path: str) -> str:
    try:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise OSError(f"Cannot open pid file: {exc.strerror}") from None
    return path
