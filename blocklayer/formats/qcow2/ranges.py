"""The guest range lock: shared holds for reads, exclusive ones for anything that may
change a mapping (cluster aligned by the callers).

A hold is a small object used as ``async with``: it runs for every request, so it makes
no event until somebody has to wait for it.
"""
from __future__ import annotations

import asyncio


class _Hold:
    __slots__ = ("lock", "start", "end", "exclusive", "done")

    def __init__(self, lock: "RangeLock", start: int, end: int, exclusive: bool) -> None:
        self.lock, self.start, self.end, self.exclusive = lock, start, end, exclusive
        self.done: asyncio.Event | None = None

    def _conflict(self) -> "_Hold | None":
        start, end, exclusive = self.start, self.end, self.exclusive
        for h in self.lock.holds:
            if h.start < end and start < h.end and (h.exclusive or exclusive):
                return h
        return None

    async def __aenter__(self) -> None:
        holds = self.lock.holds
        if holds:
            while (other := self._conflict()) is not None:
                if other.done is None:
                    other.done = asyncio.Event()
                await other.done.wait()
        holds.append(self)

    async def __aexit__(self, *exc: object) -> None:
        self.lock.holds.remove(self)
        if self.done is not None:
            self.done.set()


class RangeLock:
    """Shared/exclusive holds on guest byte ranges."""

    def __init__(self) -> None:
        self.holds: list[_Hold] = []

    def shared(self, start: int, end: int) -> _Hold:
        return _Hold(self, start, end, False)

    def exclusive(self, start: int, end: int) -> _Hold:
        return _Hold(self, start, end, True)
