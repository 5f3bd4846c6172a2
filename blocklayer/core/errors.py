"""The exception hierarchy of blocklayer.

Every error raised on purpose is a :class:`BlockError`.  It carries an errno (what the
C code in QEMU would return), a one-phrase message naming the node or file, and a QMP
error class for the daemon.  Only the edges (the command-line tools, the NBD server, the
QMP monitor) turn these into text, exit codes or wire replies.
"""
from __future__ import annotations

import errno as _errno
import os
from typing import Self


class BlockError(Exception):
    """Root of every blocklayer error.

    ``guest_offset``: where in the guest a request of many clusters failed, when the
    driver knows (a copy names it as if it had made one request per cluster).
    ``check_messages``: the lines a check had found before it failed.
    """

    default_errno = _errno.EIO
    qmp_class = "GenericError"

    def __init__(self, message: str, errno: int | None = None, *,
                 guest_offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = self.default_errno if errno is None else errno
        self.guest_offset = guest_offset
        self.check_messages: list[str] = []

    @property
    def strerror(self) -> str:
        return os.strerror(self.errno)

    def with_prefix(self, prefix: str, suffix: str = "") -> Self:
        """This error with ``prefix`` before its message (and ``suffix`` after it):
        the same class, errno and fields, with this error as its cause.
        ``raise exc.with_prefix("Could not open 'x': ")`` inside ``except``."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.message = prefix + self.message + suffix
        new.args = (new.message,)
        new.__cause__ = self
        return new

    def __str__(self) -> str:
        return self.message


class InvalidArgument(BlockError):
    """The caller asked for something that makes no sense (bad option, bad range)."""

    default_errno = _errno.EINVAL


class NotSupported(BlockError):
    """The driver or node cannot do this operation (the request path may fall back)."""

    default_errno = _errno.ENOTSUP


class ReadOnlyError(BlockError):
    """A write-type request reached a read-only node."""

    default_errno = _errno.EPERM


class PermissionConflict(BlockError):
    """An image lock or an op blocker refused the operation."""

    default_errno = _errno.EPERM


class ImageCorrupt(BlockError):
    """The image's metadata is inconsistent or hostile."""

    default_errno = _errno.EIO


class NoSpace(BlockError):
    """The host or the image ran out of space."""

    default_errno = _errno.ENOSPC


class NodeNotFound(BlockError):
    """A node, child or image that was named does not exist."""

    default_errno = _errno.ENOENT
    qmp_class = "DeviceNotFound"


class HostIOError(BlockError):
    """An OS call failed; the errno is the OS's."""

    @classmethod
    def from_oserror(cls, exc: OSError, what: str) -> "HostIOError":
        code = exc.errno or _errno.EIO
        err = NoSpace if code in (_errno.ENOSPC, _errno.EDQUOT) else cls
        return err(f"{what}: {os.strerror(code)}", code)  # type: ignore[return-value]


def describe(exc: BaseException) -> str:
    """One line for an error at a tool's edge."""
    if isinstance(exc, BlockError):
        return exc.message
    if isinstance(exc, OSError):
        return os.strerror(exc.errno) if exc.errno else str(exc)
    return str(exc)
