"""Finding nodes the way QEMU's commands do, with their texts."""
from __future__ import annotations

from typing import TYPE_CHECKING

from blocklayer.qmp.protocol import CommandError

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

    from .state import Daemon


def find_node(daemon: Daemon, name: str) -> BlockNode | None:
    node = daemon.graph.nodes.get(name)
    return node if node is not None and not node.closed else None


def lookup_bs(daemon: Daemon, device: str | None, node_name: str | None) -> BlockNode:
    """QEMU's bdrv_lookup_bs: QSD has no devices, so only node names match."""
    node = find_node(daemon, node_name) if node_name is not None else None
    if node is None:
        raise CommandError(f"Cannot find device='{device or ''}' nor "
                           f"node-name='{node_name or ''}'")
    return node


def root_bs(daemon: Daemon, name: str) -> BlockNode:
    """QEMU's qmp_get_root_bs."""
    node = lookup_bs(daemon, name, name)
    if node.parents:
        raise CommandError("Need a root block node")
    return node


def node_by_name(daemon: Daemon, name: str, text: str = "Failed to find node with "
                 "node-name='{}'") -> BlockNode:
    node = find_node(daemon, name)
    if node is None:
        raise CommandError(text.format(name))
    return node
