"""QEMU's leaky-bucket arithmetic (util/throttle.c), on a simulated clock."""
from __future__ import annotations

import pytest

from blocklayer.core.throttle import NS, ConfigError, ThrottleState, config_from_limits


def state(**limits: int) -> ThrottleState:
    return ThrottleState(config_from_limits({k.replace("_", "-"): v
                                             for k, v in limits.items()}), 0)


def go(ts: ThrottleState, now: int, is_write: bool) -> int:
    """The time a request issued at ``now`` may start (the timer re-checks, as
    QEMU's does)."""
    while wait := ts.wait_ns(now, is_write):
        now += wait
    return now


def test_without_max_the_bucket_holds_a_tenth_of_a_second() -> None:
    ts = state(bps_total=1000)
    assert ts.wait_ns(0, True) == 0
    ts.account(True, 100)
    assert ts.wait_ns(0, True) == 0            # exactly full: no wait
    ts.account(True, 900)
    assert ts.wait_ns(0, True) == int(0.9 * NS)
    assert ts.wait_ns(int(0.9 * NS), True) == 0


def test_burst_runs_at_max_until_the_bucket_is_full() -> None:
    ts = state(bps_write=100, bps_write_max=1000, bps_write_max_length=2)
    ts.account(True, 500)                      # burst bucket: max/10 = 100 bytes
    assert ts.wait_ns(0, True) == int(0.4 * NS)
    assert ts.wait_ns(int(0.4 * NS), True) == 0
    # keep writing at the burst rate: after the 2 s bucket (2000 bytes) fills, the
    # average rate applies
    now, sent = int(0.4 * NS), 500
    while True:
        wait = ts.wait_ns(now, True)
        if wait > 0.5 * NS:
            break
        now = go(ts, now, True)
        ts.account(True, 100)
        sent += 100
    assert 2000 <= sent <= 2600
    assert ts.wait_ns(now, False) == 0         # reads are not limited


def test_iops_size_counts_big_requests_as_several() -> None:
    ts = state(iops_total=10, iops_size=4096)
    ts.account(False, 4096 * 5)                # 5 operations; the bucket holds 1
    assert ts.wait_ns(0, False) == int(0.4 * NS)
    ts2 = state(iops_total=10)
    ts2.account(False, 4096 * 5)               # without iops-size: one operation
    assert ts2.wait_ns(0, False) == 0


def test_directions_use_their_own_buckets() -> None:
    ts = state(bps_read=1000, iops_write=10)
    ts.account(False, 5000)
    assert ts.wait_ns(0, False) > 0
    assert ts.wait_ns(0, True) == 0
    ts.account(True, 1)
    ts.account(True, 1)
    assert ts.wait_ns(0, True) == int(0.1 * NS)


@pytest.mark.parametrize("bps,size", [(10 << 20, 65536), (1 << 20, 4096), (5000, 512)])
def test_long_run_rate_is_the_limit(bps: int, size: int) -> None:
    """Requests issued as soon as allowed for 20 simulated seconds move bps * 20
    bytes (plus the initial bucket)."""
    ts = state(bps_total=bps)
    now = sent = 0
    while now < 20 * NS:
        now = go(ts, now, True)
        ts.account(True, size)
        sent += size
    assert abs(sent - 20 * bps) <= bps / 10 + 2 * size


def test_iops_limit_with_burst() -> None:
    ts = state(iops_total=200, iops_total_max=400, iops_total_max_length=1)
    now = ops = 0
    first_second = None
    while now < 20 * NS:
        now = go(ts, now, False)
        ts.account(False, 4096)
        ops += 1
        if first_second is None and now >= NS:
            first_second = ops
    # a tenth of a second at max at once, then max; the bucket (max * 1 s) leaks at
    # the average meanwhile, so the burst lasts until ~1.8 s (docs/throttle.txt)
    assert first_second is not None and 430 <= first_second <= 450
    assert abs(ops - (40 + 400 * 1.8 + 200 * 18.2)) <= 20


def test_levels_start_empty_on_reconfiguration() -> None:
    ts = state(bps_total=1000)
    ts.account(True, 5000)
    assert ts.wait_ns(0, True) > 0
    ts.configure(config_from_limits({"bps-total": 1000}), 0)
    assert ts.wait_ns(0, True) == 0


def test_invalid() -> None:
    with pytest.raises(ConfigError, match="cannot be used at the same time"):
        config_from_limits({"bps-total": 1, "bps-read": 1})
