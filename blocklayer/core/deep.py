"""Deep backing chains: the recursion a chain costs, allowed as far as the stack allows.

Opening a chain is a loop (:func:`blocklayer.core.open._open_backing`), but a read,
a block-status query or a copy that falls through to the bottom of a chain still
passes each layer's request path (about six Python frames per layer).  QEMU 7.2 reads
chains of a thousand images and more; Python's default limit of 1,000 frames stops at
about 165.  The tools call :func:`allow_deep_chains` once at start: the limit becomes
what the C stack (``ulimit -s``) holds with a wide margin, so a deep chain reads,
and a chain deeper than that fails with :data:`TOO_DEEP`, never a crash.
"""
from __future__ import annotations

import resource
import sys

#: C stack a Python frame of the request path may take, with margin (measured: an
#: await chain of 20,000 frames fits in 8 MiB, 40,000 do not)
BYTES_PER_FRAME = 512
#: never more frames than this (a 16,000-image chain), whatever the stack
MAX_FRAMES = 100_000
#: the stack assumed when ``ulimit -s`` is unlimited
UNLIMITED_STACK = 64 << 20

TOO_DEEP = "Backing chain is too deep for the stack (raise 'ulimit -s')"


def frames_for_stack() -> int:
    """How many frames the main thread's stack holds safely."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_STACK)
    stack = UNLIMITED_STACK if soft == resource.RLIM_INFINITY or soft <= 0 else soft
    return min(MAX_FRAMES, stack // BYTES_PER_FRAME)


def allow_deep_chains() -> int:
    """Raise the recursion limit to what the stack holds (never lower it); returns it."""
    frames = frames_for_stack()
    if frames > sys.getrecursionlimit():
        sys.setrecursionlimit(frames)
    return sys.getrecursionlimit()
