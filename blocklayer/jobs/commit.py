"""The commit job for an intermediate layer (QEMU's ``block/commit.c``): copy what
``top`` and the layers down to above ``base`` hold into ``base``, then make ``base``
the backing file of ``top``'s overlay and let the committed layers go.  (Committing
the active layer is a mirror: :mod:`blocklayer.jobs.mirror`.)"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blocklayer.core import chain, graph
from blocklayer.core.errors import InvalidArgument

from .stream import ChainCopyJob

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

    from .manager import JobManager


class CommitJob(ChainCopyJob):
    job_type = "commit"

    def __init__(self, manager: JobManager, job_id: str, active: BlockNode,
                 top: BlockNode, base: BlockNode, backing_file: str | None = None,
                 filter_node: BlockNode | None = None, **kw: Any) -> None:
        overlay = chain.find_overlay(active, top)
        if overlay is not None and overlay is filter_node:
            overlay = chain.find_overlay(active, filter_node)
        if overlay is None:
            raise InvalidArgument(f"'{top.name}' has no overlay in the chain of '{active.name}'")
        super().__init__(manager, job_id, top, base, **kw)
        self.active, self.top, self.base, self.overlay = active, top, base, overlay
        self.backing_file = backing_file
        #: the commit_top filter above ``top`` while the job runs (not held: QEMU's
        #: commit job does not hold it either)
        self.commit_top = filter_node
        self.freeze_chain(overlay, base)
        self.add_node(active)            # the job's main node, as QEMU's
        for layer in chain.layers(top, base):
            self.add_node(layer)
        self.add_node(base)
        for node in (active, top, base):  # QEMU's job, s->top and s->base BlockBackends
            self.use_node(node)

    async def run(self) -> None:
        for node in (self.base, self.overlay):
            await self.make_writable(node)
        length, base_len = await self.top.length(), await self.base.length()
        if base_len < length:
            await self.base.truncate(length)
        await super().run()

    async def wants_copy(self, offset: int, length: int) -> tuple[bool, int]:
        depth, n = await self.top.is_allocated_above(self.base, offset, length)
        return bool(depth), max(n, 1)

    async def prepare(self) -> None:
        self.unfreeze_chains()
        await chain.drop_intermediate(self.overlay, self.base, self.backing_file)
        self.commit_top = None           # it went with the layers committed

    async def clean(self) -> None:
        await super().clean()
        if self.commit_top is not None and not self.commit_top.closed:
            self.unfreeze_chains()
            node, self.commit_top = self.commit_top, None
            await graph.drop_filter(node)
