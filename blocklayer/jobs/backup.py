"""The backup job (QEMU's ``block/backup.c``): copy the source as it was when the job
started to the target, while the guest keeps writing.

The point in time is kept by a ``copy-before-write`` filter put above the source (the
job's main node): a guest write first copies the old data of the clusters it touches.
The filter and the job share one :class:`~blocklayer.jobs.blockcopy.BlockCopy`, so a
cluster is copied once, by whoever comes first.  What is to be copied depends on
``sync``: ``full`` everything, ``top`` what the source itself holds, ``bitmap`` (and
``incremental``) what the bitmap marks, ``none`` nothing but what the filter copies
(the job runs until cancelled).  A bitmap given to the job is frozen while it runs (a
successor records the writes meanwhile) and afterwards synchronised as
``bitmap-mode`` says: ``on-success`` (cleared of what was copied if the job
succeeded), ``always`` (even if it failed), ``never``.
"""
from __future__ import annotations

import asyncio
import errno as _errno
from typing import TYPE_CHECKING, Any

from blocklayer.core import dirty
from blocklayer.core.errors import BlockError

from .job import BlockJob

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

    from .manager import JobManager


#: requests a backup keeps in flight (QEMU's x-perf max-workers default)
WORKERS = 64


class BackupJob(BlockJob):
    job_type = "backup"

    def __init__(self, manager: JobManager, job_id: str, source: BlockNode,
                 target: BlockNode, filter_node: BlockNode, sync: str,
                 bitmap: dirty.Handle | None = None, bitmap_mode: str | None = None,
                 on_source_error: str = "report", on_target_error: str = "report",
                 **kw: Any) -> None:
        super().__init__(manager, job_id, **kw)
        self.source, self.target = source, target
        self.sync = sync
        self.on_source_error, self.on_target_error = on_source_error, on_target_error
        self.hold_filter(filter_node, in_use=False)
        self.add_node(target)
        self.bcs = filter_node.driver.bcs  # type: ignore[attr-defined]
        self.bitmap, self.bitmap_mode = bitmap, bitmap_mode
        #: the frozen bitmap's successor (QEMU makes one whatever the mode)
        self.successor = dirty.Successor.create(source, bitmap) if bitmap is not None \
            else None
        self._init_copy_bitmap()

    def _init_copy_bitmap(self) -> None:
        """QEMU's backup_init_bcs_bitmap (sync=top's unallocated clusters are taken off
        when the job runs)."""
        copy = self.bcs.copy_bitmap
        if self.sync == "bitmap":
            assert self.bitmap is not None
            copy.set_range(0, self.bcs.size, False)
            dirty.merge_into(copy, self.bitmap)
        else:
            copy.set_range(0, self.bcs.size)
        self.progress_set_remaining(self.bcs.dirty_bytes())

    async def run(self) -> None:
        if self.sync == "top":
            await self._skip_unallocated()
        if self.sync == "none":
            while not self.is_cancelled:      # only the filter copies
                await self.sleep(1 << 62)
            return
        while True:
            error = await self._copy_pass()
            if error is None:
                if self.is_cancelled or not self.bcs.dirty_bytes():
                    break
                continue                    # what the filter's failures put back
            is_read = self.is_read_error(error)
            policy = self.on_source_error if is_read else self.on_target_error
            if self.error_action(policy, is_read, error.errno or _errno.EIO) == "report":
                raise error
            if self.is_cancelled:
                break
        self._progress()

    async def _copy_pass(self) -> BlockError | None:
        """One pass over the clusters still to copy, as QEMU's block-copy makes it: up
        to :data:`WORKERS` requests of at most 1 MiB in flight, started under the rate
        limit; after a failure no new one starts and those in flight finish."""
        c = self.bcs.cluster
        per_task = max((1 << 20) // c, 1)
        pool: set[asyncio.Task[int]] = set()
        error: BlockError | None = None
        cursor = 0

        def done(task: asyncio.Task[int]) -> None:
            nonlocal error
            pool.discard(task)
            exc = task.exception() if not task.cancelled() else None
            if isinstance(exc, BlockError) and error is None:
                error = exc
            self._progress()
        while error is None:
            await self.pause_point()
            if self.is_cancelled:
                break
            runs = self.bcs.dirty_runs(cursor)
            if not runs:
                break
            a, b = runs[0]
            b = min(b, a + per_task)
            cursor = b
            await self.throttle((b - a) * c)
            task = asyncio.ensure_future(self.bcs.copy(a * c, (b - a) * c))
            pool.add(task)
            task.add_done_callback(done)
            if len(pool) >= WORKERS:
                await asyncio.wait(set(pool), return_when=asyncio.FIRST_COMPLETED)
        if pool:
            await asyncio.wait(set(pool))
        await asyncio.sleep(0)               # the callbacks have run
        return error

    async def _skip_unallocated(self) -> None:
        offset, size = 0, self.bcs.size
        while offset < size:
            allocated, n = await self.source.is_allocated(offset, size - offset)
            n = max(n, 1)
            if not allocated:     # the whole clusters inside it are not copied
                c = self.bcs.cluster
                a = -(-offset // c) * c
                b = size if offset + n >= size else (offset + n) // c * c
                if b > a:
                    self.bcs.reset(a, b - a)
            offset += n
        self.progress_set_remaining(self.bcs.dirty_bytes())

    def _progress(self) -> None:
        self.current_progress = self.bcs.copied
        self.progress_set_remaining(self.bcs.dirty_bytes())

    def _sync_bitmap(self) -> None:
        """QEMU's backup_cleanup_sync_bitmap."""
        mode = self.bitmap_mode
        if self.successor is None:
            return
        ok = self.ret == 0
        if (ok or mode == "always") and mode != "never":
            bm = self.successor.abdicate()
        else:
            bm = self.successor.reclaim()
        self.successor = None
        if not ok and mode == "always":     # what was not copied is still dirty
            dirty.merge_into(bm, self.bcs.copy_bitmap)

    async def clean(self) -> None:
        self._sync_bitmap()
        await self.drop_filter()
