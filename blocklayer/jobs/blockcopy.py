"""Copying clusters once, from a source to a target, whoever asks first (QEMU's
``block/block-copy.c``): the copy-before-write filter asks before a guest write lands
on a cluster, the backup job asks for every cluster in turn.

The state is a *copy bitmap* of clusters still to copy.  :meth:`BlockCopy.copy` takes
the dirty clusters of a range off the bitmap, marks them in flight and copies them with
the copy engine (zero runs as write-zeroes); a second caller of a cluster in flight
waits for that copy instead of copying again.  A failed copy puts its clusters back.
The bitmaps are :class:`~blocklayer.core.dirty.DirtyBitmap` s without a name, shown by
queries on the source node as QEMU shows block-copy's.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from blocklayer.core import dirty
from blocklayer.core.driver import ReqFlag
from blocklayer.core.errors import BlockError

from .copy import Chunk, CopyEngine, Kind

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

#: QEMU's BLOCK_COPY_CLUSTER_SIZE_DEFAULT
DEFAULT_CLUSTER = 64 << 10
#: the longest run one request copies (QEMU's BLOCK_COPY_MAX_BUFFER)
MAX_RUN = 1 << 20


def cluster_size(target: "BlockNode") -> int:
    """QEMU's block_copy_calculate_cluster_size: the target's cluster, at least 64 KiB
    when the target has a backing file or no cluster size of its own."""
    own = target.driver.get_info().cluster_size or 0
    if not own:
        return DEFAULT_CLUSTER
    return max(own, DEFAULT_CLUSTER) if target.backing is not None else own


def bitmap(size: int, granularity: int, full: bool) -> dirty.DirtyBitmap:
    """An unnamed, disabled bitmap (set all over when ``full``)."""
    bm = dirty.DirtyBitmap("", granularity.bit_length() - 1, size, enabled=False)
    if full:
        bm.set_range(0, size)
    return bm


class BlockCopy:
    def __init__(self, source: "BlockNode", target: "BlockNode") -> None:
        self.source, self.target = source, target
        self.cluster = cluster_size(target)
        self.size = source.total_bytes
        self.copy_bitmap = bitmap(self.size, self.cluster, True)
        self.engine = CopyEngine(source, target, 0)
        self.inflight: dict[int, asyncio.Future[None]] = {}
        #: bytes copied (the backup job's progress counts its own)
        self.copied = 0
        dirty.add_internal(source, self.copy_bitmap)

    def close(self) -> None:
        dirty.remove_internal(self.source, self.copy_bitmap)

    # ---- the bitmap --------------------------------------------------------------------
    def clusters(self, offset: int, length: int) -> tuple[int, int]:
        c = self.cluster
        return offset // c, -(-min(offset + length, self.size) // c)

    def dirty_runs(self, first: int = 0) -> list[tuple[int, int]]:
        """The runs of clusters still to copy, from cluster ``first`` on."""
        return list(self.copy_bitmap.bits.runs(first))

    def dirty_bytes(self) -> int:
        return self.copy_bitmap.count() * self.cluster

    def reset(self, offset: int, length: int) -> None:
        """Nothing of the range is to be copied (any more)."""
        a, b = self.clusters(offset, length)
        self.copy_bitmap.bits.set(a, b, False)

    def is_dirty(self, cluster: int) -> bool:
        return bool(self.copy_bitmap.bits.b[cluster >> 3] >> (cluster & 7) & 1)

    # ---- copying -----------------------------------------------------------------------
    async def copy(self, offset: int, length: int) -> int:
        """Copy what of the clusters of the range is still to copy (or wait for the
        copy in flight of it).  Returns the bytes this call copied."""
        a, b = self.clusters(offset, length)
        done = 0
        i = a
        while i < b:
            pending = self.inflight.get(i)
            if pending is not None:
                await asyncio.shield(pending)
                continue             # failed copies put their clusters back: look again
            if not self.is_dirty(i):
                i += 1
                continue
            j = i + 1
            limit = i + max(MAX_RUN // self.cluster, 1)
            while j < b and j < limit and self.is_dirty(j) and j not in self.inflight:
                j += 1
            done += await self._copy_run(i, j)
            i = j
        return done

    async def _copy_run(self, a: int, b: int) -> int:
        c = self.cluster
        self.copy_bitmap.bits.set(a, b, False)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for i in range(a, b):
            self.inflight[i] = fut
        offset, end = a * c, min(b * c, self.size)
        try:
            pos = offset
            while pos < end:
                st = await self.source.block_status_above(None, pos, end - pos)
                n = max(min(st.length, end - pos), 1)
                chunk = Chunk(pos, n, Kind.ZERO if st.zero else Kind.DATA)
                payload = None if st.zero else await self.engine.payload(chunk)
                await asyncio.sleep(0)    # a read served from the page cache did not wait:
                #                           let the other copies in flight take their turn
                try:
                    if st.zero:
                        await self.target.write_zeroes(pos, n, ReqFlag.MAY_UNMAP)
                    else:
                        await self.engine.write(chunk, payload)
                except BlockError as exc:
                    exc.job_target = True  # type: ignore[attr-defined]
                    raise
                pos += n
        except BaseException:
            self.copy_bitmap.bits.set(a, b, True)
            raise
        finally:
            for i in range(a, b):
                self.inflight.pop(i, None)
            fut.set_result(None)
        self.copied += end - offset
        return end - offset
