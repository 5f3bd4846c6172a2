"""The copy engine on fake nodes that record what is asked of them: requests in flight
bounded, writes in plan order, zero detection, progress, pause points, the rate
limiter, errors; and on real nodes (null-co, raw files) with the plans of commit."""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import pytest

from blocklayer.core.errors import BlockError
from blocklayer.jobs.copy import Chunk, CopyEngine, Kind
from blocklayer.jobs.ratelimit import RateLimit
from blocklayer.jobs.zeroes import ZeroDetect

KIB = 1024


@dataclass
class Info:
    cluster_size: int = 64 * KIB


@dataclass
class FakeDriver:
    allocates_in_order: bool = False

    def get_info(self) -> Info:
        return Info()


@dataclass
class FakeNode:
    """A node whose reads and writes take random turns of the loop."""
    data: bytearray
    driver: FakeDriver = field(default_factory=FakeDriver)
    seed: int = 0
    log: list[tuple[str, int, int]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    fail_at: int = -1

    def __post_init__(self) -> None:
        self.rand = random.Random(self.seed)

    async def _jitter(self) -> None:
        for _ in range(self.rand.randrange(4)):
            await asyncio.sleep(0)

    async def read(self, off: int, n: int) -> bytes:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._jitter()
            return bytes(self.data[off:off + n])
        finally:
            self.in_flight -= 1

    async def write(self, off: int, data: Any, flags: Any = None) -> None:
        self.log.append(("write", off, len(data)))
        if off == self.fail_at:
            raise BlockError("injected", 5)
        await self._jitter()
        self.data[off:off + len(data)] = data

    async def write_zeroes(self, off: int, n: int, flags: Any = None) -> None:
        self.log.append(("zero", off, n))
        await self._jitter()
        self.data[off:off + n] = bytes(n)


async def plan_of(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for c in chunks:
        yield c


def pattern(size: int, seed: int = 1) -> bytearray:
    rnd = random.Random(seed)
    return bytearray(rnd.randbytes(size))


def data_chunks(size: int, step: int) -> list[Chunk]:
    return [Chunk(off, min(step, size - off), Kind.DATA) for off in range(0, size, step)]


@pytest.mark.parametrize("parallel", [1, 2, 8])
def test_writes_in_plan_order_with_requests_in_flight(parallel: int) -> None:
    size = 64 * 4 * KIB
    src, dst = FakeNode(pattern(size), seed=3), FakeNode(bytearray(size), seed=4)
    engine = CopyEngine(src, dst, size, parallel=parallel, read_ahead=True)  # type: ignore[arg-type]
    asyncio.run(engine.run(plan_of(data_chunks(size, 4 * KIB))))
    assert dst.data == src.data
    assert [off for _, off, _ in dst.log] == list(range(0, size, 4 * KIB))
    assert src.max_in_flight <= parallel
    if parallel > 1:
        assert src.max_in_flight > 1          # reads really overlapped


def test_out_of_order_copies_everything() -> None:
    size = 64 * 4 * KIB
    src, dst = FakeNode(pattern(size), seed=5), FakeNode(bytearray(size), seed=6)
    engine = CopyEngine(src, dst, size, parallel=8, in_order=False)  # type: ignore[arg-type]
    asyncio.run(engine.run(plan_of(data_chunks(size, 4 * KIB))))
    assert dst.data == src.data
    assert sorted(off for _, off, _ in dst.log) == list(range(0, size, 4 * KIB))


def test_overlapped_writes_start_in_order() -> None:
    """A target that allocates in order gets whole-cluster writes started before the
    last one finished, still in plan order."""
    size, cs = 32 * 64 * KIB, 64 * KIB
    src = FakeNode(pattern(size), seed=7)
    dst = FakeNode(bytearray(size), driver=FakeDriver(allocates_in_order=True), seed=8)
    engine = CopyEngine(src, dst, size, parallel=4, read_ahead=True)  # type: ignore[arg-type]
    chunk = Chunk(0, cs, Kind.DATA)
    assert engine.may_overlap(chunk, [(0, cs, b"")])
    assert not engine.may_overlap(Chunk(4 * KIB, cs, Kind.DATA), [(4 * KIB, cs, b"")])
    assert not engine.may_overlap(chunk, [(0, 4 * KIB, b""), (4 * KIB, cs - 4 * KIB, None)])
    asyncio.run(engine.run(plan_of(data_chunks(size, cs))))
    assert dst.data == src.data
    assert [off for _, off, _ in dst.log] == list(range(0, size, cs))


def test_zero_detection_and_kinds() -> None:
    size = 64 * KIB
    data = pattern(size)
    data[8 * KIB:24 * KIB] = bytes(16 * KIB)         # 16 KiB of zeroes inside data
    src, dst = FakeNode(data), FakeNode(bytearray(b"\xff" * size))
    engine = CopyEngine(src, dst, size, zeroes=ZeroDetect(4 * KIB))  # type: ignore[arg-type]
    plan = [Chunk(0, 32 * KIB, Kind.DATA), Chunk(32 * KIB, 8 * KIB, Kind.ZERO),
            Chunk(40 * KIB, 8 * KIB, Kind.SKIP), Chunk(48 * KIB, 16 * KIB, Kind.FILL)]
    asyncio.run(engine.run(plan_of(plan)))
    assert dst.log == [("write", 0, 8 * KIB), ("zero", 8 * KIB, 16 * KIB),
                       ("write", 24 * KIB, 8 * KIB), ("zero", 32 * KIB, 8 * KIB),
                       ("zero", 48 * KIB, 16 * KIB)]      # FILL is zeroes: detected too
    assert dst.data[:40 * KIB] == data[:32 * KIB] + bytes(8 * KIB)
    assert dst.data[40 * KIB:48 * KIB] == b"\xff" * 8 * KIB
    # -S 0 writes zeroes as data; a target that reads as zeroes needs no zero request
    dst2 = FakeNode(bytearray(size))
    engine = CopyEngine(src, dst2, size, zeroes=ZeroDetect(0))  # type: ignore[arg-type]
    asyncio.run(engine.run(plan_of(plan[:1])))
    assert dst2.log == [("write", 0, 32 * KIB)]
    dst3 = FakeNode(bytearray(size))
    engine = CopyEngine(src, dst3, size, zeroes=ZeroDetect(4 * KIB),  # type: ignore[arg-type]
                        target_zeroed=True)
    asyncio.run(engine.run(plan_of(plan)))
    assert dst3.log == [("write", 0, 8 * KIB), ("write", 24 * KIB, 8 * KIB)]


def test_progress_pause_points_and_chunk_by_chunk() -> None:
    size = 16 * 4 * KIB
    src, dst = FakeNode(pattern(size)), FakeNode(bytearray(size))
    seen: list[tuple[int, int]] = []
    pauses: list[int] = []
    engine = CopyEngine(src, dst, size, parallel=4, read_ahead=True,  # type: ignore[arg-type]
                        progress=lambda done, total: seen.append((done, total)))

    async def pause() -> None:
        pauses.append(engine.done)
        await asyncio.sleep(0)
    asyncio.run(engine.run(plan_of(data_chunks(size, 4 * KIB)), pause))
    assert [d for d, _ in seen] == list(range(4 * KIB, size + 1, 4 * KIB))
    assert {t for _, t in seen} == {size}
    assert len(pauses) == 16
    # a job driving it itself, one chunk at a time
    dst2 = FakeNode(bytearray(size))
    engine = CopyEngine(src, dst2, size)  # type: ignore[arg-type]

    async def by_hand() -> None:
        for chunk in reversed(data_chunks(size, 4 * KIB)):
            await engine.copy_chunk(chunk)
    asyncio.run(by_hand())
    assert dst2.data == src.data and engine.done == size


def test_rate_limiter_paces_data_only(monkeypatch: pytest.MonkeyPatch) -> None:
    size = 8 * 64 * KIB
    data = pattern(size)
    src, dst = FakeNode(data), FakeNode(bytearray(size))
    counted: list[int] = []

    class Counting(RateLimit):
        def calculate_delay(self, n: int) -> int:
            counted.append(n)
            return super().calculate_delay(n)
    engine = CopyEngine(src, dst, size, rate=Counting(1 << 30),  # type: ignore[arg-type]
                        zeroes=ZeroDetect(4 * KIB))
    plan = data_chunks(size // 2, 64 * KIB) + [Chunk(size // 2, size // 2, Kind.ZERO)]
    asyncio.run(engine.run(plan_of(plan)))
    assert counted == [64 * KIB] * 4


def test_error_stops_the_copy() -> None:
    size = 64 * 4 * KIB
    src, dst = FakeNode(pattern(size), seed=9), FakeNode(bytearray(size), seed=10)
    dst.fail_at = 20 * 4 * KIB
    engine = CopyEngine(src, dst, size, parallel=8, read_ahead=True)  # type: ignore[arg-type]
    with pytest.raises(BlockError, match="injected"):
        asyncio.run(engine.run(plan_of(data_chunks(size, 4 * KIB))))
    offs = [off for _, off, _ in dst.log]
    assert offs == list(range(0, 21 * 4 * KIB, 4 * KIB))   # nothing after the failure


# ---- real nodes --------------------------------------------------------------------------

def test_commit_plan_copies_what_is_allocated_above_the_base(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """allocated_above on a real chain: data, zeroes and what the base holds."""
    from tests.conftest import qemu_img

    from blocklayer.jobs.plans import allocated_above
    from tests.img.helpers import qio
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "base.qcow2"), "4M")
    qio(tmp_path / "base.qcow2", "write -P 1 0 4M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             str(tmp_path / "top.qcow2"))
    qio(tmp_path / "top.qcow2", "write -P 2 64k 128k", "write -z 1M 64k")

    async def go() -> list[tuple[int, int, Kind]]:
        from blocklayer.core.open import open_image
        top = await open_image(str(tmp_path / "top.qcow2"), read_only=True)
        try:
            base = top.filtered_backing()
            return [(c.offset, c.length, c.kind)
                    async for c in allocated_above(top, base, 0, 4 << 20)]
        finally:
            await top.close()
    chunks = asyncio.run(go())
    assert chunks == [(0, 64 * KIB, Kind.SKIP), (64 * KIB, 128 * KIB, Kind.DATA),
                      (192 * KIB, (1 << 20) - 192 * KIB, Kind.SKIP),
                      (1 << 20, 64 * KIB, Kind.ZERO),
                      ((1 << 20) + 64 * KIB, (3 << 20) - 64 * KIB, Kind.SKIP)]
