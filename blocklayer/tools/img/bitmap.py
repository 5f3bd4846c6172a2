"""``bitmap``: add, remove, clear, enable, disable and merge persistent dirty bitmaps,
in the order given, through the node's bitmap API (:mod:`blocklayer.core.bitmaps`; a
node that cannot store them refuses cleanly)."""
from __future__ import annotations

import asyncio
import errno
import os
from typing import TYPE_CHECKING

from blocklayer.core import bitmaps
from blocklayer.core.errors import BlockError, InvalidArgument

from .args import parse
from .common import close_all, new_graph, open_img

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

ACTIONS = ("--add", "--remove", "--clear", "--enable", "--disable", "--merge")


def main(argv: list[str]) -> int:
    p = parse(argv, "hb:f:F:g:", ["object=", "image-opts", "add", "remove", "clear", "enable",
                                  "disable", "merge="])
    actions = [(o, v) for o, v in p.opts if o in ACTIONS]
    if not actions:
        raise InvalidArgument("Need at least one of --add, --remove, --clear, --enable, "
                              "--disable, or --merge")
    if p.has("-g") and not p.has("--add"):
        raise InvalidArgument("granularity only supported with --add")
    if p.has("-b") and not p.has("--merge"):
        raise InvalidArgument("Merge bitmap source file only supported with --merge")
    if p.has("-F") and not p.has("-b"):
        raise InvalidArgument("Merge bitmap source format only supported with -b")
    if len(p.args) != 2:
        raise InvalidArgument("Expecting filename and bitmap name")
    granularity = None
    if p.has("-g"):
        from blocklayer.core.options import parse_size
        try:
            granularity = parse_size(p.last("-g") or "", "granularity")
        except InvalidArgument:
            raise InvalidArgument("Invalid granularity specified") from None
    return asyncio.run(run(p, actions, granularity))


def _unsupported(op: str, bitmap: str, node: "BlockNode") -> BlockError:
    return BlockError(f"Operation {op} on bitmap {bitmap} failed: Can't store persistent "
                      f"bitmaps to {node.name}: {os.strerror(errno.ENOTSUP)}", errno.ENOTSUP)


async def run(p, actions: list[tuple[str, str]], granularity: int | None) -> int:  # type: ignore[no-untyped-def]
    filename, bitmap = p.args
    graph = new_graph()
    node = await open_img(graph, filename, fmt=p.last("-f"), image_opts=p.has("--image-opts"),
                          read_only=False)
    sources: dict[str, "BlockNode"] = {}
    try:
        for opt, value in actions:
            op = opt[2:]
            try:
                await _apply(p, graph, node, op, bitmap, value, granularity, sources)
            except bitmaps.Unsupported:
                raise _unsupported(op, bitmap, node) from None
            except BlockError as exc:
                raise exc.with_prefix(f"Operation {op} on bitmap {bitmap} failed: ")
        await node.flush()
    finally:
        await close_all(node, *sources.values())
    return 0


async def _apply(p, graph, node: "BlockNode", op: str, bitmap: str, value: str,  # type: ignore[no-untyped-def]
                 granularity: int | None, sources: dict[str, "BlockNode"]) -> None:
    if op == "add":
        await bitmaps.add(node, bitmap, granularity)
    elif op in ("enable", "disable"):
        await bitmaps.set_enabled(node, bitmap, op == "enable")
    elif op == "merge":
        src = None
        if p.has("-b"):
            src = sources.get("b")
            if src is None:
                src = sources["b"] = await open_img(graph, p.last("-b"), fmt=p.last("-F"),
                                                    read_only=True)
        await bitmaps.merge(node, bitmap, value, source_node=src)
    elif op == "remove":
        await bitmaps.remove(node, bitmap)
    else:
        await bitmaps.clear(node, bitmap)
