"""The rate limiter: QEMU's slice arithmetic on a fake clock."""
from __future__ import annotations

import asyncio

from blocklayer.jobs.ratelimit import NS, SLICE_NS, RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 10 * NS

    def __call__(self) -> int:
        return self.now


def test_no_limit_never_waits() -> None:
    rl = RateLimit(0, clock=Clock())
    assert rl.calculate_delay(1 << 40) == 0
    assert rl.speed == 0


def test_quota_per_slice() -> None:
    clock = Clock()
    rl = RateLimit(10 << 20, clock=clock)           # 10 MiB/s: 1 MiB per 100 ms
    assert rl.quota == (10 << 20) // 10
    assert rl.calculate_delay(512 << 10) == 0        # half the quota
    assert rl.calculate_delay((512 << 10) - 1) == 0  # just under it
    # the quota is reached: wait for the end of the slice
    assert rl.calculate_delay(1) == SLICE_NS
    clock.now += SLICE_NS // 2
    assert rl.calculate_delay(0) == SLICE_NS // 2


def test_excess_stretches_the_slice() -> None:
    clock = Clock()
    rl = RateLimit(1 << 20, clock=clock)            # 1 MiB/s: 104857 bytes a slice
    # four slices' worth at once: wait until four slices from the start
    assert rl.calculate_delay(4 * rl.quota) == 4 * SLICE_NS
    clock.now += SLICE_NS                            # still inside the stretched slice
    assert rl.calculate_delay(rl.quota) == 4 * SLICE_NS   # 5 slices' worth, 1 gone
    clock.now += 5 * SLICE_NS                        # over: a new slice
    assert rl.calculate_delay(1) == 0


def test_average_rate_is_held() -> None:
    clock = Clock()
    rl = RateLimit(50 << 20, clock=clock)
    start = clock.now
    sent = 0
    while sent < 500 << 20:                          # 2 MiB requests, 10 s worth
        clock.now += rl.calculate_delay(2 << 20)
        sent += 2 << 20
    took = (clock.now - start) / NS
    assert 9.5 <= took <= 10.5, took


def test_speed_changes_at_run_time() -> None:
    clock = Clock()
    rl = RateLimit(1 << 20, clock=clock)
    assert rl.calculate_delay(rl.quota) > 0
    rl.set_speed(100 << 20)                          # block-job-set-speed
    assert rl.speed == 100 << 20
    clock.now += 2 * SLICE_NS
    assert rl.calculate_delay(5 << 20) == 0          # under the new quota of 10 MiB
    rl.set_speed(0)
    assert rl.calculate_delay(1 << 40) == 0


def test_tiny_speed_keeps_a_quota_of_one() -> None:
    rl = RateLimit(1, clock=Clock())
    assert rl.quota == 1


def test_wait_sleeps_the_delay(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)
    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    clock = Clock()
    rl = RateLimit(1 << 20, clock=clock)
    asyncio.run(rl.wait(10))
    asyncio.run(rl.wait(2 * rl.quota))
    q = rl.quota
    assert slept == [int((2 * q + 10) / q * SLICE_NS) / NS]     # the first did not wait
