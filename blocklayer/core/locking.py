"""Image locking compatible with QEMU 7.2 (block/file-posix.c).

QEMU takes open-file-description (OFD) byte-range locks on the image file: for every
permission bit ``i`` it holds, a shared lock on byte ``100 + i``; for every permission bit
it does not share with others, a shared lock on byte ``200 + i``.  Before taking a
permission it checks that nobody holds the "unshared" byte for it, and before unsharing
one that nobody holds the permission byte.  Doing the same makes QEMU and blocklayer see
each other's locks.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct

from .driver import PERM_LOCK_NAMES, Perm
from .errors import PermissionConflict

PERM_BASE = 100
SHARED_BASE = 200
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_FLOCK = "hhqqi4x"      # struct flock: l_type, l_whence, l_start, l_len, l_pid


def _bits() -> list[tuple[int, Perm]]:
    return [(i, Perm(1 << i)) for i in range(4)]


def _set(fd: int, byte: int, kind: int) -> None:
    arg = struct.pack(_FLOCK, kind, os.SEEK_SET, byte, 1, 0)
    fcntl.fcntl(fd, _F_OFD_SETLK, arg)


def _held_by_other(fd: int, byte: int) -> bool:
    arg = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0)
    res = fcntl.fcntl(fd, _F_OFD_GETLK, arg)
    return struct.unpack(_FLOCK, res)[0] != fcntl.F_UNLCK


def ofd_supported(fd: int) -> bool:
    try:
        _held_by_other(fd, PERM_BASE)
        return True
    except OSError:
        return False


class ImageLock:
    """The lock bytes one open file holds, updated as its permissions change."""

    def __init__(self, fd: int, filename: str) -> None:
        self.fd = fd
        self.filename = filename
        self.perm = Perm.NONE
        self.shared = Perm.ALL

    def _conflict(self, text: str) -> PermissionConflict:
        return PermissionConflict(
            f"Failed to get {text} lock\nIs another process using the image [{self.filename}]?",
            errno.EAGAIN)

    def apply(self, perm: Perm, shared: Perm) -> None:
        """Take the lock bytes for ``perm``/``shared``, check others', or raise."""
        old_perm, old_shared = self.perm, self.shared
        try:
            self._lock_bytes(perm | old_perm, shared & old_shared)
            self._check(perm, shared)
        except PermissionConflict:
            self._lock_bytes(old_perm, old_shared)
            raise
        self._lock_bytes(perm, shared)
        self.perm, self.shared = perm, shared

    def release(self) -> None:
        try:
            self._lock_bytes(Perm.NONE, Perm.ALL)
        except PermissionConflict:
            pass
        self.perm, self.shared = Perm.NONE, Perm.ALL

    def _lock_bytes(self, perm: Perm, shared: Perm) -> None:
        for i, bit in _bits():
            try:
                _set(self.fd, PERM_BASE + i, fcntl.F_RDLCK if perm & bit else fcntl.F_UNLCK)
            except OSError:
                raise self._conflict(f'"{PERM_LOCK_NAMES[bit]}"') from None
            try:
                _set(self.fd, SHARED_BASE + i,
                     fcntl.F_UNLCK if shared & bit else fcntl.F_RDLCK)
            except OSError:
                raise self._conflict(f'shared "{PERM_LOCK_NAMES[bit]}"') from None

    def _check(self, perm: Perm, shared: Perm) -> None:
        for i, bit in _bits():
            if perm & bit and _held_by_other(self.fd, SHARED_BASE + i):
                raise self._conflict(f'"{PERM_LOCK_NAMES[bit]}"')
            if not shared & bit and _held_by_other(self.fd, PERM_BASE + i):
                raise self._conflict(f'shared "{PERM_LOCK_NAMES[bit]}"')
