"""read, readv, write, writev, discard, flush: the synchronous I/O commands."""
from __future__ import annotations

import errno
from types import SimpleNamespace
from typing import Awaitable

from ...core.driver import Perm, ReqFlag
from ...core.errors import BlockError, NotSupported
from .args import (CommandError, OptionSpec, errno_of, iovec_lengths, length, num,
                   parse_options, pattern, sector_aligned, strerror, timed_request, usage)
from .helptext import HELP
from .output import REQUEST_MAX_BYTES, dump_buffer, report
from .session import Session
from .table import command

FAILED = (BlockError, OSError, ValueError)


def _text(session: Session, text: str) -> str:
    return text


def verify(session: Session, data: bytes | bytearray, value: int, offset: int, start: int = 0,
           count: int | None = None) -> bool:
    """Pattern check of ``data[start:start+count]``; prints qemu-io's line on a mismatch."""
    count = len(data) - start if count is None else count
    if data[start:start + count] != bytes([value]) * count:
        session.out(f"Pattern verification failed at offset {offset + start}, {count} bytes\n")
        return False
    return True


async def _vmstate_unsupported() -> None:
    raise NotSupported("vmstate is not supported", errno.ENOTSUP)


def report_read(session: Session, opts: SimpleNamespace, data: bytes | bytearray, offset: int,
                elapsed: float, start: int = 0, span: int | None = None) -> int:
    """What read, readv and aio_read print after the data arrived: the pattern check
    (``-P``), the hex dump (``-v``) and the timing line, unless ``-q``."""
    ret = 0
    if opts.pat is not None and not verify(session, data, opts.pat, offset, start, span):
        ret = -errno.EINVAL
    if opts.quiet:
        return ret
    if opts.verbose:
        session.out(dump_buffer(data, offset))
    session.out(report("read", elapsed, offset, len(data), len(data), 1, opts.machine))
    return ret


def report_done(session: Session, opts: SimpleNamespace, verb: str, elapsed: float,
                offset: int, count: int) -> None:
    if not opts.quiet:
        session.out(report(verb, elapsed, offset, count, count, 1, opts.machine))


READ_OPTS: OptionSpec = {"b": "vmstate", "C": "machine", "l": ("pat_len", num), "p": None,
                         "P": ("pat", pattern), "q": "quiet", "s": ("pat_off", num),
                         "v": "verbose"}
READV_OPTS: OptionSpec = {"C": "machine", "P": ("pat", pattern), "q": "quiet", "v": "verbose"}
WRITE_OPTS: OptionSpec = {"b": "vmstate", "c": "compressed", "C": "machine",
                          "f": ReqFlag.FUA, "n": ReqFlag.NO_FALLBACK, "p": None,
                          "P": ("pat", pattern), "q": "quiet", "s": ("source", _text),
                          "u": ReqFlag.MAY_UNMAP, "z": "zeroes"}
WRITEV_OPTS: OptionSpec = {"C": "machine", "f": ReqFlag.FUA, "q": "quiet",
                           "P": ("pat", pattern)}
DISCARD_OPTS: OptionSpec = {"C": "machine", "q": "quiet"}


@command("read", "reads a number of bytes at a specified offset", altname="r",
         args="[-abCqv] [-P pattern [-s off] [-l len]] off len", argmin=2, argmax=-1,
         help=HELP["read"])
async def read_cmd(session: Session, argv: list[str]) -> int:
    o, operands = parse_options(session, argv, READ_OPTS)
    if len(operands) != 2:
        return usage(session, "read")
    offset = num(session, operands[0])
    count = length(session, operands[1])
    if o.pat is None and (o.pat_off is not None or o.pat_len is not None):
        return usage(session, "read")
    start = o.pat_off or 0
    span = count - start if o.pat_len is None else o.pat_len
    if span < 0 or span + start > count:
        session.out("pattern verification range exceeds end of read data\n")
        return -errno.EINVAL
    if o.vmstate:
        sector_aligned(session, offset, "offset")
        sector_aligned(session, count, "count")
    node = session.require_node()
    elapsed, data = await timed_request(
        session, "read", _vmstate_unsupported() if o.vmstate else node.read(offset, count))
    return report_read(session, o, data, offset, elapsed, start, span)


@command("readv", "reads a number of bytes at a specified offset",
         args="[-Cqv] [-P pattern] off len [len..]", argmin=2, argmax=-1, help=HELP["readv"])
async def readv_cmd(session: Session, argv: list[str]) -> int:
    o, operands = parse_options(session, argv, READV_OPTS)
    if len(operands) < 2:
        return usage(session, "readv")
    offset = num(session, operands[0])
    count = sum(iovec_lengths(session, operands[1:]))
    elapsed, data = await timed_request(session, "readv",
                                        session.require_node().read(offset, count))
    return report_read(session, o, data, offset, elapsed)


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


def _write_conflict(o: SimpleNamespace) -> str | None:
    """qemu-io's complaint about a combination of write options, if any."""
    flags = o.flags
    checks = (
        (o.vmstate and o.zeroes, "-b and -z cannot be specified at the same time"),
        (bool(flags & ReqFlag.FUA) and (o.vmstate or o.compressed),
         "-f and -b or -c cannot be specified at the same time"),
        (bool(flags & ReqFlag.NO_FALLBACK) and not o.zeroes, "-n requires -z to be specified"),
        (bool(flags & ReqFlag.MAY_UNMAP) and not o.zeroes, "-u requires -z to be specified"),
        (o.zeroes + (o.pat is not None) + (o.source is not None) > 1,
         "Only one of -z, -P, and -s can be specified at the same time"),
    )
    return next((message for bad, message in checks if bad), None)


@command("write", "writes a number of bytes at a specified offset", altname="w",
         args="[-bcCfnquz] [-P pattern | -s source_file] off len", argmin=2, argmax=-1,
         perm=Perm.WRITE, help=HELP["write"])
async def write_cmd(session: Session, argv: list[str]) -> int:
    o, operands = parse_options(session, argv, WRITE_OPTS)
    if len(operands) != 2:
        return usage(session, "write")
    conflict = _write_conflict(o)
    if conflict is not None:
        session.out(conflict + "\n")
        return -errno.EINVAL
    offset = num(session, operands[0])
    count = num(session, operands[1])
    if count > REQUEST_MAX_BYTES and not o.flags & ReqFlag.NO_FALLBACK:
        session.out(f"length cannot exceed {REQUEST_MAX_BYTES} without -n, "
                    f"given {operands[1]}\n")
        return -errno.EINVAL
    if o.vmstate or o.compressed:
        sector_aligned(session, offset, "offset")
        sector_aligned(session, count, "count")
    node = session.require_node()
    request: Awaitable[None]
    if o.vmstate:
        request = _vmstate_unsupported()
    elif o.zeroes:
        request = node.write_zeroes(offset, count, o.flags)
    else:
        data = (_fill_from_file(session, o.source, count) if o.source is not None
                else bytes([0xcd if o.pat is None else o.pat]) * count)
        request = node.write(offset, data, ReqFlag.COMPRESSED if o.compressed else o.flags)
    elapsed, _ = await timed_request(session, "write", request)
    report_done(session, o, "wrote", elapsed, offset, count)
    return 0


@command("writev", "writes a number of bytes at a specified offset",
         args="[-Cfq] [-P pattern] off len [len..]", argmin=2, argmax=-1, perm=Perm.WRITE,
         help=HELP["writev"])
async def writev_cmd(session: Session, argv: list[str]) -> int:
    o, operands = parse_options(session, argv, WRITEV_OPTS)
    if len(operands) < 2:
        return usage(session, "writev")
    offset = num(session, operands[0])
    count = sum(iovec_lengths(session, operands[1:]))
    pat = 0xcd if o.pat is None else o.pat
    elapsed, _ = await timed_request(
        session, "writev", session.require_node().write(offset, bytes([pat]) * count, o.flags))
    report_done(session, o, "wrote", elapsed, offset, count)
    return 0


@command("discard", "discards a number of bytes at a specified offset", altname="d",
         args="[-Cq] off len", argmin=2, argmax=-1, perm=Perm.WRITE, help=HELP["discard"])
async def discard_cmd(session: Session, argv: list[str]) -> int:
    o, operands = parse_options(session, argv, DISCARD_OPTS)
    if len(operands) != 2:
        return usage(session, "discard")
    offset = num(session, operands[0])
    count = length(session, operands[1])
    elapsed, _ = await timed_request(session, "discard",
                                     session.require_node().discard(offset, count))
    report_done(session, o, "discard", elapsed, offset, count)
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
