"""NBD server and export commands: validated here, carried out by ``daemon.exports``
(see :mod:`.exports`)."""
from __future__ import annotations

from typing import Any

from blocklayer.qmp.dispatch import Context


async def nbd_server_start(ctx: Context, args: dict[str, Any]) -> None:
    await ctx.app.exports.nbd_server_start(ctx.app, args)


async def nbd_server_stop(ctx: Context, args: dict[str, Any]) -> None:
    await ctx.app.exports.nbd_server_stop(ctx.app)


async def nbd_server_add(ctx: Context, args: dict[str, Any]) -> None:
    await ctx.app.exports.nbd_server_add(ctx.app, args)


async def nbd_server_remove(ctx: Context, args: dict[str, Any]) -> None:
    await ctx.app.exports.nbd_server_remove(ctx.app, args)


async def block_export_add(ctx: Context, args: dict[str, Any]) -> None:
    await ctx.app.exports.block_export_add(ctx.app, args)


async def block_export_del(ctx: Context, args: dict[str, Any]) -> None:
    await ctx.app.exports.block_export_del(ctx.app, args)


async def query_block_exports(ctx: Context, args: dict[str, Any]) -> Any:
    return ctx.app.exports.query_block_exports(ctx.app)


HANDLERS = {
    "nbd-server-start": nbd_server_start,
    "nbd-server-stop": nbd_server_stop,
    "nbd-server-add": nbd_server_add,
    "nbd-server-remove": nbd_server_remove,
    "block-export-add": block_export_add,
    "block-export-del": block_export_del,
    "query-block-exports": query_block_exports,
}
