"""Reading the host files that an image or an option names, with a size cap.

Configs (blkdebug), descriptors and key files are small; a name such as ``/dev/zero``
or a FIFO must not make us read without end.  Every such file is read here, once, at
most ``limit`` bytes: a larger file is an error (EFBIG) naming it, never a runaway
allocation.
"""
from __future__ import annotations

import errno
import os

from .errors import BlockError

#: the default cap: far above any config, descriptor or key file QEMU reads
NAMED_FILE_LIMIT = 1 << 20


class FileTooLarge(BlockError):
    """A named file is larger than the cap for its kind."""


def read_named_file(path: str, *, limit: int = NAMED_FILE_LIMIT) -> bytes:
    """At most ``limit`` bytes of ``path``; :class:`FileTooLarge` beyond.

    Raises ``OSError`` as ``open``/``read`` do (the caller words it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > limit:
        raise FileTooLarge(f"'{path}' is larger than {limit} bytes", errno.EFBIG)
    return b"".join(chunks)


def read_named_text(path: str, *, limit: int = NAMED_FILE_LIMIT) -> str:
    return read_named_file(path, limit=limit).decode("utf-8", "surrogateescape")
