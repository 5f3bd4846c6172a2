"""The state a qemu-io session keeps between commands: the open image (one node), the
options it was opened with, the aio requests still in flight, and where text goes.

Commands print through :meth:`Session.out` (stdout) and report errors the way qemu-io
does: ``error`` is QEMU's error_report (``prog: message`` on stderr), ``raw_err`` a
line on stderr without the program name.
"""
from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any, Awaitable, TextIO

from ...core.driver import Perm
from ...core.errors import BlockError, InvalidArgument, describe
from ...core.node import BlockGraph, BlockNode
from ...core.open import open_image
from ...core.options import CacheMode, OpenFlags

DEFAULT_NAME = "blocklayer-io"
AIO_MODES = ("threads", "native", "io_uring")
DISCARD_MODES = {"off": False, "ignore": False, "on": True, "unmap": True}


def parse_cache(mode: str) -> CacheMode:
    try:
        return CacheMode.parse(mode)
    except InvalidArgument:
        raise InvalidArgument(f"Invalid cache option: {mode}") from None


def parse_discard(mode: str) -> bool:
    if mode not in DISCARD_MODES:
        raise InvalidArgument(f"Invalid discard option: {mode}")
    return DISCARD_MODES[mode]


def parse_aio(mode: str) -> str:
    if mode not in AIO_MODES:
        raise InvalidArgument(f"Invalid aio option: {mode}")
    return mode


@dataclass
class OpenRequest:
    """What ``qemu-io [options] file`` or the ``open`` command asks to open."""

    name: str | None
    options: dict[str, Any] = field(default_factory=dict)
    read_only: bool = False
    snapshot: bool = False
    cache: CacheMode = CacheMode(writeback=False)   # qemu-io's default is writethrough
    discard_unmap: bool = True          # qemu-io's default is discard=unmap
    copy_on_read: bool = False
    force_share: bool = False
    aio: str = "threads"

    def apply_option(self, opt: str, arg: str) -> bool:
        """Take one of the open options that the command line and the ``open`` command
        share (-r -s -n -C -k -i -t -d -U); False if ``opt`` is not one of them."""
        if opt == "r":
            self.read_only = True
        elif opt == "s":
            self.snapshot = True
        elif opt == "n":
            self.cache = parse_cache("none")
        elif opt == "C":
            self.copy_on_read = True
        elif opt == "k":
            self.aio = "native"
        elif opt == "i":
            self.aio = parse_aio(arg)
        elif opt == "t":
            self.cache = parse_cache(arg)
        elif opt == "d":
            self.discard_unmap = parse_discard(arg)
        elif opt == "U":
            self.force_share = True
        else:
            return False
        return True


class Session:
    """One qemu-io session: at most one open image."""

    def __init__(self, prog: str = DEFAULT_NAME, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        self.prog = prog
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.node: BlockNode | None = None
        self.pending: set[asyncio.Task[None]] = set()
        self.misalign = False

    # ---- output ----------------------------------------------------------------------
    def out(self, text: str) -> None:
        self.stdout.write(text)

    def raw_err(self, text: str) -> None:
        # stdout stays buffered as in C: piped together, qemu-io's stderr comes first
        self.stderr.write(text if text.endswith("\n") else text + "\n")
        self.stderr.flush()

    def error(self, message: str) -> None:
        self.raw_err(f"{self.prog}: {message}")

    def warn(self, message: str) -> None:
        self.raw_err(f"{self.prog}: warning: {message}")

    def _on_event(self, event: str, data: dict[str, Any]) -> None:
        if event == "warning":
            self.raw_err(str(data.get("message", "")))
        elif event == "BLOCK_IMAGE_CORRUPTED":
            from blocklayer.tools.common import corruption_text
            self.raw_err(corruption_text(data))

    # ---- the image -----------------------------------------------------------------------
    def require_node(self) -> "BlockNode":
        """The open image (the command table runs file commands only with one open)."""
        assert self.node is not None
        return self.node

    async def open(self, req: OpenRequest) -> bool:
        """Open ``req``; on failure print qemu-io's line and return False."""
        if self.node is not None:
            self.error("file open already, try 'help close'")
            return False
        where = f" device {req.name}" if req.name else ""
        options = dict(req.options)
        if req.force_share:
            if str(options.get("force-share", "on")) not in ("on", "true", "yes", "1"):
                self.error("-U conflicts with image options")
                return False
        try:
            if req.aio == "native" and not req.cache.direct:
                raise InvalidArgument("aio=native was specified, but it requires "
                                      "cache.direct=on, which was not specified.")
            flags = OpenFlags(read_only=req.read_only, cache=req.cache,
                              force_share=req.force_share, copy_on_read=req.copy_on_read,
                              discard_unmap=req.discard_unmap)
            graph = BlockGraph()
            graph.event_handlers.append(self._on_event)
            self.node = await open_image(req.name, options, flags=flags, graph=graph,
                                         read_only=req.read_only, owner=self,
                                         snapshot=req.snapshot)
        except (BlockError, OSError, ValueError) as exc:
            self.error(f"can't open{where}: {describe(exc)}")
            return False
        return True

    async def close(self) -> None:
        """Wait for the aio requests, then close the image."""
        await self.drain()
        node, self.node = self.node, None
        if node is not None:
            try:
                await node.close()
            except (BlockError, OSError) as exc:
                self.error(describe(exc))

    # ---- aio -----------------------------------------------------------------------------
    def submit(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def drain(self) -> None:
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)

    # ---- permissions -----------------------------------------------------------------------
    def ensure_perm(self, perm: Perm) -> bool:
        """Take ``perm`` on the node for this user, as qemu-io does before a command
        that writes or resizes; print QEMU's error and return False if it cannot."""
        node = self.node
        assert node is not None
        if perm & (Perm.WRITE | Perm.RESIZE) and node.read_only:
            self.error("Block node is read-only")
            return False
        for i, (owner, have, shared) in enumerate(node.users):
            if owner is self:
                if not perm & ~have:
                    return True
                node.users[i] = (owner, have | perm, shared)
                try:
                    node.refresh_perms()
                except BlockError as exc:
                    node.users[i] = (owner, have, shared)
                    node.refresh_perms()
                    self.error(describe(exc))
                    return False
                return True
        return True

    def set_user_perm(self, perm: Perm) -> None:
        """Replace what this user holds (after a reopen)."""
        node = self.node
        assert node is not None
        for i, (owner, _have, shared) in enumerate(node.users):
            if owner is self:
                node.users[i] = (owner, perm, shared)
        node.refresh_perms()
