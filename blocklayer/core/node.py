"""Block nodes and the edges between them (QEMU's BlockDriverState and BdrvChild).

A :class:`BlockGraph` owns the nodes by name.  A :class:`BlockNode` has one driver
instance, children (each a :class:`Child` edge with a role and permissions), parents,
open flags and per-node state that the request path uses (tracked requests, drain
counters, accounting, the write threshold, before-write notifiers).  The request
entry points (``read``, ``write``, ...) are defined in :mod:`blocklayer.core.io` and bound
here so there is exactly one path every request goes through.
"""
from __future__ import annotations

import asyncio
import random
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from . import io as _io
from .accounting import BlockStats
from .driver import BlockDriver, Cap, ChildRole, Limits, Perm
from .errors import InvalidArgument, NodeNotFound, PermissionConflict
from .options import OpenFlags

if TYPE_CHECKING:
    from .io import Tracked

BeforeWrite = Callable[["BlockNode", int, int], Awaitable[None]]
WriteObserver = Callable[["BlockNode", int, int], None]
ThresholdHandler = Callable[["BlockNode", int, int], None]


class BlockGraph:
    """All the nodes of one program: names are unique here, auto names are made here."""

    def __init__(self) -> None:
        self.nodes: dict[str, BlockNode] = {}
        self._counter = 0
        self.event_handlers: list[Callable[[str, dict[str, Any]], None]] = []

    def generate_name(self) -> str:
        self._counter += 1
        return f"#block{self._counter}{random.randrange(100):02d}"

    def add(self, node: "BlockNode") -> None:
        if node.name in self.nodes:
            raise InvalidArgument(f"Duplicate nodes with node-name='{node.name}'")
        self.nodes[node.name] = node

    def remove(self, node: "BlockNode") -> None:
        if self.nodes.get(node.name) is node:
            del self.nodes[node.name]

    def find(self, name: str) -> "BlockNode":
        try:
            return self.nodes[name]
        except KeyError:
            raise NodeNotFound(f"Cannot find node '{name}'") from None

    def emit(self, event: str, data: dict[str, Any]) -> None:
        for handler in list(self.event_handlers):
            handler(event, data)


@dataclass(eq=False)
class Child:
    """An edge parent -> child with the permissions the parent holds on the child."""

    name: str
    role: ChildRole
    parent: "BlockNode | None"
    node: "BlockNode"
    perm: Perm = Perm.NONE
    shared: Perm = Perm.ALL
    frozen: bool = False


@dataclass
class NodeState:
    """Mutable per-node request-path state."""

    tracked: list["Tracked"] = field(default_factory=list)
    serial: int = 0
    #: how many of ``tracked`` are serialising (0: the synchronous fast paths may run)
    serialising: int = 0
    in_flight: int = 0
    quiesce: int = 0
    idle: asyncio.Event | None = None
    resumed: asyncio.Event | None = None


#: what a node may still do while it is the backing file of another
BACKING_ALLOWED_OPS = frozenset({"commit-target", "stream", "backup-source", "backup-target"})


class BlockNode:
    """One node of the graph."""

    def __init__(self, graph: BlockGraph, driver_cls: type[BlockDriver], *,
                 name: str | None, flags: OpenFlags, options: dict[str, Any],
                 filename: str = "") -> None:
        self.graph = graph
        self.name = name or graph.generate_name()
        self.auto_named = name is None
        self.flags = flags
        self.options = dict(options)        # the full flat options it was opened with
        self.filename = filename
        self.driver: BlockDriver = driver_cls(self)
        self.children: dict[str, Child] = {}
        self.parents: list[Child] = []
        self.users: list[tuple[object, Perm, Perm]] = []   # holders outside the graph
        self.refcount = 1
        self.closed = False
        self.closing = False
        self.total_bytes = 0
        self.limits = Limits()                 # cached driver limits (refresh_limits)
        #: the driver's ``capabilities()`` (a :class:`Cap`; the class's declaration
        #: until open), cached by refresh_limits as a plain int: the request path tests
        #: one bit in C (``caps & CAP_FUA``)
        self.caps = int(driver_cls.caps)
        self.allow_write_beyond_eof = False    # image creation grows its file freely
        self.state = NodeState()
        self.stats = BlockStats()
        self.before_write: list[BeforeWrite] = []
        self.write_observers: list[WriteObserver] = []
        #: called with True when a drained section over this node begins, False when it
        #: ends (a block job pauses while a node it works on is drained)
        self.drain_handlers: list[Callable[[bool], None]] = []
        self.write_threshold = 0
        self.on_write_threshold: ThresholdHandler | None = None
        self.on_read_error = "report"
        self.on_write_error = "enospc"
        self.op_blockers: dict[str, list[tuple[object, str]]] = {}
        self.backing_file: str | None = None     # as recorded in the image
        self.backing_format: str | None = None
        graph.add(self)

    def __repr__(self) -> str:
        return f"<BlockNode {self.name} {self.driver.format_name} {self.filename!r}>"

    # ---- properties -------------------------------------------------------------------
    @property
    def read_only(self) -> bool:
        return self.flags.read_only

    @property
    def format_name(self) -> str:
        return self.driver.format_name

    @property
    def file(self) -> "BlockNode | None":
        return self.child_by_role(ChildRole.FILE)

    @property
    def backing(self) -> "BlockNode | None":
        child = self.children.get("backing")
        return child.node if child else None

    def child_by_role(self, role: ChildRole) -> "BlockNode | None":
        for child in self.children.values():
            if child.role is role:
                return child.node
        return None

    @property
    def data_child(self) -> "BlockNode | None":
        """Where guest data flows for a filter (``file`` or ``backing``)."""
        return self.child_by_role(self.driver.data_child_role)

    def filtered_backing(self) -> "BlockNode | None":
        """The next layer of the chain: the data child of a filter, else ``backing``."""
        if self.driver.is_filter:
            return self.data_child
        return self.backing

    def filtered(self) -> "BlockNode":
        """Skip implicit filter nodes downwards (raw without offset counts as data)."""
        node = self
        while node.driver.is_filter and node.data_child is not None:
            node = node.data_child
        return node

    def refresh_limits(self) -> Limits:
        """Ask the driver for its limits and capabilities again (after open, reopen or
        a child change)."""
        self.limits = self.driver.limits()
        self.caps = int(self.driver.capabilities())
        return self.limits

    def can(self, cap: Cap) -> bool:
        """Whether the node has every capability in ``cap`` (tools; not per request)."""
        return self.caps & cap == cap

    # ---- children and permissions --------------------------------------------------------
    def attach_child(self, name: str, role: ChildRole, child: "BlockNode") -> Child:
        if name in self.children:
            raise InvalidArgument(f"Node '{self.name}' already has a child '{name}'")
        if self._is_ancestor_of(child):
            raise InvalidArgument(f"Making '{child.name}' a child of '{self.name}' would create a cycle")
        edge = Child(name, role, self, child)
        self.children[name] = edge
        child.parents.append(edge)
        try:
            self.refresh_perms()
        except BaseException:
            del self.children[name]
            child.parents.remove(edge)
            raise
        return edge

    def detach_child(self, name: str, unref: bool = True) -> "BlockNode":
        edge = self.children.pop(name)
        edge.node.parents.remove(edge)
        edge.node.refresh_perms()
        if unref:
            edge.node.unref_later()
        return edge.node

    def _is_ancestor_of(self, node: "BlockNode") -> bool:
        """Would ``node`` as a child of ``self`` make a cycle?"""
        return node is self or node in self.ancestors()

    def descendants(self) -> list["BlockNode"]:
        seen: list[BlockNode] = []
        stack = [c.node for c in self.children.values()]
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.append(n)
                stack.extend(c.node for c in n.children.values())
        return seen

    def ancestors(self) -> list["BlockNode"]:
        seen: list[BlockNode] = []
        stack = [p.parent for p in self.parents if p.parent is not None]
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.append(n)
                stack.extend(p.parent for p in n.parents if p.parent is not None)
        return seen

    def cumulative_perms(self) -> tuple[Perm, Perm]:
        perm, shared = Perm.NONE, Perm.ALL
        for edge in self.parents:
            perm |= edge.perm
            shared &= edge.shared
        for _owner, p, s in self.users:
            perm |= p
            shared &= s
        return perm, shared

    def refresh_perms(self) -> None:
        """Recompute what this node holds and needs, top-down, and apply it (locks)."""
        perm, shared = self.cumulative_perms()
        if self.read_only and any(e.parent is not None and not e.parent.read_only and
                                  e.perm & (Perm.WRITE | Perm.WRITE_UNCHANGED)
                                  for e in self.parents):
            # a writable parent node that writes here (a copy-on-read filter over a
            # read-only node); what users outside the graph hold is kept across a
            # reopen, and so what their read-only node asks of its children
            raise PermissionConflict("Block node is read-only")
        self.driver.check_perm(perm, shared)
        self.driver.set_perm(perm, shared)
        for edge in self.children.values():
            edge.perm, edge.shared = self.driver.child_perm(edge.role, perm, shared)
            edge.node.refresh_perms()

    def add_user(self, owner: object, perm: Perm, shared: Perm) -> None:
        """Record a holder from outside the graph (a tool, an export, a job)."""
        self.users.append((owner, perm, shared))
        try:
            self.refresh_perms()
        except BaseException:
            self.users.pop()
            raise

    def remove_user(self, owner: object) -> None:
        self.users = [u for u in self.users if u[0] is not owner]
        if not self.closed:
            self.refresh_perms()

    # ---- op blockers ---------------------------------------------------------------------
    def block_op(self, op: str, owner: object, reason: str) -> None:
        self.op_blockers.setdefault(op, []).append((owner, reason))

    def unblock_op(self, op: str, owner: object) -> None:
        left = [b for b in self.op_blockers.get(op, []) if b[0] is not owner]
        if left:
            self.op_blockers[op] = left
        else:
            self.op_blockers.pop(op, None)

    def block_all_ops(self, owner: object, reason: str, ops: tuple[str, ...]) -> None:
        for op in ops:
            self.block_op(op, owner, reason)

    def unblock_all_ops(self, owner: object) -> None:
        for op in list(self.op_blockers):
            self.unblock_op(op, owner)

    def check_op(self, op: str) -> None:
        """Refuse ``op`` if something blocks it: the latest blocker speaks (as QEMU's
        list, newest first); then a parent whose backing this node is, which blocks
        all but commit-target, stream and backup (QEMU's backing_blocker)."""
        blockers = self.op_blockers.get(op)
        if blockers:
            raise PermissionConflict(f"Node '{self.name}' is busy: {blockers[-1][1]}")
        if op not in BACKING_ALLOWED_OPS:
            for edge in self.parents:
                if edge.role is ChildRole.BACKING and edge.parent is not None:
                    raise PermissionConflict(f"Node '{self.name}' is busy: node is used as "
                                             f"backing hd of '{edge.parent.name}'")

    # ---- drain ---------------------------------------------------------------------------
    @asynccontextmanager
    async def drained(self) -> AsyncIterator[None]:
        """Wait for in-flight requests on this node, its parents and children, and hold
        new ones from outside until the section ends.  Requests made inside the section by
        its owner pass."""
        nodes = [self, *self.ancestors(), *self.descendants()]
        for n in nodes:
            n.state.quiesce += 1
            if n.state.resumed is not None:
                n.state.resumed.clear()
            for handler in list(n.drain_handlers):
                handler(True)
        token = _io.DRAIN_OWNER.set(asyncio.current_task())
        try:
            for n in nodes:
                await n.wait_idle()
            yield
        finally:
            _io.DRAIN_OWNER.reset(token)
            for n in nodes:
                n.state.quiesce -= 1
                if n.state.quiesce == 0 and n.state.resumed is not None:
                    n.state.resumed.set()
                for handler in list(n.drain_handlers):
                    handler(False)

    async def wait_idle(self) -> None:
        while self.state.in_flight:
            if self.state.idle is None:
                self.state.idle = asyncio.Event()
            self.state.idle.clear()
            await self.state.idle.wait()

    async def drain(self) -> None:
        async with self.drained():
            pass

    # ---- lifetime -------------------------------------------------------------------------
    def ref(self) -> "BlockNode":
        self.refcount += 1
        return self

    def unref_later(self) -> None:
        """Drop a reference; the last one closes the node (synchronously scheduled)."""
        self.refcount -= 1
        if self.refcount <= 0 and not self.closed:
            self._pending_close = asyncio.ensure_future(self.close()) \
                if _has_loop() else None

    async def unref(self) -> None:
        self.refcount -= 1
        if self.refcount <= 0 and not self.closed:
            await self.close()

    async def close(self, *, failed_open: bool = False) -> None:
        """Flush, close this node and release its children (they close when unreferenced).

        ``failed_open``: the node's open did not complete; nothing is flushed and the
        driver releases what it took without writing (:meth:`BlockDriver.release`)."""
        if self.closed or self.closing:
            return
        self.closing = True
        try:
            await self.wait_idle()
            if not self.read_only and not self.driver.is_protocol and not failed_open:
                try:
                    await self.flush()       # as QEMU's bdrv_close: data durable first
                except Exception:
                    pass                      # the driver's close reports what matters
            self.closed = True
            await (self.driver.release() if failed_open else self.driver.close())
        finally:
            self.closed = True
            self.graph.remove(self)
            for name in list(self.children):
                edge = self.children.pop(name)
                edge.node.parents.remove(edge)
                edge.node.refcount -= 1
                if edge.node.refcount <= 0:
                    await edge.node.close()
                elif not edge.node.closed:
                    edge.node.refresh_perms()

    # ---- the request path (see blocklayer.core.io) ---------------------------------------------
    read = _io.node_read
    write = _io.node_write
    write_zeroes = _io.node_write_zeroes
    discard = _io.node_discard
    copy_range = _io.node_copy_range
    copy_range_to = _io.node_copy_range_to
    flush = _io.node_flush
    truncate = _io.node_truncate
    block_status = _io.node_block_status
    block_status_above = _io.node_block_status_above
    is_allocated = _io.node_is_allocated
    is_allocated_above = _io.node_is_allocated_above
    length = _io.node_length
    allocated_file_size = _io.node_allocated_file_size
    refresh_total_bytes = _io.node_refresh_total_bytes


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False
