"""Argument helpers shared by the commands: sizes, patterns, getopt with qemu-io's
usage fallback, and the errno text of a failed request."""
from __future__ import annotations

import errno
import os
import time
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, Iterator, Mapping

from ...core.driver import ReqFlag
from ...core.errors import BlockError
from .getopt import Getopt, GetoptError
from .output import REQUEST_MAX_BYTES, NumberError, cvtnum, parse_pattern
from .session import Session


class CommandError(Exception):
    """Stops a command; ``code`` is what it returns (a line was printed already)."""

    def __init__(self, code: int = -errno.EINVAL) -> None:
        super().__init__(code)
        self.code = code


class Options:
    """A command's getopt loop.  ``for opt, arg in opts:``; a bad option prints glibc's
    line on stderr and the command's usage on stdout, then raises CommandError."""

    def __init__(self, session: Session, argv: list[str], short: str) -> None:
        self.session = session
        self.name = argv[0]
        self._getopt = Getopt(argv[0], argv[1:], short)

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        try:
            yield from self._getopt
        except GetoptError as exc:
            self.session.raw_err(str(exc))
            raise CommandError(usage(self.session, self.name)) from None

    @property
    def operands(self) -> list[str]:
        return self._getopt.operands


#: What an option letter sets: a bool attribute (its name), an attribute parsed from the
#: option's argument (name, parser), a request flag or'd into ``flags``, or nothing.
OptionSpec = Mapping[str, "str | tuple[str, Callable[[Session, str], Any]] | ReqFlag | None"]


def parse_options(session: Session, argv: list[str], spec: OptionSpec,
                  stop: str = "") -> tuple[SimpleNamespace, list[str]]:
    """A command's options by table: the namespace has every attribute of ``spec``
    (False or None unless given), ``flags``, and ``stopped`` (the first option of
    ``stop`` seen: parsing ends there, as qemu-io acts on it at once)."""
    short = "".join(k + (":" if isinstance(v, tuple) else "") for k, v in spec.items())
    got = SimpleNamespace(flags=ReqFlag.NONE, stopped=None)
    for v in spec.values():
        if isinstance(v, str):
            setattr(got, v, False)
        elif isinstance(v, tuple):
            setattr(got, v[0], None)
    opts = Options(session, argv, short)
    for opt, arg in opts:
        what = spec[opt]
        if isinstance(what, ReqFlag):
            got.flags |= what
        elif isinstance(what, tuple):
            setattr(got, what[0], what[1](session, arg or ""))
        elif what is not None:
            setattr(got, what, True)
        if opt in stop:
            got.stopped = opt
            break
    return got, opts.operands


async def timed_request(session: Session, what: str,
                        request: Awaitable[Any]) -> tuple[float, Any]:
    """(seconds, result) of one request; a failure prints qemu-io's ``WHAT failed:``
    line and raises CommandError with the negative errno."""
    t0 = time.perf_counter()
    try:
        result = await request
    except (BlockError, OSError, ValueError) as exc:
        session.out(f"{what} failed: {strerror(exc)}\n")
        raise CommandError(-errno_of(exc)) from None
    return time.perf_counter() - t0, result


def usage(session: Session, name: str) -> int:
    from .table import COMMANDS, find
    cmd = COMMANDS.get(name) or find(name)
    assert cmd is not None
    session.out(cmd.usage_line())
    return -errno.EINVAL


def num(session: Session, text: str) -> int:
    """A size argument, or qemu-io's parsing error on stdout and CommandError."""
    try:
        return cvtnum(text, session.warn)
    except NumberError as exc:
        session.out(f"{exc}\n")
        raise CommandError() from None


def pattern(session: Session, text: str) -> int:
    try:
        return parse_pattern(text)
    except NumberError as exc:
        session.out(f"{exc}\n")
        raise CommandError() from None


def length(session: Session, text: str, extra: str = "") -> int:
    """A request length, at most BDRV_REQUEST_MAX_BYTES."""
    count = num(session, text)
    if count > REQUEST_MAX_BYTES:
        session.out(f"length cannot exceed {REQUEST_MAX_BYTES}{extra}, given {text}\n")
        raise CommandError()
    return count


def iovec_lengths(session: Session, texts: list[str]) -> list[int]:
    """The lengths of a vectored request (create_iovec's checks)."""
    sizes = []
    total = 0
    for text in texts:
        n = num(session, text)
        if n > REQUEST_MAX_BYTES:
            session.out(f"Argument '{text}' exceeds maximum size {REQUEST_MAX_BYTES}\n")
            raise CommandError()
        if total > REQUEST_MAX_BYTES - n:
            session.out(f"The total number of bytes exceed the maximum size "
                        f"{REQUEST_MAX_BYTES}\n")
            raise CommandError()
        sizes.append(n)
        total += n
    return sizes


def sector_aligned(session: Session, value: int, what: str) -> None:
    if value % 512:
        session.out(f"{value} is not a sector-aligned value for '{what}'\n")
        raise CommandError()


def errno_of(exc: BaseException) -> int:
    if isinstance(exc, BlockError):
        return exc.errno or errno.EIO
    if isinstance(exc, OSError):
        return exc.errno or errno.EIO
    return errno.EINVAL


def strerror(exc: BaseException) -> str:
    return os.strerror(errno_of(exc))
