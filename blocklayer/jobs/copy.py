"""The copy engine: copy chunks of a source into a target node (QEMU's block-copy in
spirit), for ``convert``, ``commit`` and ``rebase`` and the stream, mirror and backup
jobs to come.

What to copy is a **plan**: any async iterable of :class:`Chunk` (offset, length,
:class:`Kind`), in the order the target should be written.  The plan is the policy:
it asks block status what it cares about (convert: each source with qemu-img's
request shapes, :mod:`blocklayer.tools.img.convert_plan`; commit and stream: what is
allocated above the base, :func:`blocklayer.jobs.plans.allocated_above`; rebase: where
the old and the new backing file differ; mirror: the runs of a dirty bitmap).

For each chunk the engine takes three steps, each a method a user may override (as a
filter overrides only what it changes):

- :meth:`CopyEngine.payload` -- what to write: ``None`` (the kind says it all), or
  :data:`~blocklayer.jobs.zeroes.Piece` s, data read with :meth:`CopyEngine.read` and
  cut by zero detection (``-S``) into pieces to write and pieces to zero;
- :meth:`CopyEngine.write` -- write it (zero runs as write-zeroes, or nothing if the
  target reads as zeroes already), each data piece paced by the rate limiter;
- progress: the callback gets the bytes done so far and the total.

Two ways to drive it:

- :meth:`CopyEngine.run` copies a whole plan.  With ``parallel`` > 1 (or
  ``read_ahead``) it keeps that many chunks in flight: each worker reads its chunk,
  waits for its turn and writes, so the target is written in plan order unless
  ``in_order`` is false (the turn is handed on by a future, no polling).  A write of one
  data piece in whole target clusters to a target that ``allocates_in_order`` need not
  finish before the next one's turn: once its first step has run it has taken its
  place, so several writes are in flight and the image is laid out as if each had
  waited.  An optional ``pause`` coroutine is awaited before each chunk is taken from
  the plan: a job's pause point.
- :meth:`CopyEngine.copy_chunk` copies one chunk start to end: a job that wants to
  decide between chunks (pause, cancel, change the speed, take the next dirty run)
  drives the engine itself.

The speed limit (:class:`~blocklayer.jobs.ratelimit.RateLimit`) may change while the
engine runs (``block-job-set-speed``).
"""
from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, AsyncIterable, Awaitable, Callable

from blocklayer.core.errors import BlockError

from .ratelimit import RateLimit
from .zeroes import Piece, ZeroDetect

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode


class Kind(enum.Enum):
    DATA = 0          # read, then written (or zeroed where the buffer is zero)
    ZERO = 1          # zeroed on the target (nothing at all if it reads as zeroes)
    SKIP = 2          # nothing to write (left to the target's backing file, or there)
    FILL = 3          # zeroes written as data, nothing read (-S 0)


@dataclass
class Chunk:
    offset: int
    length: int
    kind: Kind
    seq: int = 0      # its place in the order of writes (set by the engine)


#: ``(bytes done, total bytes)``, called after each chunk
ProgressFn = Callable[[int, int], None]
#: awaited before each chunk is taken from the plan
PauseFn = Callable[[], Awaitable[None]]


class CopyEngine:
    """Copy the chunks of a plan from ``source`` to ``target``.

    ``total`` is what progress counts to; ``zeroes`` the zero detection applied to
    data read (None: data is written as read); ``target_zeroed`` says the target reads
    as zeroes where nothing is written, so zero runs need no request at all."""

    def __init__(self, source: "BlockNode | None", target: "BlockNode", total: int, *,
                 parallel: int = 1, in_order: bool = True, read_ahead: bool = False,
                 zeroes: ZeroDetect | None = None, target_zeroed: bool = False,
                 rate: RateLimit | None = None, progress: ProgressFn | None = None) -> None:
        self.source = source
        self.target = target
        self.total = total
        self.parallel = max(parallel, 1)
        self.in_order = in_order
        #: the plan may be asked for later chunks while earlier ones are copied (false
        #: when the plan asks the target what the copy writes, as rebase's does)
        self.read_ahead = read_ahead
        self.zeroes = zeroes
        self.target_zeroed = target_zeroed
        self.rate = rate
        self.progress = progress
        self.done = 0
        self.next_write = 0
        self.turns: dict[int, asyncio.Future[None]] = {}   # waiting workers by seq
        self.failed = False             # a worker failed: the others write nothing more

    @cached_property
    def cluster(self) -> int:
        """The target's cluster size (0 if it has none)."""
        try:
            return self.target.driver.get_info().cluster_size
        except BlockError:
            return 0

    # ---- driving it --------------------------------------------------------------------
    async def run(self, plan: AsyncIterable[Chunk], pause: PauseFn | None = None) -> None:
        """Copy every chunk of ``plan``; on an error the requests in flight are
        cancelled and the error raised."""
        if self.parallel == 1 and not self.read_ahead:
            async for chunk in plan:
                if pause is not None:
                    await pause()
                await self.copy_chunk(chunk)
            return
        from blocklayer.core.io import OVERLAPPED
        queue: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=self.parallel * 2)
        producer = asyncio.create_task(self._feed(plan, queue, pause))
        token = OVERLAPPED.set(True)     # the workers' writes leave the loop free to read
        try:
            workers = [asyncio.create_task(self._worker(queue))
                       for _ in range(self.parallel)]
        finally:
            OVERLAPPED.reset(token)
        try:
            await asyncio.gather(producer, *workers)
        except BaseException:
            for t in (producer, *workers):
                t.cancel()
            await asyncio.gather(producer, *workers, return_exceptions=True)
            raise

    async def copy_chunk(self, chunk: Chunk) -> None:
        """Copy one chunk: read it, write it, count it."""
        await self.write(chunk, await self.payload(chunk))
        self._count(chunk)

    # ---- the steps (override what changes) ---------------------------------------------
    async def read(self, offset: int, length: int) -> bytes | bytearray:
        assert self.source is not None
        return await self.source.read(offset, length)

    async def payload(self, chunk: Chunk) -> Any:
        """What :meth:`write` writes for ``chunk``: the data read (or zeroes to write
        as data) cut into pieces; None for the kinds that read nothing."""
        if chunk.kind is Kind.DATA:
            data = await self.read(chunk.offset, chunk.length)
        elif chunk.kind is Kind.FILL:
            data = bytes(chunk.length)
        else:
            return None
        if self.zeroes is None:
            return [(chunk.offset, chunk.length, data)]
        return self.zeroes.pieces(chunk.offset, data)

    async def write(self, chunk: Chunk, payload: Any) -> None:
        if chunk.kind is Kind.SKIP:
            return
        if chunk.kind is Kind.ZERO:
            await self.write_zeroes(chunk.offset, chunk.length)
            return
        await self.write_pieces(payload)

    async def write_pieces(self, pieces: list[Piece]) -> None:
        for off, n, data in pieces:
            if data is None:
                await self.write_zeroes(off, n)
            else:
                await self.throttle(n)
                await self.target.write(off, data)

    async def write_zeroes(self, offset: int, length: int) -> None:
        if self.target_zeroed:
            return
        from blocklayer.core.driver import ReqFlag
        await self.target.write_zeroes(offset, length, ReqFlag.MAY_UNMAP)

    async def throttle(self, n: int) -> None:
        """Account ``n`` bytes copied, and wait as the speed limit says."""
        if self.rate is not None:
            await self.rate.wait(n)

    def may_overlap(self, chunk: Chunk, payload: Any) -> bool:
        """Whether ``chunk``'s write may still be running when the next one starts: one
        piece in whole target clusters (no cluster shared with a neighbour, whose write
        would wait for this one while a later one overtook it)."""
        if not self.in_order or not isinstance(payload, list) or len(payload) != 1 \
                or not self.target.driver.allocates_in_order:
            return False
        cs = max(self.cluster, 1)
        return not chunk.offset % cs and not chunk.length % cs

    # ---- the pipeline ------------------------------------------------------------------
    def _count(self, chunk: Chunk) -> None:
        self.done += chunk.length
        if self.progress is not None:
            self.progress(self.done, self.total)

    async def _feed(self, plan: AsyncIterable[Chunk], queue: "asyncio.Queue[Chunk | None]",
                    pause: PauseFn | None) -> None:
        seq = 0
        async for chunk in plan:
            if pause is not None:
                await pause()
            chunk.seq, seq = seq, seq + 1
            await queue.put(chunk)
        for _ in range(self.parallel):
            await queue.put(None)

    async def _worker(self, queue: "asyncio.Queue[Chunk | None]") -> None:
        try:
            while True:
                chunk = await queue.get()
                if chunk is None:
                    return
                await self._copy_in_turn(chunk)
        except BaseException:
            self.failed = True          # as qemu-img: no write starts after a failure
            raise

    async def _copy_in_turn(self, chunk: Chunk) -> None:
        payload = await self.payload(chunk)
        await self._wait_turn(chunk.seq)
        write = None
        try:
            if self.failed:
                return
            if not self.may_overlap(chunk, payload):
                await self.write(chunk, payload)
            else:
                write = await self._start_write(chunk, payload)
        finally:
            self._next_turn()
        if write is not None:
            await write
        self._count(chunk)

    async def _start_write(self, chunk: Chunk, payload: Any) -> "asyncio.Future[None]":
        """Start writing ``chunk`` and return once the write has taken its place in the
        target: its first step has run, which for every driver that
        ``allocates_in_order`` takes the locks and allocates before anything waits
        (qcow2 allocates a whole request in one hold of its lock).  The next write may
        then start while this one's data is still moving, and the image is laid out as
        if each had waited for the last."""
        write = asyncio.ensure_future(self.write(chunk, payload))
        await asyncio.sleep(0)
        return write

    async def _wait_turn(self, seq: int) -> None:
        if not self.in_order or self.next_write == seq:
            return
        turn = self.turns[seq] = asyncio.get_running_loop().create_future()
        await turn

    def _next_turn(self) -> None:
        if not self.in_order:
            return
        self.next_write += 1
        turn = self.turns.pop(self.next_write, None)
        if turn is not None and not turn.done():
            turn.set_result(None)
