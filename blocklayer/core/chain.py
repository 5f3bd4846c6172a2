"""Backing chains: walking, searching, freezing and changing them.

Every function takes nodes and works on the ``backing`` edges (filters are stepped
through as QEMU's bdrv_filter_or_cow_bs does).  Freezing marks edges so that nobody
changes a segment a job is working on.
"""
from __future__ import annotations

import os
from typing import Iterator

from .driver import ChildRole
from .errors import InvalidArgument, PermissionConflict
from .node import BlockNode


def layers(top: BlockNode, base: BlockNode | None = None) -> Iterator[BlockNode]:
    """``top``, then each layer below it, stopping before ``base``."""
    node: BlockNode | None = top
    while node is not None and node is not base:
        yield node
        node = node.filtered_backing()


def find_base(top: BlockNode) -> BlockNode:
    """The bottom layer of the chain."""
    last = top
    for last in layers(top):
        pass
    return last


def find_overlay(top: BlockNode, node: BlockNode) -> BlockNode | None:
    """The layer directly above ``node`` in ``top``'s chain (None for ``top`` itself)."""
    above = None
    for layer in layers(top):
        if layer is node:
            return above
        above = layer
    return None


def chain_contains(top: BlockNode, node: BlockNode) -> bool:
    return any(layer is node for layer in layers(top))


def find_backing_image(top: BlockNode, name: str) -> BlockNode | None:
    """The layer whose file name matches ``name`` (as written, or resolved)."""
    real = os.path.realpath(name) if "://" not in name and not name.startswith("json:") else name
    for layer in layers(top):
        if layer is top:
            continue
        fname = layer.filename
        if fname == name or (not fname.startswith("json:") and os.path.realpath(fname) == real):
            return layer
        if layer.name == name:
            return layer
    return None


def _backing_edge(node: BlockNode):  # type: ignore[no-untyped-def]
    for edge in node.children.values():
        if edge.role is ChildRole.BACKING or (node.driver.is_filter
                                              and edge.node is node.data_child):
            return edge
    return None


def is_frozen(top: BlockNode, base: BlockNode | None) -> bool:
    for layer in layers(top, base):
        edge = _backing_edge(layer)
        if edge is not None and edge.frozen:
            return True
    return False


def freeze(top: BlockNode, base: BlockNode | None) -> None:
    """Freeze the edges from ``top`` down to ``base``; refuse if one already is."""
    if is_frozen(top, base):
        raise PermissionConflict(f"Cannot freeze the backing chain of '{top.name}': "
                                 "part of it is already frozen")
    for layer in layers(top, base):
        edge = _backing_edge(layer)
        if edge is not None:
            edge.frozen = True


def unfreeze(top: BlockNode, base: BlockNode | None) -> None:
    for layer in layers(top, base):
        edge = _backing_edge(layer)
        if edge is not None:
            edge.frozen = False


def set_backing(node: BlockNode, backing: BlockNode | None) -> None:
    """Point ``node``'s backing edge at ``backing`` (graph only, the header is untouched)."""
    if not node.driver.supports_backing:
        raise InvalidArgument(f"Driver '{node.format_name}' of node '{node.name}' does not "
                              "support backing files")
    edge = node.children.get("backing")
    if edge is not None and edge.frozen:
        raise PermissionConflict(f"Cannot change the backing link of '{node.name}': "
                                 "it is frozen")
    if edge is not None and edge.node is backing:
        return
    if edge is not None:
        node.detach_child("backing")
    if backing is not None:
        node.attach_child("backing", ChildRole.BACKING, backing.ref())


async def change_backing_file(node: BlockNode, backing_file: str | None,
                              backing_fmt: str | None) -> None:
    """Rewrite the backing file name (and format) recorded in ``node``'s header."""
    if node.read_only:
        raise PermissionConflict(f"Node '{node.name}' is read-only")
    await node.driver.change_backing_file(backing_file, backing_fmt)
    node.backing_file, node.backing_format = backing_file, backing_fmt


async def drop_intermediate(top: BlockNode, base: BlockNode,
                            backing_file: str | None = None) -> None:
    """Remove the layers strictly between ``top`` and ``base`` (after a commit or stream):
    ``top``'s image now names ``base`` and the graph follows."""
    overlay = top
    if not chain_contains(top, base):
        raise InvalidArgument(f"'{base.name}' is not in the backing chain of '{top.name}'")
    for layer in layers(top.filtered_backing() or top, base):
        edge = _backing_edge(layer)
        if edge is not None and edge.frozen:
            raise PermissionConflict(f"Cannot drop '{layer.name}': the chain is frozen")
    name = backing_file if backing_file is not None else base.filename
    if not overlay.read_only:
        await change_backing_file(overlay, name, base.format_name)
    set_backing(overlay, base)
