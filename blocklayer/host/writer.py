"""One thread per file that performs its large buffered writes in the order they came.

Writes into the page cache cost more than anything else in a copy, and the kernel runs
the writes to one file one at a time anyway (the inode lock), so a pool of threads only
makes them queue on that lock and on the GIL.  A single writer thread per file takes
them from a FIFO queue and runs them back to back while the event loop reads the next
data; each completion wakes the loop once.  The thread starts with the first write that
needs it and ends when the file closes.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from typing import Callable


class Writer:
    """FIFO of blocking jobs run on one daemon thread; ``await writer.run(job)``."""

    def __init__(self, name: str) -> None:
        self._jobs: deque[tuple[Callable[[], object], asyncio.Future[object],
                                asyncio.AbstractEventLoop] | None] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def run(self, job: Callable[[], object]) -> "asyncio.Future[object]":
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._ready:
            self._jobs.append((job, fut, loop))
            self._ready.notify()
        return fut

    def close(self) -> None:
        """Finish the queued jobs, then end the thread."""
        with self._ready:
            self._jobs.append(None)
            self._ready.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self) -> None:
        jobs, ready = self._jobs, self._ready
        while True:
            with ready:
                while not jobs:
                    ready.wait()
                item = jobs.popleft()
            if item is None:
                return
            job, fut, loop = item
            try:
                result, error = job(), None
            except BaseException as exc:       # handed to the waiting coroutine
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:                # the loop has closed: nobody waits
                pass


def _settle(fut: "asyncio.Future[object]", result: object, error: BaseException | None) -> None:
    if fut.cancelled():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def thread_name(path: str) -> str:
    return f"writer {os.path.basename(path)}"[:15]
