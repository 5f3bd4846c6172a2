"""Changing the shape of the graph: replace a node, append an overlay, insert and drop
filters.  Parents (edges and outside users) move from one node to another in one step,
and permissions are recomputed so the image locks follow."""
from __future__ import annotations

from typing import Any

from .driver import ChildRole
from .errors import InvalidArgument, PermissionConflict
from .node import BlockNode


def replace_node(old: BlockNode, new: BlockNode) -> None:
    """Make every parent of ``old`` (except ``new`` and what lies below it) use ``new``."""
    if old is new:
        return
    below_new = {id(n) for n in [new, *new.descendants()]}
    moving = [e for e in old.parents if e.parent is None or id(e.parent) not in below_new]
    for edge in moving:
        if edge.frozen:
            raise PermissionConflict(f"Cannot change the '{edge.name}' link of "
                                     f"'{edge.parent.name if edge.parent else '?'}': it is frozen")
    for edge in moving:
        old.parents.remove(edge)
        edge.node = new
        new.parents.append(edge)
        new.refcount += 1
        old.refcount -= 1
    users, old.users = old.users, []
    new.users.extend(users)
    for owner, _perm, _shared in users:        # an export follows, as a BlockBackend does
        moved = getattr(owner, "node_replaced", None)
        if moved is not None:
            moved(new)
    try:
        new.refresh_perms()
    finally:
        if not old.closed:
            old.refresh_perms()


def append_overlay(top: BlockNode, overlay: BlockNode) -> None:
    """Put ``overlay`` on top of ``top`` (an external snapshot): ``top`` becomes its
    backing and everything that used ``top`` now uses ``overlay``."""
    if not overlay.driver.supports_backing:
        raise InvalidArgument(f"The overlay '{overlay.name}' does not support backing images")
    if overlay.backing is not None:
        raise InvalidArgument(f"The overlay '{overlay.name}' already has a backing image")
    overlay.attach_child("backing", ChildRole.BACKING, top.ref())
    replace_node(top, overlay)


async def open_filter_above(node: BlockNode, options: dict[str, Any]) -> BlockNode:
    """Open a filter (``options`` name its driver and its own options) over ``node`` as
    its ``file`` and put it in ``node``'s place; nothing changes if that fails."""
    from .open import open_node
    filter_node = await open_node(node.graph, None, {**options, "file": node.name})
    try:
        insert_filter(node, filter_node)
    except BaseException:
        await filter_node.close()
        raise
    return filter_node


def insert_filter(node: BlockNode, filter_node: BlockNode) -> None:
    """Put ``filter_node`` (whose data child is already ``node``) above ``node``."""
    if filter_node.data_child is not node:
        raise InvalidArgument(f"'{filter_node.name}' must have '{node.name}' as its child")
    replace_node(node, filter_node)


async def drop_filter(filter_node: BlockNode) -> BlockNode:
    """Remove a filter: its parents use its child again; the filter closes."""
    child = filter_node.data_child
    if not filter_node.driver.is_filter or child is None:
        raise InvalidArgument(f"'{filter_node.name}' is not a filter node")
    replace_node(filter_node, child)
    if filter_node.refcount <= 1:
        await filter_node.close()
    return child
