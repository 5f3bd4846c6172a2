"""Commands that add, change and remove nodes of the graph."""
from __future__ import annotations

from typing import Any

from blocklayer.core.driver import Perm
from blocklayer.core.errors import BlockError
from blocklayer.core.node import BlockNode
from blocklayer.qmp.dispatch import Context
from blocklayer.qmp.protocol import CommandError

from .lookup import lookup_bs, node_by_name, root_bs

#: children a BlockdevOptions may name by reference (a string) or null
CHILD_KEYS = ("file", "backing", "data-file", "image", "target", "bottom")


def flat_options(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Validated BlockdevOptions -> the flat dotted dict ``open_node`` takes (node-name
    references and ``null`` stay as values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_options(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


async def add_node(daemon: Any, options: dict[str, Any]) -> BlockNode:
    """blockdev-add / --blockdev after validation: open the node, the monitor owns it."""
    from blocklayer.core.open import open_node
    if "node-name" not in options:
        raise CommandError("'node-name' must be specified for the root node")
    name = options["node-name"]
    if name in daemon.graph.nodes:
        raise CommandError(f"Duplicate nodes with node-name='{name}'")
    _check_references(daemon, options)
    node = await open_node(daemon.graph, None, flat_options(options))
    try:
        node.refresh_perms()
    except BaseException:
        await node.close()
        raise
    daemon.monitor_owned.append(node)
    daemon.watch_threshold(node)
    for child in node.descendants():
        daemon.watch_threshold(child)
    return node


def _check_references(daemon: Any, options: dict[str, Any]) -> None:
    """Children named by reference must exist (QEMU's bdrv_lookup_bs text)."""
    for key, value in options.items():
        if isinstance(value, dict):
            _check_references(daemon, value)
        elif key in CHILD_KEYS and key != "bottom" and isinstance(value, str) \
                and value not in daemon.graph.nodes:     # copy-on-read says it of bottom
            raise CommandError(f"Cannot find device='{value}' nor node-name='{value}'")


async def blockdev_add(ctx: Context, args: dict[str, Any]) -> None:
    await add_node(ctx.app, args)


async def blockdev_del(ctx: Context, args: dict[str, Any]) -> None:
    daemon = ctx.app
    name = args["node-name"]
    node = node_by_name(daemon, name)
    if node.users:
        raise CommandError(f"Node {name} is in use")
    node.check_op("drive-del")
    if not daemon.owned(node):
        raise CommandError(f"Node {name} is not owned by the monitor")
    if node.parents:
        raise CommandError(f"Block device {name} is in use")
    daemon.monitor_owned = [n for n in daemon.monitor_owned if n is not node]
    await node.unref()


async def blockdev_reopen(ctx: Context, args: dict[str, Any]) -> None:
    from blocklayer.core.reopen import ReopenQueue
    daemon = ctx.app
    queue = ReopenQueue()
    for opts in args["options"]:
        if "node-name" not in opts:
            raise CommandError("node-name not specified")
        node = node_by_name(daemon, opts["node-name"], "Cannot find node named '{}'")
        if opts["driver"] != node.format_name:
            raise CommandError("Cannot change the option 'driver'")
        changes = {k: v for k, v in flat_options(opts).items()
                   if k not in ("driver", "node-name", "read-only", "auto-read-only")
                   and k.split(".", 1)[0] not in CHILD_KEYS}
        queue_reopen(daemon, queue, node, changes, bool(opts.get("read-only", False)))
    await queue.run()


def queue_reopen(daemon: Any, queue: Any, node: BlockNode, changes: dict[str, Any] | None,
                 read_only: bool) -> None:
    """Queue ``node`` and the file children that inherit its read-only state: those
    opened with it; a child added on its own (monitor-owned) keeps its options."""
    queue.add(node, changes, read_only=read_only, with_children=False)
    for edge in node.children.values():
        if edge.role.value in ("file", "data-file") and not daemon.owned(edge.node):
            queue_reopen(daemon, queue, edge.node, None, read_only)


async def block_resize(ctx: Context, args: dict[str, Any]) -> None:
    node = lookup_bs(ctx.app, args.get("device"), args.get("node-name"))
    size = args["size"]
    if size < 0 or size >= 1 << 63:
        raise CommandError("Parameter 'size' expects a >0 size")
    try:
        node.check_op("resize")
    except BlockError as exc:      # QEMU's QERR_DEVICE_IN_USE, of the device argument
        raise CommandError(f"Device '{args.get('device') or '(null)'}' is in use") from exc
    owner = object()
    try:
        node.add_user(owner, Perm.RESIZE, Perm.ALL)
    except BlockError as exc:
        raise CommandError(exc.message) from exc
    try:
        async with node.drained():
            await node.truncate(size)
    finally:
        node.remove_user(owner)


async def block_set_write_threshold(ctx: Context, args: dict[str, Any]) -> None:
    node = node_by_name(ctx.app, args["node-name"], "Device '{}' not found")
    node.write_threshold = args["write-threshold"]
    ctx.app.watch_threshold(node)


async def change_backing_file(ctx: Context, args: dict[str, Any]) -> None:
    from blocklayer.core.chain import chain_contains
    from blocklayer.core.chain import change_backing_file as change
    from blocklayer.core.reopen import reopen_set_read_only
    daemon = ctx.app
    top = root_bs(daemon, args["device"])
    image = lookup_bs(daemon, None, args["image-node-name"])
    if image.backing is None:
        raise CommandError("not allowing backing file change on an image without a "
                           "backing file")
    if not chain_contains(top, image):
        raise CommandError(f"Node '{image.name}' is not in the backing chain of "
                           f"'{top.name}'")
    was_ro = image.read_only
    if was_ro:
        await reopen_set_read_only(image, False)
    try:
        fmt = image.backing.format_name if image.backing is not None else ""
        try:
            await change(image, args["backing-file"], fmt)
        except BlockError:
            raise CommandError(f"Could not change backing file to '{args['backing-file']}'")
    finally:
        if was_ro:
            await reopen_set_read_only(image, True)


HANDLERS = {
    "blockdev-add": blockdev_add,
    "blockdev-del": blockdev_del,
    "blockdev-reopen": blockdev_reopen,
    "block_resize": block_resize,
    "block-set-write-threshold": block_set_write_threshold,
    "change-backing-file": change_backing_file,
}
