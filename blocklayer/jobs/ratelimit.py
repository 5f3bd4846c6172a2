"""Bytes per second in time slices, as QEMU's ``util/ratelimit``.

Each slice (100 ms for jobs and ``qemu-img -r``) may carry ``speed * slice`` bytes (its
quota).  Bytes are accounted as they are dispatched; once a slice holds its quota, the
slice is stretched to as many slices as the bytes in it need, and the caller waits
until the stretched slice ends.  A new slice starts when the last one has ended.
The speed may change at any time (``block-job-set-speed``): the next request sees
the new quota.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

SLICE_NS = 100_000_000          # QEMU's BLOCK_JOB_SLICE_TIME
NS = 1_000_000_000


class RateLimit:
    """A speed limit in bytes per second (0: none)."""

    def __init__(self, speed: int = 0, slice_ns: int = SLICE_NS,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.clock = clock
        self.slice_start = 0
        self.slice_end = 0
        self.dispatched = 0
        self.slice_ns = slice_ns
        self.quota = 0
        self.set_speed(speed, slice_ns)

    @property
    def speed(self) -> int:
        """Bytes per second the quota stands for (0: no limit)."""
        return self.quota * NS // self.slice_ns if self.quota else 0

    def set_speed(self, speed: int, slice_ns: int | None = None) -> None:
        """Limit to ``speed`` bytes per second from now on (0 lifts the limit)."""
        if slice_ns is not None:
            self.slice_ns = slice_ns
        self.quota = max(speed * self.slice_ns // NS, 1) if speed > 0 else 0

    def calculate_delay(self, n: int) -> int:
        """Account ``n`` bytes dispatched now; nanoseconds the caller must wait before
        it dispatches more (0: go on)."""
        if not self.quota:
            return 0
        now = self.clock()
        if self.slice_end < now:            # the last slice (maybe stretched) is over
            self.slice_start, self.slice_end = now, now + self.slice_ns
            self.dispatched = 0
        self.dispatched += n
        if self.dispatched < self.quota:
            return 0
        slices = self.dispatched / self.quota
        self.slice_end = self.slice_start + int(slices * self.slice_ns)
        return self.slice_end - now

    async def wait(self, n: int) -> None:
        """Account ``n`` bytes and sleep as long as :meth:`calculate_delay` says."""
        delay = self.calculate_delay(n)
        if delay > 0:
            await asyncio.sleep(delay / NS)
