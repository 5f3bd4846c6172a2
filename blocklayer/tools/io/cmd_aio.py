"""aio_read, aio_write, aio_flush: requests that run concurrently with the commands
that follow and print their report when they complete (or when ``aio_flush``, ``close``
or the end of the session waits for them)."""
from __future__ import annotations

import errno
from typing import Any, Awaitable, Callable

from ...core.driver import Perm, ReqFlag
from .args import (CommandError, OptionSpec, iovec_lengths, num, parse_options, pattern,
                   timed_request, usage)
from .cmd_rw import report_done, report_read
from .helptext import HELP
from .session import Session
from .table import command


AIO_READ_OPTS: OptionSpec = {"C": "machine", "P": ("pat", pattern), "i": "inject",
                             "q": "quiet", "v": "verbose"}
AIO_WRITE_OPTS: OptionSpec = {"C": "machine", "f": ReqFlag.FUA, "i": "inject", "q": "quiet",
                              "P": ("pat", pattern), "u": ReqFlag.MAY_UNMAP, "z": "zeroes"}


def _inject_invalid(session: Session, kind: str) -> int:
    """``-i``: account an invalid request, as qemu-io does, and do nothing else."""
    session.out(f"injecting invalid {kind} request\n")
    session.require_node().stats.invalid(kind)
    return 0


def _request_lengths(session: Session, texts: list[str], kind: str) -> int:
    """The total of a vectored request's lengths; a bad one counts as invalid."""
    try:
        return sum(iovec_lengths(session, texts))
    except CommandError:
        session.require_node().stats.invalid(kind)
        raise


def _submit(session: Session, what: str, request: Awaitable[Any],
            done: Callable[[float, Any], object]) -> None:
    """Run ``request`` in the background; ``done(seconds, result)`` prints its report."""
    async def run() -> None:
        try:
            elapsed, result = await timed_request(session, what, request)
        except CommandError:
            return
        done(elapsed, result)

    session.submit(run())


@command("aio_read", "asynchronously reads a number of bytes",
         args="[-Ciqv] [-P pattern] off len [len..]", argmin=2, argmax=-1,
         help=HELP["aio_read"])
async def aio_read_cmd(session: Session, argv: list[str]) -> int:
    o, operands = parse_options(session, argv, AIO_READ_OPTS, stop="i")
    if o.inject:
        return _inject_invalid(session, "read")
    if len(operands) < 2:
        return usage(session, "aio_read")
    offset = num(session, operands[0])
    count = _request_lengths(session, operands[1:], "read")
    _submit(session, "readv", session.require_node().read(offset, count),
            lambda elapsed, data: report_read(session, o, data, offset, elapsed))
    return 0


@command("aio_write", "asynchronously writes a number of bytes",
         args="[-Cfiquz] [-P pattern] off len [len..]", argmin=2, argmax=-1,
         perm=Perm.WRITE, help=HELP["aio_write"])
async def aio_write_cmd(session: Session, argv: list[str]) -> int:
    o, ops = parse_options(session, argv, AIO_WRITE_OPTS, stop="i")
    if o.inject:
        return _inject_invalid(session, "write")
    if len(ops) < 2:
        return usage(session, "aio_write")
    if o.zeroes and len(ops) != 2:
        session.out("-z supports only a single length parameter\n")
        return -errno.EINVAL
    if o.flags & ReqFlag.MAY_UNMAP and not o.zeroes:
        session.out("-u requires -z to be specified\n")
        return -errno.EINVAL
    offset = num(session, ops[0])
    node = session.require_node()
    if o.zeroes:
        count = num(session, ops[1])
        request = node.write_zeroes(offset, count, o.flags)
    else:
        count = _request_lengths(session, ops[1:], "write")
        pat = 0xcd if o.pat is None else o.pat
        request = node.write(offset, bytes([pat]) * count, o.flags)
    _submit(session, "aio_write", request,
            lambda elapsed, _: report_done(session, o, "wrote", elapsed, offset, count))
    return 0


@command("aio_flush", "completes all outstanding aio requests")
async def aio_flush_cmd(session: Session, argv: list[str]) -> int:
    await session.drain()
    return 0
