"""Opening an image so that one layer of its backing chain is writable (commit), and
walking chains by name."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from blocklayer.core.errors import BlockError, InvalidArgument

from .common import close_all, open_img

if TYPE_CHECKING:
    from blocklayer.core.node import BlockGraph, BlockNode

BASE_NODE = "img-writable-base"


def layers(node: "BlockNode") -> list[tuple["BlockNode", str | None]]:
    """Each layer below ``node`` with the backing name its parent records."""
    out = []
    parent, cur = node, node.filtered_backing()
    while cur is not None:
        out.append((cur, parent.backing_file))
        parent, cur = cur, cur.filtered_backing()
    return out


def find_in_chain(node: "BlockNode", name: str) -> int:
    """Depth (1 = the immediate backing file) of the layer called ``name``."""
    want = os.path.realpath(name) if not name.startswith("json:") else name
    for depth, (layer, recorded) in enumerate(layers(node), 1):
        if name in (layer.filename, recorded) or os.path.realpath(layer.filename) == want:
            return depth
    raise InvalidArgument(f"Did not find '{name}' in the backing chain of '{node.filename}'")


async def open_with_writable_base(graph: "BlockGraph", filename: str, fmt: str | None,
                                  image_opts: bool, base_name: str | None,
                                  cache: str | None) -> tuple["BlockNode", "BlockNode"]:
    """Open ``filename`` read-write with the layer ``base_name`` (default: the immediate
    backing file) opened read-write too; return (top, base)."""
    from blocklayer.core.options import split_keyval
    probe = await open_img(graph, filename, fmt=fmt, image_opts=image_opts, read_only=False)
    try:
        if probe.filtered_backing() is None:
            raise InvalidArgument("Image does not have a backing file")
        depth = find_in_chain(probe, base_name) if base_name else 1
        base_layer = layers(probe)[depth - 1][0]
        base_file, base_fmt = base_layer.filename, base_layer.format_name
    finally:
        await close_all(probe)
    # qemu-img commit opens with BDRV_O_UNMAP: zeroes committed may deallocate
    base = await open_img(graph, base_file, fmt=base_fmt, read_only=False, cache=cache,
                          resize=True, backing=True, unmap=True)
    try:
        from blocklayer.core.open import open_image
        options: dict[str, Any] = dict(split_keyval(filename)) if image_opts else {}
        options[".".join(["backing"] * depth)] = base.name
        flags_cache = cache
        from .common import open_flags
        flags = open_flags(read_only=False, cache=flags_cache, unmap=True)
        try:
            top = await open_image(None if image_opts else filename, options, fmt=fmt,
                                   graph=graph, flags=flags)
        except BlockError as exc:
            raise exc.with_prefix(f"Could not open '{filename}': ")
    except BaseException:
        await close_all(base)
        raise
    return top, base
