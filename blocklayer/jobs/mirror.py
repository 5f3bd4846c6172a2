"""The mirror job (QEMU's ``block/mirror.c``) and active commit, which is a mirror
from the active layer into its base.

The source's writes are tracked with a write observer in a dirty map of granules.
The job copies dirty runs (at most ``buf_size`` bytes each, cleared before they are
read, so a write meanwhile makes them dirty again) until none is left, then reports
READY and keeps copying what new writes dirty.  ``job-complete`` (or a soft
``block-job-cancel``) makes it converge once more, drained; on complete the source's
parents are moved to the target (``core/graph.replace_node``); a soft cancel leaves
the target a consistent copy and the graph as it was.
"""
from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Any

from blocklayer.core import dirty, graph
from blocklayer.core.driver import ReqFlag
from blocklayer.core.errors import BlockError, InvalidArgument

from .copy import CopyEngine
from .job import BlockJob

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

    from .manager import JobManager

DEFAULT_BUF_SIZE = 16 << 20
DEFAULT_GRANULARITY = 64 << 10


def check_mirror_args(source: BlockNode, target: BlockNode, sync: str,
                      granularity: int | None, buf_size: int | None,
                      copy_mode: str | None) -> dict[str, Any]:
    """blockdev-mirror's checks (QEMU's texts); the job's keyword options."""
    if sync not in ("full", "top", "none"):
        raise InvalidArgument(f"Sync mode '{sync}' not supported")
    if granularity is not None:
        if granularity < 512 or granularity > 64 << 20:
            raise InvalidArgument("Parameter 'granularity' expects a value in range "
                                  "[512B, 64MB]")
        if granularity & (granularity - 1):
            raise InvalidArgument("Granularity must be a power of 2")
    if buf_size is not None and buf_size < 0:
        raise InvalidArgument("buf-size must be at least 0")
    if source is target:
        raise InvalidArgument("Can't mirror node into itself")
    source.check_op("mirror-source")
    target.check_op("mirror-target")
    return {"sync": sync, "granularity": granularity or _default_granularity(target),
            "buf_size": buf_size or DEFAULT_BUF_SIZE, "copy_mode": copy_mode or "background"}


def _default_granularity(target: BlockNode) -> int:
    try:
        cluster = target.driver.get_info().cluster_size
    except BlockError:
        cluster = 0
    return min(max(cluster, 4096), DEFAULT_GRANULARITY) if cluster else DEFAULT_GRANULARITY


class DirtyMap:
    """Dirty granules of a device of ``length`` bytes."""

    def __init__(self, length: int, granularity: int) -> None:
        self.granularity = granularity
        self.length = length
        self.bits = bytearray(-(-length // granularity))
        self.count = 0

    def set(self, offset: int, length: int) -> None:
        g = self.granularity
        for i in range(offset // g, min(-(-(offset + length) // g), len(self.bits))):
            if not self.bits[i]:
                self.bits[i] = 1
                self.count += 1

    def grow(self, length: int) -> None:
        self.length = length
        self.bits.extend(bytes(max(-(-length // self.granularity) - len(self.bits), 0)))

    def take(self, start: int, limit: int) -> tuple[int, int] | None:
        """Clear and return the first dirty run at or after granule ``start`` (wrapping),
        at most ``limit`` bytes."""
        if not self.count:
            return None
        i = self.bits.find(1, start)
        if i < 0:
            i = self.bits.find(1)
        j = self.bits.find(0, i)
        j = len(self.bits) if j < 0 else j
        j = min(j, i + max(limit // self.granularity, 1))
        self.bits[i:j] = bytes(j - i)
        self.count -= j - i
        off = i * self.granularity
        return off, min(j * self.granularity, self.length) - off

    @property
    def dirty_bytes(self) -> int:
        return self.count * self.granularity


class MirrorBitmap:
    """The mirror's :class:`DirtyMap` as the unnamed bitmap QEMU's mirror keeps on its
    source (shown by query-named-block-nodes while the job runs)."""

    name = ""
    enabled = True
    persistent = inconsistent = busy = readonly = False

    def __init__(self, dirty: DirtyMap) -> None:
        self.dirty = dirty

    @property
    def granularity(self) -> int:
        return self.dirty.granularity

    def set_range(self, offset: int, length: int, value: bool = True) -> None:
        if value:
            self.dirty.set(offset, length)

    def count(self) -> int:
        return self.dirty.count

    def packed(self) -> bytes:
        return bytes(self.dirty.bits)


class MirrorJob(BlockJob):
    job_type = "mirror"
    can_complete = True

    def __init__(self, manager: JobManager, job_id: str, source: BlockNode,
                 target: BlockNode, sync: str = "full", granularity: int = DEFAULT_GRANULARITY,
                 buf_size: int = DEFAULT_BUF_SIZE, copy_mode: str = "background",
                 on_source_error: str = "report", on_target_error: str = "report",
                 replaces: BlockNode | None = None, filter_node: BlockNode | None = None,
                 **kw: Any) -> None:
        super().__init__(manager, job_id, **kw)
        if filter_node is not None:      # mirror_top, above the source
            self.hold_filter(filter_node, in_use=False)
        self.replaces = replaces
        self.source, self.target = source, target
        self.sync, self.granularity, self.buf_size = sync, granularity, buf_size
        self.copy_mode = copy_mode
        self.on_source_error, self.on_target_error = on_source_error, on_target_error
        #: what the target shares with the source (not copied): sync=top/none
        self.base = None if sync == "full" else source.filtered_backing()
        self.dirty = DirtyMap(0, granularity)
        self.bitmap = MirrorBitmap(self.dirty)
        dirty.add_internal(source, self.bitmap)
        self.engine = CopyEngine(source, target, 0)
        self.pivot = False
        self.add_node(source)
        self.add_node(target)
        self.use_node(target)            # QEMU's s->target BlockBackend
        source.write_observers.append(self._observe)

    def _observe(self, node: BlockNode, offset: int, length: int) -> None:
        self.dirty.set(offset, length)
        self.progress_increase_remaining(length)
        self.wake()

    # ---- the copy ------------------------------------------------------------------------
    async def run(self) -> None:
        length = await self.source.length()
        self.dirty.grow(length)
        if await self.target.length() < length:
            await self.target.truncate(length)
        if self.sync != "none":
            await self._dirty_initial(length)
        self.progress_set_remaining(self.dirty.dirty_bytes)
        cursor = 0
        while True:
            await self.throttle(0)
            await self.pause_point()
            if self.is_cancelled:
                return
            run = self.dirty.take(cursor, self.buf_size)
            if run is not None:
                cursor = (run[0] + run[1]) // self.granularity
                await self._copy_run(*run)
                continue
            if not self.is_ready:
                self.set_ready()
            if self.should_complete or self.cancelled:
                async with self.source.drained():
                    if self.dirty.count:
                        continue
                    self.pivot = self.should_complete and not self.cancelled
                    return
            await self._yield()

    async def _dirty_initial(self, length: int) -> None:
        offset = 0
        while offset < length:
            n = min(length - offset, 1 << 30)
            depth, n = await self.source.is_allocated_above(self.base, offset, n)
            n = max(n, 1)
            if depth or self.sync == "full":
                self.dirty.set(offset, n)
            offset += n

    async def _copy_run(self, offset: int, length: int) -> None:
        """Copy one dirty run, piece by piece as block status cuts it."""
        end = offset + length
        while offset < end:
            try:
                n = await self._copy_piece(offset, end - offset)
            except BlockError as exc:
                self.dirty.set(offset, end - offset)
                is_read = self.is_read_error(exc)
                policy = self.on_source_error if is_read else self.on_target_error
                if self.error_action(policy, is_read, exc.errno or _errno.EIO) == "report":
                    raise
                return
            self.progress_update(n)
            self.rate.calculate_delay(n)
            offset += n

    async def _copy_piece(self, offset: int, length: int) -> int:
        st = await self.source.block_status_above(self.base, offset, length, True)
        length = max(min(st.length, length), 1)
        if st.zero:
            await self.on_target(self.target.write_zeroes(offset, length, ReqFlag.MAY_UNMAP))
        else:
            data = await self.engine.read(offset, length)
            await self.on_target(self.target.write(offset, data))
        return length

    # ---- the end -------------------------------------------------------------------------
    def on_cancel(self, force: bool) -> bool:
        return force or not self.is_ready

    async def prepare(self) -> None:
        if self.pivot:
            await self.target.flush()
            await self.drop_filter()
            self.do_pivot()

    def do_pivot(self) -> None:
        """The source's parents use the target now (blockdev-mirror leaves the target's
        backing chain as the user made it, as QEMU does)."""
        graph.replace_node(self.replaces or self.source, self.target)

    async def clean(self) -> None:
        await self.drop_filter()
        dirty.remove_internal(self.source, self.bitmap)
        if self._observe in self.source.write_observers:
            self.source.write_observers.remove(self._observe)


class ActiveCommitJob(MirrorJob):
    """``block-commit`` of the active layer: mirror ``source`` into its base ``target``
    (only what lies above it), READY when in sync, the base takes over on complete."""

    job_type = "commit"

    def __init__(self, manager: JobManager, job_id: str, source: BlockNode,
                 target: BlockNode, **kw: Any) -> None:
        super().__init__(manager, job_id, source, target, sync="top",
                         granularity=DEFAULT_GRANULARITY, **kw)
        self.base = target
        self.freeze_chain(source, target)

    async def run(self) -> None:
        await self.make_writable(self.target)
        await super().run()

    def do_pivot(self) -> None:
        self.unfreeze_chains()
        if self.target in self.reopened:    # the base is the active layer now
            self.reopened.remove(self.target)
        graph.replace_node(self.source, self.target)
