"""open, close, reopen, help, quit, sleep and the debugging commands (abort, sigraise,
break, remove_break, resume, wait_break)."""
from __future__ import annotations

import asyncio
import errno
import os
import re
import signal

from ...core.driver import Perm
from ...core.errors import InvalidArgument, describe
from ...core.options import split_keyval
from ...core.reopen import reopen
from .args import CommandError, Options, num, usage
from .cmd_rw import FAILED
from .helptext import HELP
from .session import OpenRequest, Session, parse_cache
from .table import COMMANDS, QUIT, command, find


def parse_keyval(session: Session, text: str, into: dict[str, str]) -> None:
    """One ``-o key=value,...`` argument merged into ``into``."""
    try:
        into.update(split_keyval(text))
    except InvalidArgument as exc:
        session.error(exc.message)
        raise CommandError() from None


@command("open", "open the file specified by path", altname="o",
         args="[-rsCnkU] [-t cache] [-d discard] [-o options] [path]", argmin=1, argmax=-1,
         nofile_ok=True, help=HELP["open"])
async def open_cmd(session: Session, argv: list[str]) -> int:
    req = OpenRequest(None)
    opts = Options(session, argv, "snCro:ki:t:d:U")
    try:
        for opt, arg in opts:
            if opt == "o":
                parse_keyval(session, arg or "", req.options)
            else:
                req.apply_option(opt, arg or "")
    except InvalidArgument as exc:
        session.error(exc.message)
        return -errno.EINVAL
    if len(opts.operands) > 1:
        return usage(session, "open")
    req.name = opts.operands[0] if opts.operands else None
    return 0 if await session.open(req) else -errno.EINVAL


@command("close", "close the current open file", altname="c")
async def close_cmd(session: Session, argv: list[str]) -> int:
    await session.close()
    return 0


@command("reopen", "reopens an image with new options",
         args="[(-r|-w)] [-c cache] [-o options]", argmin=0, argmax=-1, help=HELP["reopen"])
async def reopen_cmd(session: Session, argv: list[str]) -> int:
    node = session.node
    assert node is not None
    read_only: bool | None = None
    cache = None
    options: dict[str, str] = {}
    opts = Options(session, argv, "c:o:rw")
    for opt, arg in opts:
        if opt == "c":
            try:
                cache = parse_cache(arg or "")
            except InvalidArgument as exc:
                session.error(exc.message)
                return -errno.EINVAL
        elif opt == "o":
            parse_keyval(session, arg or "", options)
        elif opt in "rw":
            if read_only is not None:
                session.error("Only one -r/-w option may be given")
                return -errno.EINVAL
            read_only = opt == "r"
    if opts.operands:
        return usage(session, "reopen")
    for key, value in options.items():
        if str(node.options.get(key, "")) != value:
            session.error(f"Cannot change the option '{key}'")
            return -errno.EINVAL
    if read_only is False and node.flags.force_share:
        session.error("Cannot reopen read-write: force-share=on is set")
        return -errno.EINVAL
    try:
        await session.drain()
        if read_only is not None and read_only != node.read_only:
            if read_only:
                session.set_user_perm(Perm.CONSISTENT_READ)
            await reopen(node, read_only=read_only)
            if not read_only:
                session.set_user_perm(Perm.CONSISTENT_READ | Perm.WRITE)
        if cache is not None:
            for n in (node, *node.descendants()):
                n.flags = n.flags.with_(cache=cache)
    except FAILED as exc:
        session.error(describe(exc))
        return -errno.EINVAL
    return 0


@command("help", "help for one or all commands", altname="?", args="[command]", argmin=0,
         argmax=1, is_global=True)
async def help_cmd(session: Session, argv: list[str]) -> int:
    if len(argv) == 1:
        for name in sorted(COMMANDS):
            session.out(COMMANDS[name].usage_line())
        session.out("\nUse 'help commandname' for extended help.\n")
        return 0
    cmd = find(argv[1])
    if cmd is None:
        session.out(f"command {argv[1]} not found\n")
        return -errno.EINVAL
    session.out(cmd.usage_line(argv[1]))
    if cmd.help:
        session.out(cmd.help)
    return 0


@command("quit", "exit the program", altname="q", argmin=0, argmax=-1, is_global=True)
async def quit_cmd(session: Session, argv: list[str]) -> int:
    return QUIT


def _strtol(text: str) -> int | None:
    """C strtol with base 0, whole string; None if it is not a number."""
    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if m is None:
        return None
    digits = m[2]
    base = 16 if digits[:2].lower() == "0x" else 8 if digits.startswith("0") else 10
    value = int(digits, base)
    return -value if m[1] == "-" else value


@command("sleep", "waits for the given value in milliseconds", argmin=1, argmax=1,
         nofile_ok=True)
async def sleep_cmd(session: Session, argv: list[str]) -> int:
    ms = _strtol(argv[1])
    if ms is None or ms < 0:
        session.out(f"{argv[1]} is not a valid number\n")
        return -errno.EINVAL
    await asyncio.sleep(ms / 1000)
    return 0


@command("abort", "simulate a program crash using abort(3)", nofile_ok=True)
async def abort_cmd(session: Session, argv: list[str]) -> int:
    session.stdout.flush()
    session.stderr.flush()
    os.abort()


@command("sigraise", "raises a signal", args="signal", argmin=1, argmax=1, nofile_ok=True,
         help=HELP["sigraise"])
async def sigraise_cmd(session: Session, argv: list[str]) -> int:
    sig = num(session, argv[1])
    if sig > signal.NSIG:
        session.out(f"signal argument '{argv[1]}' is too large to be a valid signal\n")
        return -errno.EINVAL
    session.stdout.flush()
    session.stderr.flush()
    if sig == 0:
        return 0
    try:
        signal.signal(sig, signal.SIG_DFL)      # act as C's raise(): no Python handler
    except (OSError, ValueError):
        pass
    signal.raise_signal(sig)
    return 0


# blkdebug breakpoints: our blkdebug has no breakpoints (only its error rules), so these
# fail as QEMU's do on an image without blkdebug.

@command("break", "sets a breakpoint on event and tags the stopped request as tag",
         args="event tag", argmin=2, argmax=2)
async def break_cmd(session: Session, argv: list[str]) -> int:
    session.out(f"Could not set breakpoint: {os.strerror(errno.ENOTSUP)}\n")
    return -errno.ENOTSUP


@command("remove_break", "remove a breakpoint by tag", args="tag", argmin=1, argmax=1)
async def remove_break_cmd(session: Session, argv: list[str]) -> int:
    session.out(f"Could not remove breakpoint {argv[1]}: {os.strerror(errno.ENOTSUP)}\n")
    return -errno.ENOTSUP


@command("resume", "resumes the request tagged as tag", args="tag", argmin=1, argmax=1)
async def resume_cmd(session: Session, argv: list[str]) -> int:
    session.out(f"Could not resume request: {os.strerror(errno.ENOTSUP)}\n")
    return -errno.ENOTSUP


@command("wait_break", "waits for the suspension of a request", args="tag", argmin=1,
         argmax=1)
async def wait_break_cmd(session: Session, argv: list[str]) -> int:
    # qemu-io would wait forever here; we say why nothing can ever stop.
    session.out(f"Could not wait for breakpoint {argv[1]}: {os.strerror(errno.ENOTSUP)}\n")
    return -errno.ENOTSUP
