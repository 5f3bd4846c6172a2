"""``blocklayer-io``: a drop-in for qemu-io 7.2.

``blocklayer-io [OPTIONS]... [-c STRING]... [file]`` opens the image, runs each ``-c``
command in order (or reads commands from stdin after a ``qemu-io> `` prompt), waits for
aio requests, closes the image and exits with 1 if any command failed.
"""
from __future__ import annotations

import asyncio
import io
import sys
from dataclasses import dataclass, field

from ... import __version__
from ...core.errors import BlockError, InvalidArgument, describe
from ...core.options import split_keyval
from . import cmd_aio, cmd_control, cmd_image, cmd_rw  # noqa: F401  (register commands)
from .args import CommandError
from .getopt import Getopt, GetoptError
from .session import DEFAULT_NAME, OpenRequest, Session
from .table import QUIT, run

USAGE = """\
Usage: {prog} [OPTIONS]... [-c STRING]... [file]
QEMU Disk exerciser

  --object OBJECTDEF   define an object such as 'secret' for
                       passwords and/or encryption keys
  --image-opts         treat file as option string
  -c, --cmd STRING     execute command with its arguments
                       from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      export read-only
  -s, --snapshot       use snapshot file
  -n, --nocache        disable host cache, short for -t none
  -C, --copy-on-read   enable copy-on-read
  -m, --misalign       misalign allocations for O_DIRECT
  -k, --native-aio     use kernel AIO implementation
                       (Linux only, prefer use of -i)
  -i, --aio=MODE       use AIO mode (threads, native or io_uring)
  -t, --cache=MODE     use the given cache mode for the image
  -d, --discard=MODE   use the given discard mode for the image
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                       specify tracing options
                       see qemu-img(1) man page for full description
  -U, --force-share    force shared permissions
  -h, --help           display this help and exit
  -V, --version        output version information and exit

See '{prog} -c help' for information on available commands.

See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
More information on the QEMU project at <https://qemu.org>.
"""

SHORT = "hVc:d:f:rsnCmki:t:T:U"
LONG = {"help": (False, "h"), "format": (True, "f"), "cmd": (True, "c"),
        "copy-on-read": (False, "C"), "read-only": (False, "r"), "snapshot": (False, "s"),
        "nocache": (False, "n"), "misalign": (False, "m"), "native-aio": (False, "k"),
        "discard": (True, "d"), "cache": (True, "t"), "trace": (True, "T"),
        "object": (True, "O"), "aio": (True, "i"), "image-opts": (False, "I"),
        "force-share": (False, "U"), "version": (False, "V")}
PROMPT = "qemu-io> "


class Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Invocation:
    commands: list[str] = field(default_factory=list)
    fmt: str | None = None
    image_opts: bool = False
    request: OpenRequest = field(default_factory=lambda: OpenRequest(None))
    misalign: bool = False
    file: str | None = None


def parse_args(session: Session, argv: list[str]) -> Invocation:
    """The command line, or :class:`Exit` after printing what qemu-io prints."""
    inv = Invocation()
    req = inv.request
    getopt = Getopt(session.prog, argv, SHORT, LONG)
    try:
        for opt, arg in getopt:
            arg = arg or ""
            if opt == "h":
                session.out(USAGE.format(prog=session.prog))
                raise Exit(0)
            if opt == "V":
                session.out(f"{session.prog} version {__version__}\n")
                raise Exit(0)
            if req.apply_option(opt, arg):
                continue
            if opt == "c":
                inv.commands.append(arg)
            elif opt == "f":
                inv.fmt = arg
            elif opt == "m":
                inv.misalign = True
            elif opt == "T":
                pass                      # tracing: accepted, there are no trace events
            elif opt == "O":
                session.warn(f"--object is not supported, ignoring '{arg}'")
            elif opt == "I":
                inv.image_opts = True
    except GetoptError as exc:
        session.raw_err(str(exc))
        session.out(USAGE.format(prog=session.prog))
        raise Exit(1) from None
    except InvalidArgument as exc:
        session.error(exc.message)
        raise Exit(1) from None
    files = getopt.operands
    if len(files) > 1:
        session.out(USAGE.format(prog=session.prog))
        raise Exit(1)
    if inv.fmt and inv.image_opts:
        session.error("--image-opts and -f are mutually exclusive")
        raise Exit(1)
    inv.file = files[0] if files else None
    return inv


async def _open(session: Session, inv: Invocation) -> bool:
    req = inv.request
    if inv.image_opts:
        try:
            req.options = split_keyval(inv.file or "")
        except InvalidArgument as exc:
            session.error(exc.message)
            return False
        req.name = None
    else:
        req.name = inv.file
        if inv.fmt:
            req.options = {"driver": inv.fmt}
    return await session.open(req)


async def _run_commands(session: Session, inv: Invocation) -> int:
    """Run ``-c`` commands or the interactive loop; 1 if any command failed."""
    failed = False
    if inv.commands:
        for line in inv.commands:
            ret = await _one(session, line)
            if ret == QUIT:
                break
            failed |= ret < 0
    else:
        loop = asyncio.get_running_loop()
        while True:
            session.out(PROMPT)
            session.stdout.flush()
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            ret = await _one(session, line)
            if ret == QUIT:
                break
            failed |= ret < 0
    return 1 if failed else 0


async def _one(session: Session, line: str) -> int:
    try:
        return await run(session, line)
    except CommandError as exc:
        return exc.code
    except (BlockError, OSError, ValueError, LookupError) as exc:   # unexpected failure
        session.error(f"{line.split()[0] if line.split() else line}: {describe(exc)}")
        return -1


async def session_main(session: Session, inv: Invocation) -> int:
    session.misalign = inv.misalign
    if inv.file is not None and not await _open(session, inv):
        return 1
    try:
        code = await _run_commands(session, inv)
    finally:
        await session.close()
    return code


def _c_stdout() -> io.TextIOBase:
    """stdout buffered as C buffers it (by lines on a terminal, by blocks otherwise,
    whatever PYTHONUNBUFFERED says), so stdout and stderr interleave as qemu-io's do."""
    try:
        if sys.stdout.isatty():
            return sys.stdout                # type: ignore[return-value]
        raw = open(sys.stdout.fileno(), "wb", buffering=4096, closefd=False)
    except (AttributeError, OSError, ValueError):
        return sys.stdout                    # type: ignore[return-value]
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="\n")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``blocklayer-io`` console script."""
    from blocklayer.tools.common import set_program_name

    from ...core import safety
    from ...core.deep import TOO_DEEP, allow_deep_chains
    argv = safety.pop_option(sys.argv[1:] if argv is None else argv)
    prog = set_program_name(sys.argv[0] if sys.argv else None, DEFAULT_NAME)
    session = Session(prog, stdout=_c_stdout())  # type: ignore[arg-type]
    allow_deep_chains()
    try:
        inv = parse_args(session, argv)
        code = asyncio.run(session_main(session, inv))
    except Exit as exc:
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    except RecursionError:
        session.error(TOO_DEEP)
        code = 1
    except Exception as exc:          # never a traceback: one line and a failure
        session.error(f"internal error: {type(exc).__name__}: {exc}")
        code = 1
    try:
        session.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass
    raise SystemExit(code)


if __name__ == "__main__":
    main()
