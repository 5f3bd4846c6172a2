"""block-dirty-bitmap-* and x-debug-block-dirty-bitmap-sha256.

Every command is an :class:`Action` (prepare, then commit or abort) so that
``transaction`` runs the same code; run alone, a command is prepared and committed.
"""
from __future__ import annotations

from typing import Any

from blocklayer.core import dirty
from blocklayer.core.errors import BlockError
from blocklayer.core.node import BlockNode
from blocklayer.qmp.dispatch import Context
from blocklayer.qmp.protocol import CommandError

from .lookup import find_node, lookup_bs


def bitmap_node(daemon: Any, node: str) -> BlockNode:
    found = find_node(daemon, node)
    if found is None:
        raise CommandError(f"Node '{node}' not found")
    return found


def lookup(daemon: Any, node: str, name: str) -> tuple[BlockNode, dirty.Handle]:
    """QEMU's block_dirty_bitmap_lookup."""
    bs = bitmap_node(daemon, node)
    try:
        return bs, dirty.find(bs, name)
    except BlockError as exc:
        raise CommandError(str(exc)) from exc


class Action:
    """One step of a transaction: ``prepare`` may fail (nothing is left changed);
    ``commit`` and ``abort`` cannot."""

    def __init__(self, daemon: Any, args: dict[str, Any]) -> None:
        self.daemon, self.args = daemon, args

    async def prepare(self) -> None:
        raise NotImplementedError

    async def commit(self) -> None:
        pass

    async def abort(self) -> None:
        pass


class _Restoring(Action):
    """An action on one bitmap's bits or state that abort puts back."""
    check_flags = dirty.DEFAULT
    name_key = "name"

    async def prepare(self) -> None:
        self.node, self.bm = lookup(self.daemon, self.args["node"],
                                    self.args[self.name_key])
        try:
            dirty.check(self.bm, self.check_flags)
        except BlockError as exc:
            raise CommandError(str(exc)) from exc
        self.saved = dirty.snapshot(self.bm), self.bm.enabled
        self.apply()

    def apply(self) -> None:
        raise NotImplementedError

    async def abort(self) -> None:
        dirty.restore(self.bm, self.saved[0])
        self.bm.enabled = self.saved[1]


class Add(Action):
    async def prepare(self) -> None:
        a = self.args
        self.node = lookup_bs(self.daemon, a["node"], a["node"])
        try:
            self.bm = await dirty.add(self.node, a["name"], a.get("granularity"),
                                      a.get("persistent", False), a.get("disabled", False))
        except BlockError as exc:
            raise CommandError(str(exc)) from exc

    async def abort(self) -> None:
        await dirty.drop(self.node, self.bm)


class Remove(Action):
    """Prepare hides the bitmap (busy), commit removes it (from the image too).  QEMU
    also takes a persistent bitmap out of the image directory at prepare; here the
    directory keeps it until commit (the driver interface has no such step)."""

    async def prepare(self) -> None:
        self.node, self.bm = lookup(self.daemon, self.args["node"], self.args["name"])
        try:
            dirty.check(self.bm, dirty.BUSY | dirty.RO)
        except BlockError as exc:
            raise CommandError(str(exc)) from exc
        self.bm.busy = True

    async def commit(self) -> None:
        self.bm.busy = False
        await dirty.drop(self.node, self.bm)

    async def abort(self) -> None:
        self.bm.busy = False


class Clear(_Restoring):
    def apply(self) -> None:
        dirty.clear(self.bm)


class Enable(_Restoring):
    check_flags = dirty.ALLOW_RO

    def apply(self) -> None:
        dirty.set_enabled(self.bm, True)


class Disable(_Restoring):
    check_flags = dirty.ALLOW_RO

    def apply(self) -> None:
        dirty.set_enabled(self.bm, False)


class Merge(_Restoring):
    name_key = "target"
    def apply(self) -> None:
        pass

    async def prepare(self) -> None:
        await super().prepare()
        try:
            for src in self.args["bitmaps"]:
                if isinstance(src, str):
                    snode, sbm = lookup(self.daemon, self.args["node"], src)
                else:
                    snode, sbm = lookup(self.daemon, src["node"], src["name"])
                self.merge_one(snode, sbm)
        except (BlockError, CommandError):
            await self.abort()
            raise

    def merge_one(self, snode: BlockNode, src: dirty.Handle) -> None:
        try:
            dirty.check(src, dirty.INCONSISTENT)
        except BlockError as exc:
            raise CommandError(str(exc)) from exc
        dsize, ssize = self.node.total_bytes, snode.total_bytes
        if dsize != ssize:
            raise CommandError(f"Bitmaps are of different sizes (destination size is "
                               f"{dsize}, source size is {ssize}) and can't be merged")
        dirty.merge_into(self.bm, src)


ACTIONS: dict[str, type[Action]] = {
    "block-dirty-bitmap-add": Add, "block-dirty-bitmap-remove": Remove,
    "block-dirty-bitmap-clear": Clear, "block-dirty-bitmap-enable": Enable,
    "block-dirty-bitmap-disable": Disable, "block-dirty-bitmap-merge": Merge,
}


def _command(cls: type[Action]) -> Any:
    async def handler(ctx: Context, args: dict[str, Any]) -> None:
        action = cls(ctx.app, args)
        await action.prepare()
        await action.commit()
    return handler


async def x_debug_sha256(ctx: Context, args: dict[str, Any]) -> Any:
    _, bm = lookup(ctx.app, args["node"], args["name"])
    return {"sha256": dirty.sha256(bm)}


HANDLERS = {name: _command(cls) for name, cls in ACTIONS.items()}
HANDLERS["x-debug-block-dirty-bitmap-sha256"] = x_debug_sha256
