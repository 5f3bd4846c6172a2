"""``--metrics host:port``: the daemon's counters in the Prometheus text format (an
addition of blocklayer's; QSD has none).

On every scrape a collector reads the daemon's state in the event loop (no thread
shares it): per node the I/O counters the node accounts (what ``query-blockstats``
would report with accounting at the node), per export its connected clients, per job
its state and progress, per throttle group its limits.  The HTTP side is a minimal
asyncio server: ``GET /metrics`` (or ``/``), nothing else, requests bounded in size.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from blocklayer.qmp.protocol import CommandError

from .nodes import flat_options

MAX_REQUEST = 8192                 # request line and headers
PREFIX = "blocklayer"

#: (metric, help, BlockStats operation, OpStats field)
_NODE_COUNTERS = [
    ("read_bytes", "Bytes read from the node", "read", "bytes"),
    ("write_bytes", "Bytes written to the node (zero writes included)", "write", "bytes"),
    ("zero_bytes", "Bytes written as zeroes", "zero", "bytes"),
    ("discard_bytes", "Bytes discarded", "discard", "bytes"),
    ("read_operations", "Read requests", "read", "ops"),
    ("write_operations", "Write requests", "write", "ops"),
    ("zero_operations", "Write-zeroes requests", "zero", "ops"),
    ("flush_operations", "Flush requests", "flush", "ops"),
    ("discard_operations", "Discard requests", "discard", "ops"),
    ("failed_read_operations", "Failed reads", "read", "failed"),
    ("failed_write_operations", "Failed writes", "write", "failed"),
    ("failed_flush_operations", "Failed flushes", "flush", "failed"),
    ("read_time_ns", "Time spent in reads", "read", "total_time_ns"),
    ("write_time_ns", "Time spent in writes", "write", "total_time_ns"),
    ("flush_time_ns", "Time spent in flushes", "flush", "total_time_ns"),
]


class DaemonCollector:
    """A prometheus_client collector over one daemon's state."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        yield from self._nodes()
        yield from self._exports()
        yield from self._jobs()
        yield from self._throttle_groups()

    def _nodes(self) -> Iterator[Metric]:
        nodes = [n for n in self.daemon.graph.nodes.values() if not n.closed]
        for name, text, op, attr in _NODE_COUNTERS:
            family = CounterMetricFamily(f"{PREFIX}_node_{name}", text, labels=["node"])
            for node in nodes:
                family.add_metric([node.name], getattr(getattr(node.stats, op), attr))
            yield family
        highest = GaugeMetricFamily(f"{PREFIX}_node_wr_highest_offset",
                                    "End of the highest write (query-blockstats)",
                                    labels=["node"])
        size = GaugeMetricFamily(f"{PREFIX}_node_size_bytes", "Virtual size",
                                 labels=["node"])
        for node in nodes:
            highest.add_metric([node.name], node.stats.wr_highest_offset)
            with contextlib.suppress(Exception):
                size.add_metric([node.name], node.total_bytes)
        yield highest
        yield size

    def _exports(self) -> Iterator[Metric]:
        exports = self.daemon.exports
        family = GaugeMetricFamily(f"{PREFIX}_export_connections",
                                   "NBD clients connected to the export",
                                   labels=["export", "node"])
        counts = exports.connections() if hasattr(exports, "connections") else {}
        for info in exports.query_block_exports(self.daemon):
            family.add_metric([info["id"], info["node-name"]], counts.get(info["id"], 0))
        yield family

    def _jobs(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(f"{PREFIX}_job_info", "Jobs (1 per job; labels say which)",
                                  labels=["job", "type", "status"])
        current = GaugeMetricFamily(f"{PREFIX}_job_progress_current", "Job progress",
                                    labels=["job"])
        total = GaugeMetricFamily(f"{PREFIX}_job_progress_total", "Job work to do",
                                  labels=["job"])
        for job in list(self.daemon.jobs.values()):
            state.add_metric([job.id, str(job.type), str(job.status)], 1)
            for family, attr in ((current, "current_progress"), (total, "total_progress")):
                value = getattr(job, attr, None)
                if isinstance(value, int):
                    family.add_metric([job.id], value)
        yield state
        yield current
        yield total

    def _throttle_groups(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(f"{PREFIX}_throttle_group_limit",
                                   "Throttle group limits as configured",
                                   labels=["group", "limit"])
        for obj in list(self.daemon.objects.values()):
            if obj.qom_type != "throttle-group":
                continue
            for key, value in flat_options(obj.props).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    family.add_metric([obj.id, key], value)
        yield family


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``); the port a number from 0 to 65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise CommandError("expects host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


class MetricsServer:
    """Serves one daemon's metrics over HTTP on the daemon's event loop."""

    def __init__(self, daemon: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(daemon))
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        try:
            self.server = await asyncio.start_server(self._serve, host, port,
                                                     reuse_address=True)
        except OSError as exc:
            raise CommandError(f"Failed to bind socket: {exc.strerror}") from exc
        return [s.getsockname()[:2] for s in self.server.sockets]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status, body, ctype = self._answer(head)
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                         .encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        if len(head) > MAX_REQUEST:
            return "431 Request Header Fields Too Large", b"", "text/plain"
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", b"", "text/plain"
        if parts[1].split(b"?")[0] not in (b"/", b"/metrics"):
            return "404 Not Found", b"not found\n", "text/plain"
        body = generate_latest(self.registry) if parts[0] == b"GET" else b""
        return "200 OK", body, CONTENT_TYPE_LATEST
