"""``bitmap``: add, remove, clear, enable, disable and merge persistent dirty bitmaps,
in the order given, through the driver's bitmap methods (optional; a driver without
them refuses cleanly):

    async bitmap_list() -> list[dict]          # {"name", "granularity", "flags"} or objects
    async bitmap_add(name, granularity: int | None, disabled: bool)
    async bitmap_remove(name) / bitmap_clear(name) / bitmap_enable(name) / bitmap_disable(name)
    async bitmap_merge(name, source_node, source_name)
"""
from __future__ import annotations

import asyncio
import errno
import os
from typing import TYPE_CHECKING

from blocklayer.errors import BlockError, InvalidArgument

from .args import parse
from .common import close_all, new_graph, open_img

if TYPE_CHECKING:
    from blocklayer.node import BlockNode

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
        from blocklayer.options import parse_size
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
    src = None
    try:
        drv = node.driver
        for opt, value in actions:
            op = opt[2:]
            method = getattr(drv, f"bitmap_{op}", None)
            if method is None:
                raise _unsupported(op, bitmap, node)
            try:
                if op == "add":
                    await method(bitmap, granularity, False)
                elif op == "merge":
                    source = node
                    if p.has("-b"):
                        if src is None:
                            src = await open_img(graph, p.last("-b"), fmt=p.last("-F"),
                                                 read_only=True)
                        source = src
                    await method(bitmap, source, value)
                else:
                    await method(bitmap)
            except BlockError as exc:
                raise BlockError(f"Operation {op} on bitmap {bitmap} failed: {exc.message}",
                                 exc.errno) from None
        await node.flush()
    finally:
        await close_all(node, src)
    return 0


async def copy_bitmap(src: "BlockNode", dst: "BlockNode", name: str) -> None:
    """``convert --bitmaps``: one bitmap, through the same optional methods."""
    info = next((b for b in await src.driver.bitmap_list()  # type: ignore[attr-defined]
                 if (b["name"] if isinstance(b, dict) else b.name) == name), None)
    gran = None
    if info is not None:
        gran = info["granularity"] if isinstance(info, dict) else info.granularity
    await dst.driver.bitmap_add(name, gran, False)  # type: ignore[attr-defined]
    await dst.driver.bitmap_merge(name, src, name)  # type: ignore[attr-defined]
