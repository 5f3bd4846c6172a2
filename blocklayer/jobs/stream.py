"""The stream job (QEMU's ``block/stream.c``): copy what the layers below ``top``
(down to above ``base``) provide into ``top``, then make ``base`` the backing file of
``top`` and let the layers in between go.

:class:`ChainCopyJob` is the loop stream and commit share: chunks of 512 KiB in
order, asked of block status, copied with the copy engine one chunk at a time, the
speed limit and a pause point between chunks, the error policy applied to a failed
chunk (``stop`` retries it after the user resumes).
"""
from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Any

from blocklayer.core import chain, graph
from blocklayer.core.errors import BlockError

from .copy import Chunk, CopyEngine, Kind
from .job import BlockJob

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

    from .manager import JobManager

CHUNK = 512 << 10       # QEMU's STREAM_CHUNK and COMMIT_BUFFER_SIZE


async def insert_cor_filter(top: BlockNode, bottom: BlockNode,
                            name: str | None) -> BlockNode:
    """Put a ``copy-on-read`` filter above ``top`` copying from down to ``bottom``
    (what QEMU's stream inserts, named ``name`` or automatically)."""
    options: dict[str, Any] = {"driver": "copy-on-read", "bottom": bottom.name}
    if name is not None:
        options["node-name"] = name
    node = await graph.open_filter_above(top, options)
    if name is None:        # an implicit node: QEMU names it by its child
        node.filename = top.filename
    return node


class ChainCopyJob(BlockJob):
    """Copy chunk by chunk from ``source`` into ``target``; subclasses say which."""

    def __init__(self, manager: JobManager, job_id: str, source: BlockNode,
                 target: BlockNode, on_error: str = "report", **kw: Any) -> None:
        super().__init__(manager, job_id, **kw)
        self.source, self.target = source, target
        self.on_error = on_error
        self.engine = CopyEngine(source, target, 0)

    async def wants_copy(self, offset: int, length: int) -> tuple[bool, int]:
        """Whether ``[offset, offset + n)`` is to be copied, and ``n`` (<= length)."""
        raise NotImplementedError

    async def length(self) -> int:
        return await self.source.length()

    async def copy(self, offset: int, length: int) -> bool:
        """Copy one chunk; False: nothing was copied, ask about it again."""
        chunk = Chunk(offset, length, Kind.DATA)
        await self.on_target(self.engine.write(chunk, await self.engine.payload(chunk)))
        return True

    async def run(self) -> None:
        end = await self.length()
        self.progress_set_remaining(end)
        first_error: BlockError | None = None
        offset = 0
        while offset < end:
            await self.throttle(0)
            await self.pause_point()
            if self.is_cancelled:
                return
            try:
                copy, n = await self.wants_copy(offset, min(CHUNK, end - offset))
                if copy and not await self.copy(offset, n):
                    continue
            except BlockError as exc:
                action = self.error_action(self.on_error, self.is_read_error(exc),
                                           exc.errno or _errno.EIO)
                if action == "report":
                    raise
                if action == "stop":
                    continue
                first_error = first_error or exc
                n, copy = min(CHUNK, end - offset), False
            self.progress_update(n)
            if copy:
                self.rate.calculate_delay(n)
            offset += n
        if first_error is not None:          # ignored errors still fail the job at the end
            raise first_error


class StreamJob(ChainCopyJob):
    """``block-stream``: ``top`` gets what the chain down to above ``base`` holds."""

    job_type = "stream"

    def __init__(self, manager: JobManager, job_id: str, top: BlockNode,
                 base: BlockNode | None, backing_file: str | None = None,
                 filter_node: BlockNode | None = None, **kw: Any) -> None:
        super().__init__(manager, job_id, top, top, **kw)
        self.top, self.base = top, base
        self.backing_file = backing_file
        self.below = top.filtered_backing()
        self.guest_writes: list[tuple[int, int]] = []
        self.freeze_chain(top, base)
        if filter_node is not None:      # copy-on-read, above top
            self.hold_filter(filter_node)
        self.add_node(top)
        for layer in chain.layers(self.below, base) if self.below is not None else ():
            self.add_node(layer)
        top.before_write.append(self._guest_write)

    async def _guest_write(self, node: BlockNode, offset: int, length: int) -> None:
        self.guest_writes.append((offset, length))

    async def wants_copy(self, offset: int, length: int) -> tuple[bool, int]:
        allocated, n = await self.top.is_allocated(offset, length)
        if allocated or self.below is None:
            return False, max(n, 1)
        depth, m = await self.below.is_allocated_above(self.base, offset, max(n, 1))
        if not depth and not m:
            return False, length
        return bool(depth), max(m, 1)

    async def copy(self, offset: int, length: int) -> bool:
        """Copy-on-read of one chunk.  A guest write to it while it was read wins: the
        chunk is not written and is asked about again (``top`` now has that part)."""
        self.guest_writes = []
        data = await self.engine.read(offset, length)
        if any(o < offset + length and offset < o + n for o, n in self.guest_writes):
            return False
        await self.top.write(offset, data)
        return True

    async def prepare(self) -> None:
        await self.drop_filter()       # it holds the chain that is about to change
        self.unfreeze_chains()
        if self.below is None:
            return
        if self.base is None:
            if not self.top.read_only:
                await chain.change_backing_file(self.top, None, None)
            chain.set_backing(self.top, None)
        else:
            await chain.drop_intermediate(self.top, self.base, self.backing_file)

    async def clean(self) -> None:
        await self.drop_filter()
        if self._guest_write in self.top.before_write:
            self.top.before_write.remove(self._guest_write)
