"""I/O accounting per node (QEMU's BlockAcctStats), shaped for ``query-blockstats``."""
from __future__ import annotations


import time
from dataclasses import dataclass, field



@dataclass
class OpStats:
    bytes: int = 0
    ops: int = 0
    total_time_ns: int = 0
    failed: int = 0
    invalid: int = 0
    merged: int = 0


@dataclass
class BlockStats:
    read: OpStats = field(default_factory=OpStats)
    write: OpStats = field(default_factory=OpStats)
    flush: OpStats = field(default_factory=OpStats)
    discard: OpStats = field(default_factory=OpStats)
    zero: OpStats = field(default_factory=OpStats)
    #: copy offloading through this node, as source or target (also counted as a read
    #: on the source and a write on the target); not part of query-blockstats
    copy_range: OpStats = field(default_factory=OpStats)
    wr_highest_offset: int = 0
    last_access_ns: int = 0

    def start(self) -> int:
        return time.monotonic_ns()

    def done(self, kind: str, start_ns: int, nbytes: int, ok: bool = True) -> None:
        now = time.monotonic_ns()
        stats: OpStats = getattr(self, kind)
        if ok:
            stats.ops += 1
            stats.bytes += nbytes
            stats.total_time_ns += now - start_ns
        else:
            stats.failed += 1
        self.last_access_ns = now

    def invalid(self, kind: str) -> None:
        getattr(self, kind).invalid += 1

    def to_qmp(self) -> dict[str, object]:
        """The ``stats`` member of ``query-blockstats``."""
        idle = (time.monotonic_ns() - self.last_access_ns) if self.last_access_ns else None
        out: dict[str, object] = {
            "rd_bytes": self.read.bytes,
            "wr_bytes": self.write.bytes + self.zero.bytes,
            "zone_append_bytes": 0,
            "unmap_bytes": self.discard.bytes,
            "rd_operations": self.read.ops,
            "wr_operations": self.write.ops + self.zero.ops,
            "zone_append_operations": 0,
            "flush_operations": self.flush.ops,
            "unmap_operations": self.discard.ops,
            "rd_total_time_ns": self.read.total_time_ns,
            "wr_total_time_ns": self.write.total_time_ns + self.zero.total_time_ns,
            "zone_append_total_time_ns": 0,
            "flush_total_time_ns": self.flush.total_time_ns,
            "unmap_total_time_ns": self.discard.total_time_ns,
            "wr_highest_offset": self.wr_highest_offset,
            "rd_merged": 0, "wr_merged": 0, "zone_append_merged": 0, "unmap_merged": 0,
            "failed_rd_operations": self.read.failed,
            "failed_wr_operations": self.write.failed + self.zero.failed,
            "failed_zone_append_operations": 0,
            "failed_flush_operations": self.flush.failed,
            "failed_unmap_operations": self.discard.failed,
            "invalid_rd_operations": self.read.invalid,
            "invalid_wr_operations": self.write.invalid + self.zero.invalid,
            "invalid_zone_append_operations": 0,
            "invalid_flush_operations": self.flush.invalid,
            "invalid_unmap_operations": self.discard.invalid,
            "account_invalid": True,
            "account_failed": True,
            "timed_stats": [],
        }
        if idle is not None:
            out["idle_time_ns"] = idle
        return out
