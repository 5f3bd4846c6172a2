"""Reopen transactions: change the options or read-only state of several nodes at once.

Every node in the queue prepares (its driver checks it can switch and makes what it
needs, e.g. a new file descriptor); if all succeed, all commit, otherwise everything
prepared aborts and nothing changed (QEMU's bdrv_reopen_multiple).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import BlockError, PermissionConflict
from .node import BlockNode
from .options import parse_bool


@dataclass
class ReopenEntry:
    node: BlockNode
    options: dict[str, Any] = field(default_factory=dict)
    read_only: bool | None = None
    state: Any = None
    prepared: bool = False


class ReopenQueue:
    """``q = ReopenQueue(); q.add(node, read_only=False); await q.run()``"""

    def __init__(self) -> None:
        self.entries: list[ReopenEntry] = []

    def add(self, node: BlockNode, options: dict[str, Any] | None = None,
            read_only: bool | None = None, with_children: bool = True) -> None:
        opts = dict(options or {})
        if "read-only" in opts:
            read_only = parse_bool(opts.pop("read-only"), "read-only")
        if any(e.node is node for e in self.entries):
            return
        self.entries.append(ReopenEntry(node, opts, read_only))
        if with_children and read_only is not None:
            for edge in node.children.values():
                if edge.role.value in ("file", "data-file"):
                    self.add(edge.node, None, read_only, with_children)

    async def run(self) -> None:
        try:
            for entry in self.entries:
                await self._prepare(entry)
        except BaseException:
            for entry in reversed(self.entries):
                if entry.prepared:
                    await entry.node.driver.reopen_abort(entry.state)
            raise
        old_flags = {id(e.node): e.node.flags for e in self.entries}
        for entry in self.entries:
            await entry.node.driver.reopen_commit(entry.state)
            entry.node.refresh_limits()
            if entry.read_only is not None:
                entry.node.flags = entry.node.flags.with_(read_only=entry.read_only)
            entry.node.options.update(entry.options)
        try:
            for entry in self.entries:
                entry.node.refresh_perms()
        except BlockError:
            for entry in self.entries:
                entry.node.flags = old_flags[id(entry.node)]
            raise

    async def _prepare(self, entry: ReopenEntry) -> None:
        node = entry.node
        ro = node.read_only if entry.read_only is None else entry.read_only
        if not ro and node.read_only:
            node.check_op("reopen-rw") if node.op_blockers.get("reopen-rw") else None
        async with node.drained():
            entry.state = await node.driver.reopen_prepare(entry.options, ro)
        entry.prepared = True


async def reopen(node: BlockNode, options: dict[str, Any] | None = None,
                 read_only: bool | None = None) -> None:
    """Reopen one node (and its file children) in one transaction."""
    queue = ReopenQueue()
    queue.add(node, options, read_only)
    await queue.run()


async def reopen_set_read_only(node: BlockNode, read_only: bool) -> None:
    if node.flags.force_share and not read_only:
        raise PermissionConflict("Cannot reopen read-write: force-share=on is set")
    await reopen(node, read_only=read_only)
