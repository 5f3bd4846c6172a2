"""aio_read, aio_write, aio_flush: requests that run concurrently with the commands
that follow and print their report when they complete (or when ``aio_flush``, ``close``
or the end of the session waits for them)."""
from __future__ import annotations

import errno
import time

from ...driver import Perm, ReqFlag
from .args import CommandError, Options, iovec_lengths, num, pattern, strerror, usage
from .cmd_rw import FAILED, verify
from .helptext import HELP
from .output import dump_buffer, report
from .session import Session
from .table import command


@command("aio_read", "asynchronously reads a number of bytes",
         args="[-Ciqv] [-P pattern] off len [len..]", argmin=2, argmax=-1,
         help=HELP["aio_read"])
async def aio_read_cmd(session: Session, argv: list[str]) -> int:
    machine = quiet = verbose = False
    pat: int | None = None
    node = session.node
    assert node is not None
    opts = Options(session, argv, "CP:iqv")
    for opt, arg in opts:
        if opt == "C":
            machine = True
        elif opt == "P":
            pat = pattern(session, arg or "")
        elif opt == "i":
            session.out("injecting invalid read request\n")
            node.stats.invalid("read")
            return 0
        elif opt == "q":
            quiet = True
        elif opt == "v":
            verbose = True
    if len(opts.operands) < 2:
        return usage(session, "aio_read")
    offset = num(session, opts.operands[0])
    try:
        count = sum(iovec_lengths(session, opts.operands[1:]))
    except CommandError:
        node.stats.invalid("read")
        raise

    async def run() -> None:
        t0 = time.perf_counter()
        try:
            data = await node.read(offset, count)
        except FAILED as exc:
            session.out(f"readv failed: {strerror(exc)}\n")
            return
        elapsed = time.perf_counter() - t0
        if pat is not None:
            verify(session, data, pat, offset)
        if quiet:
            return
        if verbose:
            session.out(dump_buffer(data, offset))
        session.out(report("read", elapsed, offset, count, count, 1, machine))

    session.submit(run())
    return 0


@command("aio_write", "asynchronously writes a number of bytes",
         args="[-Cfiquz] [-P pattern] off len [len..]", argmin=2, argmax=-1,
         perm=Perm.WRITE, help=HELP["aio_write"])
async def aio_write_cmd(session: Session, argv: list[str]) -> int:
    machine = quiet = zeroes = False
    flags = ReqFlag.NONE
    pat = 0xcd
    node = session.node
    assert node is not None
    opts = Options(session, argv, "CfiqP:uz")
    for opt, arg in opts:
        if opt == "C":
            machine = True
        elif opt == "f":
            flags |= ReqFlag.FUA
        elif opt == "q":
            quiet = True
        elif opt == "u":
            flags |= ReqFlag.MAY_UNMAP
        elif opt == "P":
            pat = pattern(session, arg or "")
        elif opt == "i":
            session.out("injecting invalid write request\n")
            node.stats.invalid("write")
            return 0
        elif opt == "z":
            zeroes = True
    ops = opts.operands
    if len(ops) < 2:
        return usage(session, "aio_write")
    if zeroes and len(ops) != 2:
        session.out("-z supports only a single length parameter\n")
        return -errno.EINVAL
    if flags & ReqFlag.MAY_UNMAP and not zeroes:
        session.out("-u requires -z to be specified\n")
        return -errno.EINVAL
    offset = num(session, ops[0])
    if zeroes:
        count = num(session, ops[1])
    else:
        try:
            count = sum(iovec_lengths(session, ops[1:]))
        except CommandError:
            node.stats.invalid("write")
            raise

    async def run() -> None:
        t0 = time.perf_counter()
        try:
            if zeroes:
                await node.write_zeroes(offset, count, flags)
            else:
                await node.write(offset, bytes([pat]) * count, flags)
        except FAILED as exc:
            session.out(f"aio_write failed: {strerror(exc)}\n")
            return
        if not quiet:
            session.out(report("wrote", time.perf_counter() - t0, offset, count, count, 1,
                               machine))

    session.submit(run())
    return 0


@command("aio_flush", "completes all outstanding aio requests")
async def aio_flush_cmd(session: Session, argv: list[str]) -> int:
    await session.drain()
    return 0
