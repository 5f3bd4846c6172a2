"""A synchronous, file-like view of a node: read / write / seek / tell / flush / close.

One thin adapter over the async API: it owns an event loop (an ``asyncio.Runner``) and
runs each call to completion on it, so it works with ``shutil.copyfileobj`` and any
code that wants a binary file.
"""
from __future__ import annotations

import asyncio
import io
import os
from typing import Any

from .core.node import BlockNode
from .core.open import open_image


class BlockFile(io.RawIOBase):
    """``with BlockFile("disk.qcow2", "r+b") as f: f.seek(4096); f.write(b"x")``"""

    def __init__(self, filename: str, mode: str = "rb", *, fmt: str | None = None,
                 **open_args: Any) -> None:
        super().__init__()
        if mode not in ("rb", "r+b", "rb+", "r", "r+"):
            raise ValueError(f"unsupported mode {mode!r} (images are never created here)")
        self._runner = asyncio.Runner()
        self._writable = "+" in mode
        self.node: BlockNode = self._runner.run(
            open_image(filename, fmt=fmt, read_only=not self._writable, **open_args))
        self._pos = 0

    # io.RawIOBase protocol
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self._writable

    def seekable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        self._check_open()
        size = self.node.total_bytes
        n = max(0, min(len(buf), size - self._pos))
        if n == 0:
            return 0
        data = self._runner.run(self.node.read(self._pos, n))
        memoryview(buf)[:n] = data
        self._pos += n
        return n

    def write(self, data: Any) -> int:
        self._check_open()
        if not self._writable:
            raise io.UnsupportedOperation("not writable")
        data = bytes(data)
        if self._pos + len(data) > self.node.total_bytes:
            raise OSError(28, "write beyond the end of the image")
        self._runner.run(self.node.write(self._pos, data))
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.node.total_bytes}[whence]
        if base + offset < 0:
            raise OSError(22, "negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        if not self.closed and self._writable and not self.node.closed:
            self._runner.run(self.node.flush())

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
            self._runner.run(self.node.close())
        finally:
            self._runner.close()
            super().close()

    def __del__(self) -> None:
        if not self.closed:
            try:
                self.close()
            except Exception:
                pass

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")
