"""The filters a block job puts above the node it works on while it runs (QEMU's
``commit_top`` of ``block/commit.c`` and ``mirror_top`` of ``block/mirror.c``).

Both filter their ``backing`` child and change nothing of the data: the job's own
loop copies, and a mirror sees the guest's writes with a write observer on the
source.  They have no options of their own (``blockdev-add`` cannot make them; a job
does, with :func:`insert`), so they are named after the node they filter.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from blocklayer.core import graph
from blocklayer.core.driver import ChildRole, DriverInfo
from blocklayer.core.filter import FilterDriver
from blocklayer.core.node import BlockNode

if TYPE_CHECKING:
    from blocklayer.core.options import OpenFlags


class JobTopDriver(FilterDriver):
    """A pass-through over ``backing``."""

    data_child_role = ChildRole.BACKING
    file_child_key = "backing"
    #: how the job opens it (QEMU: commit_top without BDRV_O_RDWR, mirror_top with)
    read_only: ClassVar[bool] = False

    async def open(self, options: dict[str, Any], flags: "OpenFlags") -> None:
        await super().open(options, flags)
        self.node.filename = self.child.filename

    def get_info(self) -> DriverInfo:
        return self.child.driver.get_info()


class CommitTopDriver(JobTopDriver):
    format_name = "commit_top"
    read_only = True         # above a layer the commit only reads


class MirrorTopDriver(JobTopDriver):
    format_name = "mirror_top"


async def insert(cls: type[JobTopDriver], below: BlockNode, name: str | None) -> BlockNode:
    """Open a ``cls`` node over ``below`` and put it in ``below``'s place (its parents
    use the filter now)."""
    node = BlockNode(below.graph, cls, name=name,
                     flags=below.flags.with_(read_only=cls.read_only),
                     options={}, filename=below.filename)
    try:
        try:
            node.attach_child("backing", ChildRole.BACKING, below.ref())
        except BaseException:
            below.refcount -= 1         # not attached: the reference is not held
            raise
        await node.driver.open({}, node.flags)
        node.refresh_limits()
        await node.refresh_total_bytes()
        graph.insert_filter(below, node)
    except BaseException:
        await node.close(failed_open=True)
        raise
    return node
