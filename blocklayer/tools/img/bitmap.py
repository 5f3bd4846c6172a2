"""``bitmap``: add, remove, clear, enable, disable and merge persistent dirty bitmaps,
in the order given, through the driver's bitmap methods (optional; a driver without
them refuses cleanly):

    bitmap_list() -> list[dict]                # {"name", "granularity", "flags", ...}
    bitmap_add(name, granularity=None)         # persistent, enabled
    bitmap_remove(name) / bitmap_clear(name)
    bitmap_enable(name) / bitmap_disable(name)  or  bitmap_set_enabled(name, bool)
    bitmap_find(name) -> handle                # a bitmap to merge from another image
    bitmap_merge(name, source_name_or_handle)

(each may be async or not).
"""
from __future__ import annotations

import asyncio
import errno
import inspect
import os
from typing import TYPE_CHECKING

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
            except _Unsupported:
                raise _unsupported(op, bitmap, node) from None
            except BlockError as exc:
                raise BlockError(f"Operation {op} on bitmap {bitmap} failed: {exc.message}",
                                 exc.errno) from None
        await node.flush()
    finally:
        await close_all(node, *sources.values())
    return 0


class _Unsupported(Exception):
    pass


async def _call(drv: object, name: str, *args: object, **kw: object) -> object:
    method = getattr(drv, name, None)
    if method is None:
        raise _Unsupported(name)
    result = method(*args, **kw)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _apply(p, graph, node: "BlockNode", op: str, bitmap: str, value: str,  # type: ignore[no-untyped-def]
                 granularity: int | None, sources: dict[str, "BlockNode"]) -> None:
    drv = node.driver
    if op == "add":
        await _call(drv, "bitmap_add", bitmap, granularity=granularity)
    elif op in ("enable", "disable"):
        if hasattr(drv, f"bitmap_{op}"):
            await _call(drv, f"bitmap_{op}", bitmap)
        else:
            await _call(drv, "bitmap_set_enabled", bitmap, op == "enable")
    elif op == "merge":
        source: object = value
        if p.has("-b"):
            src = sources.get("b")
            if src is None:
                src = sources["b"] = await open_img(graph, p.last("-b"), fmt=p.last("-F"),
                                                    read_only=True)
            source = await _call(src.driver, "bitmap_find", value)
        await _call(drv, "bitmap_merge", bitmap, source)
    else:
        await _call(drv, f"bitmap_{op}", bitmap)


async def list_bitmaps(node: "BlockNode") -> list[dict]:  # type: ignore[type-arg]
    try:
        return list(await _call(node.driver, "bitmap_list"))  # type: ignore[call-overload]
    except _Unsupported:
        return []


async def copy_bitmap(src: "BlockNode", dst: "BlockNode", name: str) -> None:
    """``convert --bitmaps``: one bitmap, through the same optional methods."""
    info = next((b for b in await list_bitmaps(src) if b["name"] == name), {})
    await _call(dst.driver, "bitmap_add", name, granularity=info.get("granularity"))
    await _call(dst.driver, "bitmap_merge", name, await _call(src.driver, "bitmap_find", name))
