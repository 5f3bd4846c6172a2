"""read, readv, write, writev, discard, flush: the synchronous I/O commands."""
from __future__ import annotations

import errno
import time

from ...driver import Perm, ReqFlag
from ...errors import BlockError, NotSupported
from .args import (CommandError, Options, errno_of, iovec_lengths, length, num, pattern,
                   sector_aligned, strerror, usage)
from .helptext import HELP
from .output import REQUEST_MAX_BYTES, dump_buffer, report
from .session import Session
from .table import command

FAILED = (BlockError, OSError, ValueError)


def verify(session: Session, data: bytes | bytearray, value: int, offset: int, start: int = 0,
           count: int | None = None) -> bool:
    """Pattern check of ``data[start:start+count]``; prints qemu-io's line on a mismatch."""
    count = len(data) - start if count is None else count
    if data[start:start + count] != bytes([value]) * count:
        session.out(f"Pattern verification failed at offset {offset + start}, {count} bytes\n")
        return False
    return True


@command("read", "reads a number of bytes at a specified offset", altname="r",
         args="[-abCqv] [-P pattern [-s off] [-l len]] off len", argmin=2, argmax=-1,
         help=HELP["read"])
async def read_cmd(session: Session, argv: list[str]) -> int:
    machine = quiet = verbose = vmstate = False
    pat: int | None = None
    pat_off: int | None = None
    pat_len: int | None = None
    opts = Options(session, argv, "bCl:pP:qs:v")
    for opt, arg in opts:
        if opt == "b":
            vmstate = True
        elif opt == "C":
            machine = True
        elif opt == "l":
            pat_len = num(session, arg or "")
        elif opt == "P":
            pat = pattern(session, arg or "")
        elif opt == "q":
            quiet = True
        elif opt == "s":
            pat_off = num(session, arg or "")
        elif opt == "v":
            verbose = True
    if len(opts.operands) != 2:
        return usage(session, "read")
    offset = num(session, opts.operands[0])
    count = length(session, opts.operands[1])
    if pat is None and (pat_off is not None or pat_len is not None):
        return usage(session, "read")
    start = pat_off or 0
    span = count - start if pat_len is None else pat_len
    if span < 0 or span + start > count:
        session.out("pattern verification range exceeds end of read data\n")
        return -errno.EINVAL
    if vmstate:
        sector_aligned(session, offset, "offset")
        sector_aligned(session, count, "count")
    node = session.node
    assert node is not None
    t0 = time.perf_counter()
    try:
        if vmstate:
            raise NotSupported("vmstate is not supported", errno.ENOTSUP)
        data = await node.read(offset, count)
    except FAILED as exc:
        session.out(f"read failed: {strerror(exc)}\n")
        return -errno_of(exc)
    elapsed = time.perf_counter() - t0
    ret = 0
    if pat is not None and not verify(session, data, pat, offset, start, span):
        ret = -errno.EINVAL
    if quiet:
        return ret
    if verbose:
        session.out(dump_buffer(data, offset))
    session.out(report("read", elapsed, offset, count, count, 1, machine))
    return ret


@command("readv", "reads a number of bytes at a specified offset",
         args="[-Cqv] [-P pattern] off len [len..]", argmin=2, argmax=-1, help=HELP["readv"])
async def readv_cmd(session: Session, argv: list[str]) -> int:
    machine = quiet = verbose = False
    pat: int | None = None
    opts = Options(session, argv, "CP:qv")
    for opt, arg in opts:
        if opt == "C":
            machine = True
        elif opt == "P":
            pat = pattern(session, arg or "")
        elif opt == "q":
            quiet = True
        elif opt == "v":
            verbose = True
    if len(opts.operands) < 2:
        return usage(session, "readv")
    offset = num(session, opts.operands[0])
    count = sum(iovec_lengths(session, opts.operands[1:]))
    node = session.node
    assert node is not None
    t0 = time.perf_counter()
    try:
        data = await node.read(offset, count)
    except FAILED as exc:
        session.out(f"readv failed: {strerror(exc)}\n")
        return -errno_of(exc)
    elapsed = time.perf_counter() - t0
    ret = 0
    if pat is not None and not verify(session, data, pat, offset):
        ret = -errno.EINVAL
    if quiet:
        return ret
    if verbose:
        session.out(dump_buffer(data, offset))
    session.out(report("read", elapsed, offset, count, count, 1, machine))
    return ret


def _fill_from_file(session: Session, path: str, count: int) -> bytes:
    """The ``-s source_file`` buffer: the file's bytes, repeated to ``count``."""
    try:
        with open(path, "rb") as f:
            content = f.read(count)
    except OSError as exc:
        session.raw_err(f"{path}: {strerror(exc)}")
        raise CommandError() from None
    if not content:
        return bytes(count)
    reps = -(-count // len(content))
    return (content * reps)[:count]


@command("write", "writes a number of bytes at a specified offset", altname="w",
         args="[-bcCfnquz] [-P pattern | -s source_file] off len", argmin=2, argmax=-1,
         perm=Perm.WRITE, help=HELP["write"])
async def write_cmd(session: Session, argv: list[str]) -> int:
    machine = quiet = vmstate = compressed = zeroes = False
    flags = ReqFlag.NONE
    pat: int | None = None
    source: str | None = None
    opts = Options(session, argv, "bcCfnpP:qs:uz")
    for opt, arg in opts:
        if opt == "b":
            vmstate = True
        elif opt == "c":
            compressed = True
        elif opt == "C":
            machine = True
        elif opt == "f":
            flags |= ReqFlag.FUA
        elif opt == "n":
            flags |= ReqFlag.NO_FALLBACK
        elif opt == "P":
            pat = pattern(session, arg or "")
        elif opt == "q":
            quiet = True
        elif opt == "s":
            source = arg
        elif opt == "u":
            flags |= ReqFlag.MAY_UNMAP
        elif opt == "z":
            zeroes = True
    if len(opts.operands) != 2:
        return usage(session, "write")
    checks = (
        (vmstate and zeroes, "-b and -z cannot be specified at the same time"),
        (bool(flags & ReqFlag.FUA) and (vmstate or compressed),
         "-f and -b or -c cannot be specified at the same time"),
        (bool(flags & ReqFlag.NO_FALLBACK) and not zeroes, "-n requires -z to be specified"),
        (bool(flags & ReqFlag.MAY_UNMAP) and not zeroes, "-u requires -z to be specified"),
        (zeroes + (pat is not None) + (source is not None) > 1,
         "Only one of -z, -P, and -s can be specified at the same time"),
    )
    for bad, message in checks:
        if bad:
            session.out(message + "\n")
            return -errno.EINVAL
    offset = num(session, opts.operands[0])
    count = num(session, opts.operands[1])
    if count > REQUEST_MAX_BYTES and not flags & ReqFlag.NO_FALLBACK:
        session.out(f"length cannot exceed {REQUEST_MAX_BYTES} without -n, "
                    f"given {opts.operands[1]}\n")
        return -errno.EINVAL
    if vmstate or compressed:
        sector_aligned(session, offset, "offset")
        sector_aligned(session, count, "count")
    data = b""
    if not zeroes:
        data = (_fill_from_file(session, source, count) if source is not None
                else bytes([0xcd if pat is None else pat]) * count)
    node = session.node
    assert node is not None
    t0 = time.perf_counter()
    try:
        if vmstate:
            raise NotSupported("vmstate is not supported", errno.ENOTSUP)
        if zeroes:
            await node.write_zeroes(offset, count, flags)
        elif compressed:
            await node.write(offset, data, ReqFlag.COMPRESSED)
        else:
            await node.write(offset, data, flags)
    except FAILED as exc:
        session.out(f"write failed: {strerror(exc)}\n")
        return -errno_of(exc)
    if not quiet:
        session.out(report("wrote", time.perf_counter() - t0, offset, count, count, 1,
                           machine))
    return 0


@command("writev", "writes a number of bytes at a specified offset",
         args="[-Cfq] [-P pattern] off len [len..]", argmin=2, argmax=-1, perm=Perm.WRITE,
         help=HELP["writev"])
async def writev_cmd(session: Session, argv: list[str]) -> int:
    machine = quiet = False
    flags = ReqFlag.NONE
    pat = 0xcd
    opts = Options(session, argv, "CfqP:")
    for opt, arg in opts:
        if opt == "C":
            machine = True
        elif opt == "f":
            flags |= ReqFlag.FUA
        elif opt == "q":
            quiet = True
        elif opt == "P":
            pat = pattern(session, arg or "")
    if len(opts.operands) < 2:
        return usage(session, "writev")
    offset = num(session, opts.operands[0])
    count = sum(iovec_lengths(session, opts.operands[1:]))
    node = session.node
    assert node is not None
    t0 = time.perf_counter()
    try:
        await node.write(offset, bytes([pat]) * count, flags)
    except FAILED as exc:
        session.out(f"writev failed: {strerror(exc)}\n")
        return -errno_of(exc)
    if not quiet:
        session.out(report("wrote", time.perf_counter() - t0, offset, count, count, 1,
                           machine))
    return 0


@command("discard", "discards a number of bytes at a specified offset", altname="d",
         args="[-Cq] off len", argmin=2, argmax=-1, perm=Perm.WRITE, help=HELP["discard"])
async def discard_cmd(session: Session, argv: list[str]) -> int:
    machine = quiet = False
    opts = Options(session, argv, "Cq")
    for opt, _arg in opts:
        if opt == "C":
            machine = True
        elif opt == "q":
            quiet = True
    if len(opts.operands) != 2:
        return usage(session, "discard")
    offset = num(session, opts.operands[0])
    count = length(session, opts.operands[1])
    node = session.node
    assert node is not None
    t0 = time.perf_counter()
    try:
        await node.discard(offset, count)
    except FAILED as exc:
        session.out(f"discard failed: {strerror(exc)}\n")
        return -errno_of(exc)
    if not quiet:
        session.out(report("discard", time.perf_counter() - t0, offset, count, count, 1,
                           machine))
    return 0


@command("flush", "flush all in-core file state to disk", altname="f")
async def flush_cmd(session: Session, argv: list[str]) -> int:
    node = session.node
    assert node is not None
    try:
        await node.flush()
    except FAILED as exc:
        return -errno_of(exc)
    return 0
