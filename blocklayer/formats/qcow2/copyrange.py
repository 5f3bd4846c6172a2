"""qcow2 copy offloading (QEMU's qcow2_co_copy_range_from / _to).

Source side: the guest range is mapped run by run; data clusters are passed on to the
data file at their host offset and unallocated ones to the backing file (within its
size).  Anything else (compressed or zero clusters, beyond the backing file) cannot be
offloaded: :class:`NotSupported`, and the caller reads and writes instead.

Target side: an allocating write whose data comes from elsewhere.  The clusters are
planned and allocated by the write path (:meth:`~.alloc.WritePath.plan_write`), so the
image gets the layout a write gives; copy-on-write parts are written as a write writes
them, the data is copied into the host runs, and the L2 entries are linked last, in the
order of a write: refcounts, then data, then L2.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.driver import ReqFlag
from ...core.errors import NotSupported
from .mapping import SC, Run

if TYPE_CHECKING:
    from ...core.node import BlockNode
    from .alloc import WritePath, _Cluster
    from .state import Qcow2State

_UNALLOCATED = (SC.UNALLOCATED_PLAIN, SC.UNALLOCATED_ALLOC)


class CopyRangePath:
    """Copy offloading for the image of state ``s``; the target side allocates through
    the write path ``writes``."""

    def __init__(self, state: Qcow2State, writes: WritePath) -> None:
        self.s = state
        self.writes = writes

    # ---- source side ------------------------------------------------------------------------
    async def copy_range_from(self, offset: int, dst: "BlockNode",
                              dst_offset: int, length: int, flags: ReqFlag) -> None:
        _refuse_own_chain(self.s.node, dst)
        cs = self.s.cluster_size
        start, end = offset - offset % cs, -(-(offset + length) // cs) * cs
        async with self.s.ranges.shared(start, end):      # as a read: no cluster is freed
            pos, stop = offset, offset + length
            while pos < stop:
                async with self.s.lock:
                    run = await self.s.mapping.lookup(pos, stop - pos)
                await self._copy_run_from(run, dst, dst_offset + pos - offset, flags)
                pos += run.length

    async def _copy_run_from(self, run: Run, dst: "BlockNode",
                             dst_offset: int, flags: ReqFlag) -> None:
        """Pass one mapped run on to where its data is stored."""
        if run.kind is SC.NORMAL and self.s.data_node is not None and run.host is not None:
            await self.s.data_node.copy_range(run.host, dst, dst_offset, run.length, flags)
            return
        backing = self.s.node.backing
        if (run.kind in _UNALLOCATED and backing is not None
                and run.offset + run.length <= backing.total_bytes):
            await backing.copy_range(run.offset, dst, dst_offset, run.length, flags)
            return
        raise NotSupported(f"qcow2: {run.kind.name.lower()} clusters cannot be offloaded")

    # ---- target side ------------------------------------------------------------------------
    async def copy_range_to(self, src: "BlockNode", src_offset: int,
                            offset: int, length: int, flags: ReqFlag) -> None:
        self.s.data_file()          # EIO now when the data file is not open
        pos, end = offset, offset + length
        while pos < end:
            n = min(end, self.s.table_end(pos)) - pos
            await self._copy_chunk_to(src, src_offset + pos - offset, pos, n)
            pos += n

    async def _copy_chunk_to(self, src: "BlockNode", src_offset: int,
                             offset: int, length: int) -> None:
        """The part of a copy under one L2 table: planned and allocated as a write,
        copied, then linked."""
        cs = self.s.cluster_size
        start, end = offset - offset % cs, -(-(offset + length) // cs) * cs
        async with self.s.ranges.exclusive(start, end):
            async with self.s.lock:
                plan = await self.writes.plan_write(offset, length)
            try:
                await self._write_cow(plan)
                await self._copy_into_runs(src, src_offset, offset, plan)
            except BaseException:
                await self.writes.unallocate(plan)
                raise
            if any(c.update for c in plan):
                async with self.s.lock:
                    await self.writes.link_l2(offset, plan)

    async def _write_cow(self, plan: list["_Cluster"]) -> None:
        """The parts of the planned clusters that the copy does not cover keep what the
        guest sees there now (old cluster, backing file or zeroes)."""
        for c in plan:
            for a, b in c.cow:
                buf = await self.s.read_unlocked(c.guest + a, b - a)
                await self.s.data_overlap_check(c.host + a, b - a)
                await self.s.data_file().write(c.host + a, buf)

    async def _copy_into_runs(self, src: "BlockNode", src_offset: int,
                              offset: int, plan: list["_Cluster"]) -> None:
        """Each run of host-contiguous clusters is one copy from ``src``."""
        cs = self.s.cluster_size
        i = 0
        while i < len(plan):
            j = i + 1
            while j < len(plan) and plan[j].host == plan[j - 1].host + cs:
                j += 1
            first, last = plan[i], plan[j - 1]
            g0, g1 = first.guest + first.w_start, last.guest + last.w_end
            host = first.host + first.w_start
            await self.s.data_overlap_check(host, g1 - g0)
            await self.s.data_file().copy_range_to(src, src_offset + g0 - offset, host, g1 - g0)
            i = j


def _refuse_own_chain(node: "BlockNode", dst: "BlockNode") -> None:
    """A copy into this image or one below it would wait for the guest range held here
    while its data is read: not offloaded."""
    layer: BlockNode | None = node
    while layer is not None:
        if layer is dst:
            raise NotSupported(f"qcow2: a copy from '{node.name}' into its own chain "
                               f"is not offloaded")
        layer = layer.filtered_backing()
