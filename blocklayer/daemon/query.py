"""Queries of the graph, shaped as QSD 7.2 prints them."""
from __future__ import annotations

from typing import Any

from blocklayer.core import dirty
from blocklayer.core.driver import Perm
from blocklayer.core.node import BlockNode
from blocklayer.qmp import qjson
from blocklayer.qmp.dispatch import Context

#: drivers whose ImageInfo has no dirty-flag (QEMU: no bdrv_get_info)
NO_GET_INFO = ("null-co", "null-aio")
PERM_NAMES = ((Perm.RESIZE, "resize"), (Perm.WRITE_UNCHANGED, "write-unchanged"),
              (Perm.WRITE, "write"), (Perm.CONSISTENT_READ, "consistent-read"))


def node_filename(node: BlockNode) -> str:
    """QEMU's bs->filename: a null node is ``null-co://`` unless options were given,
    then the ``json:`` form of them; a format node whose image names a backing file
    that ``backing: null`` overrode is the ``json:`` form of its options."""
    if node.format_name in NO_GET_INFO:
        opts = {k: v for k, v in node.options.items()
                if k in node.driver.open_options and k != "filename"}
        if not opts:
            return f"{node.format_name}://"
        return "json:" + qjson.dumps({"driver": node.format_name, **opts})
    if node.options.get("backing", 0) is None and node.backing_file and node.file is not None:
        # the image names a backing file the options overrode: QEMU's filename says so
        return "json:" + qjson.dumps({"driver": node.format_name, "backing": None, "file": {
            "driver": node.file.format_name, "filename": node.file.filename}})
    return node.filename


async def image_info(node: BlockNode, nested: bool) -> dict[str, Any]:
    from blocklayer.tools.img.info import image_info as img_info
    info = await img_info(node)
    info["filename"] = node_filename(node)
    if node.driver.is_protocol:      # QEMU's bdrv_getlength counts whole sectors
        info["virtual-size"] = -(-info["virtual-size"] // 512) * 512
    if node.format_name in NO_GET_INFO:
        info.pop("dirty-flag", None)
        info.setdefault("actual-size", 0)
    if nested and node.backing is not None:
        info["backing-image"] = await image_info(node.backing, nested)
    return info


def backing_depth(node: BlockNode) -> int:
    depth, cur = 0, node.backing
    while cur is not None:
        depth += 1
        cur = cur.backing
    return depth


async def block_device_info(node: BlockNode, nested: bool) -> dict[str, Any]:
    """BlockDeviceInfo, members in schema order."""
    out: dict[str, Any] = {"file": node_filename(node), "node-name": node.name,
                           "ro": node.read_only, "drv": node.format_name}
    if node.backing is not None and not node.driver.is_filter:   # a filter names none
        out["backing_file"] = node.backing.filename
    out.update({"backing_file_depth": backing_depth(node) if nested else 0,  # as QEMU counts
                "encrypted": False,
                "detect_zeroes": node.flags.detect_zeroes,
                "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
                "image": await image_info(node, nested),
                "cache": {"writeback": node.flags.cache.writeback,
                          "direct": node.flags.cache.direct,
                          "no-flush": node.flags.cache.no_flush},
                "write_threshold": node.write_threshold})
    bitmaps = dirty.listed(node)
    if bitmaps:
        out["dirty-bitmaps"] = [dirty.info(bm) for bm in bitmaps]
    return out


def live_nodes(ctx: Context) -> list[BlockNode]:
    return [n for n in ctx.app.graph.nodes.values() if not n.closed]


async def query_named_block_nodes(ctx: Context, args: dict[str, Any]) -> Any:
    nested = not args.get("flat", False)
    return [await block_device_info(n, nested) for n in reversed(live_nodes(ctx))]


async def query_block(ctx: Context, args: dict[str, Any]) -> Any:
    return []          # QSD has no devices (named BlockBackends)


def node_stats(ctx: Context, node: BlockNode) -> dict[str, Any]:
    """BlockStats of a node: QSD accounts only at BlockBackends, so a node's counters
    are zero except wr_highest_offset (as QSD prints them)."""
    stats: dict[str, Any] = {}
    for member in ctx.app.schema.members(_stats_type(ctx), {}):
        if "default" in member:
            continue
        kind = ctx.app.schema.entities[member["type"]]["meta-type"]
        stats[member["name"]] = [] if kind == "array" else False \
            if member["type"] == "bool" else 0
    stats["wr_highest_offset"] = node.stats.wr_highest_offset
    out: dict[str, Any] = {"node-name": node.name, "stats": stats}
    if node.format_name == "file":
        d = node.stats.discard
        out["driver-specific"] = {"driver": "file", "discard-nb-ok": d.ops,
                                  "discard-nb-failed": d.failed, "discard-bytes-ok": d.bytes}
    if node.file is not None:
        out["parent"] = node_stats(ctx, node.file)
    return out


def _stats_type(ctx: Context) -> str:
    schema = ctx.app.schema
    ret = schema.command("query-blockstats")["ret-type"]
    elem = schema.entities[ret]["element-type"]
    return next(m["type"] for m in schema.entities[elem]["members"] if m["name"] == "stats")


async def query_blockstats(ctx: Context, args: dict[str, Any]) -> Any:
    if not args.get("query-nodes", False):
        return []
    return [node_stats(ctx, n) for n in live_nodes(ctx)]


def perm_names(perm: Perm) -> list[str]:
    return [name for bit, name in PERM_NAMES if perm & bit]


async def x_debug_query_block_graph(ctx: Context, args: dict[str, Any]) -> Any:
    ids: dict[int, int] = {}

    def num(node: BlockNode) -> int:
        return ids.setdefault(id(node), len(ids) + 1)
    nodes, edges = [], []
    for node in live_nodes(ctx):
        nodes.append({"id": num(node), "type": "block-driver", "name": node.name})
        for edge in reversed(list(node.children.values())):
            edges.append({"parent": num(node), "child": num(edge.node), "name": edge.name,
                          "perm": perm_names(edge.perm), "shared-perm": perm_names(edge.shared)})
    return {"nodes": nodes[::-1], "edges": edges[::-1]}


HANDLERS = {
    "query-named-block-nodes": query_named_block_nodes,
    "query-block": query_block,
    "query-blockstats": query_blockstats,
    "x-debug-query-block-graph": x_debug_query_block_graph,
}
