"""I/O throttling math, sans I/O: QEMU's leaky buckets (util/throttle.c).

Six buckets -- bytes total/read/write and operations total/read/write -- each with an
average rate (the leak), an optional burst rate ``max`` and a burst length in seconds.
A request is accounted into the buckets of its direction; before one may start,
:meth:`ThrottleState.wait_ns` says how long the buckets need to leak first (0: go).
Without ``max`` a bucket holds a tenth of a second at the average rate; with it, the
bucket holds ``max * burst_length`` and a second bucket (a tenth of a second at ``max``)
keeps a burst at the ``max`` rate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InvalidArgument

NS = 1_000_000_000
VALUE_MAX = 1_000_000_000_000_000
UINT_MAX = 0xFFFFFFFF

#: bucket names in QEMU's order, with the ThrottleLimits key prefix of each
BUCKETS = ("bps-total", "bps-read", "bps-write", "iops-total", "iops-read", "iops-write")
#: the buckets a read (index 0) and a write (1) are checked against
DIRECTION = ((0, 1, 3, 4), (0, 2, 3, 5))


@dataclass
class Bucket:
    avg: float = 0
    max: float = 0
    burst_length: int = 1
    level: float = 0
    burst_level: float = 0

    def leak(self, delta_ns: int) -> None:
        self.level = max(self.level - self.avg * delta_ns / NS, 0)
        if self.max:
            self.burst_level = max(self.burst_level - self.max * delta_ns / NS, 0)

    def wait_ns(self) -> int:
        if not self.avg:
            return 0
        if not self.max:
            size, burst_size = self.avg / 10, 0.0
        else:
            size, burst_size = self.max * self.burst_length, self.max / 10
        if burst_size and self.burst_level > burst_size:
            wait = int((self.burst_level - burst_size) / self.max * NS)
            if wait:        # (under a nanosecond of rounding left: the level decides)
                return wait
        if self.level > size:
            return int((self.level - size) / self.avg * NS)
        return 0

    def account(self, units: float) -> None:
        self.level += units
        if self.max:
            self.burst_level += units


@dataclass
class ThrottleConfig:
    buckets: list[Bucket] = field(default_factory=lambda: [Bucket() for _ in BUCKETS])
    op_size: int = 0

    def enabled(self) -> bool:
        return any(b.avg for b in self.buckets)


class ConfigError(InvalidArgument):
    """A throttle configuration QEMU refuses."""


def config_from_limits(limits: dict[str, int], base: ThrottleConfig | None = None
                       ) -> ThrottleConfig:
    """ThrottleLimits (QMP) -> a configuration, checked as QEMU's
    throttle_limits_to_config and throttle_is_valid check it."""
    cfg = ThrottleConfig([Bucket(b.avg, b.max, b.burst_length) for b in base.buckets]
                         if base else [Bucket() for _ in BUCKETS], base.op_size if base else 0)
    for i, name in enumerate(BUCKETS):
        b = cfg.buckets[i]
        if name in limits:
            b.avg = limits[name] % (1 << 64)
        if f"{name}-max" in limits:
            b.max = limits[f"{name}-max"] % (1 << 64)
        if f"{name}-max-length" in limits:
            length = limits[f"{name}-max-length"]
            if not 0 <= length <= UINT_MAX:
                raise ConfigError(f"{name}-max-length value must be in the range "
                                  f"[0, {UINT_MAX}]")
            b.burst_length = length
    if "iops-size" in limits:
        cfg.op_size = limits["iops-size"] % (1 << 64)
    validate(cfg)
    return cfg


def validate(cfg: ThrottleConfig) -> None:
    b = cfg.buckets
    for total, rd, wr in ((0, 1, 2), (3, 4, 5)):
        if (b[total].avg and (b[rd].avg or b[wr].avg)) or \
                (b[total].max and (b[rd].max or b[wr].max)):
            raise ConfigError("bps/iops/max total values and read/write values cannot be "
                              "used at the same time")
    if cfg.op_size and not (b[3].avg or b[4].avg or b[5].avg):
        raise ConfigError("iops size requires an iops value to be set")
    for bkt in b:
        if bkt.avg > VALUE_MAX or bkt.max > VALUE_MAX:
            raise ConfigError(f"bps/iops/max values must be within [0, {VALUE_MAX}]")
        if not bkt.burst_length:
            raise ConfigError("the burst length cannot be 0")
        if bkt.burst_length > 1 and not bkt.max:
            raise ConfigError("burst length set without burst rate")
        if bkt.max and not bkt.avg:
            raise ConfigError("bps_max/iops_max require corresponding bps/iops values")
        if bkt.max and bkt.max < bkt.avg:
            raise ConfigError("bps_max/iops_max cannot be lower than bps/iops")


def limits_of(cfg: ThrottleConfig) -> dict[str, int]:
    """The configuration as ThrottleLimits (every member, as qom-get prints it)."""
    out: dict[str, int] = {}
    for name, b in zip(BUCKETS, cfg.buckets):
        out[name] = int(b.avg)
        out[f"{name}-max"] = int(b.max)
        out[f"{name}-max-length"] = b.burst_length
    out["iops-size"] = cfg.op_size
    return out


class ThrottleState:
    """The buckets of one group and when they last leaked."""

    def __init__(self, cfg: ThrottleConfig, now_ns: int = 0) -> None:
        self.cfg = cfg
        self.previous_leak = now_ns

    def configure(self, cfg: ThrottleConfig, now_ns: int) -> None:
        """New limits; the levels start empty (QEMU's throttle_config)."""
        self.cfg = cfg
        self.previous_leak = now_ns

    def _leak(self, now_ns: int) -> None:
        delta = now_ns - self.previous_leak
        if delta <= 0:
            return
        self.previous_leak = now_ns
        for b in self.cfg.buckets:
            b.leak(delta)

    def wait_ns(self, now_ns: int, is_write: bool) -> int:
        """How long a request of this direction must wait at ``now_ns`` (0: go now)."""
        self._leak(now_ns)
        return max(self.cfg.buckets[i].wait_ns() for i in DIRECTION[is_write])

    def account(self, is_write: bool, size: int) -> None:
        """A request of ``size`` bytes started."""
        units = 1.0
        if self.cfg.op_size and size > self.cfg.op_size:
            units = size / self.cfg.op_size
        bps_total, bps_dir, ops_total, ops_dir = DIRECTION[is_write]
        for i in (bps_total, bps_dir):
            self.cfg.buckets[i].account(size)
        for i in (ops_total, ops_dir):
            self.cfg.buckets[i].account(units)
