"""The C library, for the few calls Python's ``os`` lacks (fallocate, mallopt).

``CDLL(None)`` is the process's own symbol table, which holds libc on Linux; asking
``ctypes.util.find_library`` instead would run ``ldconfig`` and a compiler at start-up.
"""
from __future__ import annotations

import ctypes

LIBC = ctypes.CDLL(None, use_errno=True)
