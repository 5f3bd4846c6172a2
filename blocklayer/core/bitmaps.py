"""Persistent dirty bitmaps of a node, as the tools use them (``qemu-img bitmap``,
``convert --bitmaps``, ``measure``).

Each function checks :attr:`Cap.PERSISTENT_BITMAPS` and calls the driver's declared
``bitmap_*`` operations (:class:`blocklayer.core.driver.BlockDriver`); a node without the
capability raises :class:`Unsupported` (listing answers ``[]``).  Run-time bitmaps
(QMP's block-dirty-bitmap-*, bitmaps that only live in memory) will live here too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .driver import Cap
from .errors import NotSupported

if TYPE_CHECKING:
    from .node import BlockNode


class Unsupported(NotSupported):
    """The node cannot store persistent bitmaps at all."""


def supported(node: "BlockNode") -> bool:
    """Whether ``node`` stores persistent dirty bitmaps."""
    return node.can(Cap.PERSISTENT_BITMAPS)


def _driver(node: "BlockNode") -> Any:
    if not supported(node):
        raise Unsupported(f"Node '{node.name}' cannot store persistent bitmaps")
    return node.driver


def list_bitmaps(node: "BlockNode") -> list[dict[str, Any]]:
    """Every bitmap (``name``, ``granularity``, ``flags``, ...); ``[]`` without support."""
    return node.driver.bitmap_list() if supported(node) else []


async def add(node: "BlockNode", name: str, granularity: int | None = None) -> None:
    """A new persistent, enabled bitmap (``granularity`` None: the driver's default)."""
    await _driver(node).bitmap_add(name, granularity=granularity)


async def remove(node: "BlockNode", name: str) -> None:
    await _driver(node).bitmap_remove(name)


async def clear(node: "BlockNode", name: str) -> None:
    await _driver(node).bitmap_clear(name)


async def set_enabled(node: "BlockNode", name: str, enabled: bool) -> None:
    await _driver(node).bitmap_set_enabled(name, enabled)


async def merge(node: "BlockNode", target: str, source: str,
                source_node: "BlockNode | None" = None) -> None:
    """Merge bitmap ``source`` (of ``source_node``, else of ``node``) into ``target``."""
    handle: Any = source
    if source_node is not None:
        handle = _driver(source_node).bitmap_find(source)
    await _driver(node).bitmap_merge(target, handle)


async def copy(src: "BlockNode", dst: "BlockNode", name: str) -> None:
    """Bitmap ``name`` of ``src`` as a new bitmap of ``dst`` (same granularity)."""
    info = next((b for b in list_bitmaps(src) if b["name"] == name), {})
    await add(dst, name, info.get("granularity"))
    await merge(dst, name, name, source_node=src)
