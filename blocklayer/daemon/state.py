"""The daemon's state: the block graph, the monitor-owned nodes, QOM objects, chardevs,
monitors and the export hooks.  One :class:`Daemon` per process, passed to every
command handler (``ctx.app``); nothing lives at module level."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from blocklayer import __version__
from blocklayer.core.node import BlockGraph, BlockNode
from blocklayer.jobs.manager import JobManager
from blocklayer.qmp.dispatch import Dispatcher
from blocklayer.qmp.schema import Schema, qsd_schema
from blocklayer.qmp.server import MonitorServer

from .exports import ExportHooks, make_exports


@dataclass
class Chardev:
    """A socket chardev: a listening unix path or TCP address."""

    id: str
    path: str | None = None
    host: str | None = None
    port: int | None = None
    monitor: MonitorServer | None = None


@dataclass
class QomObject:
    id: str
    qom_type: str
    props: dict[str, Any] = field(default_factory=dict)


@dataclass
class Job:
    """A finished job waiting to be dismissed (blockdev-create runs synchronously)."""

    id: str
    type: str
    status: str = "concluded"
    error: str | None = None


class Daemon:
    def __init__(self, schema: Schema | None = None, exports: ExportHooks | None = None) -> None:
        from .commands import build_dispatcher
        self.schema = schema or qsd_schema()
        self.graph = BlockGraph()
        self.graph.event_handlers.append(self._graph_event)
        self.monitor_owned: list[BlockNode] = []
        self.objects: dict[str, QomObject] = {}
        self.chardevs: dict[str, Chardev] = {}
        self.jobs: dict[str, Job] = {}          # finished blockdev-create jobs
        self.job_manager = JobManager(self.graph)
        self.exports: ExportHooks = exports or make_exports()
        self.dispatcher: Dispatcher = build_dispatcher(self.schema)
        self.quit_requested = asyncio.Event()
        #: closed first at shutdown (servers added by options: --metrics)
        self.closing: list[Callable[[], Awaitable[None]]] = []

    @property
    def version(self) -> dict[str, Any]:
        """QEMU 7.2's numbers; the package names blocklayer."""
        qemu = self.schema.version["qemu"]
        return {"qemu": {k: qemu[k] for k in ("major", "minor", "micro")},   # QAPI order
                "package": f"blocklayer {__version__}"}

    # ---- events ---------------------------------------------------------------------------
    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        now = time.time()
        for chardev in self.chardevs.values():
            if chardev.monitor is not None:
                chardev.monitor.broadcast(name, data, now)

    def _graph_event(self, name: str, data: dict[str, Any]) -> None:
        if name.isupper():            # QMP events; warnings are lower case
            self.emit(name, data)

    def watch_threshold(self, node: BlockNode) -> None:
        def fired(n: BlockNode, exceeded: int, threshold: int) -> None:
            self.emit("BLOCK_WRITE_THRESHOLD", {"node-name": n.name, "amount-exceeded": exceeded,
                                                "write-threshold": threshold})
        node.on_write_threshold = fired

    # ---- monitors -------------------------------------------------------------------------
    async def add_monitor(self, chardev: Chardev) -> MonitorServer:
        server = MonitorServer(self.dispatcher, self, self.version)
        if chardev.path is not None:
            await server.start_unix(chardev.path)
        else:
            await server.start_tcp(chardev.host or "", chardev.port or 0)
        chardev.monitor = server
        return server

    # ---- lifetime -------------------------------------------------------------------------
    def owned(self, node: BlockNode) -> bool:
        return any(n is node for n in self.monitor_owned)

    async def shutdown(self) -> None:
        """Close monitors and exports, then flush and close every node (images clean)."""
        for close in self.closing:
            with contextlib.suppress(Exception):
                await close()
        for chardev in self.chardevs.values():
            if chardev.monitor is not None:
                await chardev.monitor.close()
        with contextlib.suppress(Exception):
            await self.exports.shutdown(self)
        with contextlib.suppress(Exception):
            await self.job_manager.shutdown()
        self.monitor_owned.clear()
        while self.graph.nodes:
            roots = [n for n in self.graph.nodes.values() if not n.parents] \
                or list(self.graph.nodes.values())
            for node in roots:
                with contextlib.suppress(Exception):
                    await node.close()
                self.graph.remove(node)
