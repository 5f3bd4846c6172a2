"""Keep glibc from returning large freed buffers to the OS after every request.

Requests allocate buffers of up to several MiB.  glibc serves those with mmap, or from
the heap and trims it on free, so every request would page-fault its buffer in afresh
(ten times the cost of the copy itself).  Raising the mmap and trim thresholds keeps
such buffers in the heap, and one arena (the GIL serialises allocation anyway) keeps
worker threads from growing heaps of their own.  Called once when the first image opens; a no-op elsewhere.
"""
from __future__ import annotations

import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
_tuned = [False]


def tune_malloc() -> None:
    if _tuned[0] or not sys.platform.startswith("linux"):
        return
    _tuned[0] = True
    try:
        from .libc import LIBC as libc
        libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
        libc.mallopt(M_ARENA_MAX, 1)
    except (OSError, AttributeError):
        pass


def _bytearray_factory():  # type: ignore[no-untyped-def]
    try:
        import ctypes
        make = ctypes.pythonapi.PyByteArray_FromStringAndSize
        make.restype = ctypes.py_object
        make.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
        # below 64 KiB zeroing costs less than the foreign call
        return lambda n: make(None, n) if n > 65536 else bytearray(n)
    except (ImportError, AttributeError):        # not CPython: zeroed is fine too
        return bytearray


#: ``uninitialized(n)``: a bytearray of ``n`` bytes left as malloc gave them, for a
#: buffer that is about to be overwritten whole (a read into it); zeroing 2 MiB costs
#: more than a tenth of reading it from the page cache.  The caller must fill every
#: byte or discard the buffer: it can hold old heap contents.
uninitialized = _bytearray_factory()
