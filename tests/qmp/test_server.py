"""The asyncio adapters: several monitors at once, each with its own negotiation; a
client that pipelines without reading or disconnects mid-command is handled alone."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from blocklayer.daemon.state import Chardev, Daemon
from tests.conftest import run


async def _raw(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
    await reader.readline()
    return reader, writer


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, msg: str) -> Any:
    writer.write(msg.encode())
    await writer.drain()
    return json.loads(await asyncio.wait_for(reader.readline(), 60))


def with_daemon(tmp: Path, n: int, body: Any) -> None:
    """Run ``await body(daemon, socket_paths)`` with ``n`` monitors, then shut down."""
    async def go() -> None:
        daemon, paths = await _daemon(tmp, n)
        try:
            await body(daemon, paths)
        finally:
            await daemon.shutdown()
    run(go())


async def _daemon(tmp: Path, n: int) -> tuple[Daemon, list[Path]]:
    daemon = Daemon()
    paths = []
    for i in range(n):
        dev = Chardev(f"m{i}", path=str(tmp / f"m{i}.sock"))
        daemon.chardevs[dev.id] = dev
        await daemon.add_monitor(dev)
        paths.append(tmp / f"m{i}.sock")
    return daemon, paths


def test_monitors_negotiate_separately(tmp_path: Path) -> None:
    async def body(daemon: Daemon, paths: list[Path]) -> None:
        a, b = paths
        ra, wa = await _raw(a)
        rb, wb = await _raw(b)
        assert "return" in await _call(ra, wa, '{"execute":"qmp_capabilities"}')
        refused = await _call(rb, wb, '{"execute":"query-version"}')
        assert refused["error"]["class"] == "CommandNotFound"
        assert "return" in await _call(ra, wa, '{"execute":"query-version"}')
        daemon.emit("BLOCK_EXPORT_DELETED", {"id": "x"})
        ev = json.loads(await asyncio.wait_for(ra.readline(), 60))
        assert ev["event"] == "BLOCK_EXPORT_DELETED" and ev["data"] == {"id": "x"}
        assert "return" in await _call(rb, wb, '{"execute":"qmp_capabilities"}')
        for w in (wa, wb):
            w.close()
    with_daemon(tmp_path, 2, body)


def test_qmp_client_unchanged(tmp_path: Path) -> None:
    async def body(daemon: Daemon, paths: list[Path]) -> None:
        a, = paths
        client = QMPClient("t")
        await client.connect(str(a))
        assert (await client.execute("query-version"))["qemu"]["major"] == 7
        names = [c["name"] for c in await client.execute("query-commands")]
        assert len(names) == 74 and names[0] == "transaction"
        await client.execute("blockdev-add", {"driver": "null-co", "node-name": "n"})
        await client.execute("block-set-write-threshold",
                             {"node-name": "n", "write-threshold": 512})
        await daemon.graph.nodes["n"].write(0, b"x" * 4096)
        async with asyncio.timeout(60):
            event = await client.events.get()
        assert event["event"] == "BLOCK_WRITE_THRESHOLD"
        assert event["data"] == {"node-name": "n", "amount-exceeded": 3584,
                                 "write-threshold": 512}
        await client.disconnect()
    with_daemon(tmp_path, 1, body)


def test_pipelining_without_reading_is_bounded(tmp_path: Path) -> None:
    async def body(daemon: Daemon, paths: list[Path]) -> None:
        a, b = paths
        ra, wa = await _raw(a)
        await _call(ra, wa, '{"execute":"qmp_capabilities"}')
        n = 300
        wa.write(b'{"execute":"query-qmp-schema"}' * n)   # ~30 MiB of replies, unread
        rb, wb = await _raw(b)
        await _call(rb, wb, '{"execute":"qmp_capabilities"}')
        for _ in range(5):                 # the other monitor is served meanwhile
            assert "return" in await _call(rb, wb, '{"execute":"query-version"}')
        server = daemon.chardevs["m0"].monitor
        assert server is not None
        (session,) = server.sessions
        buffered = session.writer.transport.get_write_buffer_size()
        assert buffered < 4 << 20          # a reply or two, not 300
        got = 0
        while got < n:
            line = await asyncio.wait_for(ra.readline(), 60)
            assert json.loads(line)["return"][0]["name"] == "query-block"
            got += 1
        wa.close()
        wb.close()
    with_daemon(tmp_path, 2, body)


def test_disconnect_mid_command(tmp_path: Path) -> None:
    async def body(daemon: Daemon, paths: list[Path]) -> None:
        a, b = paths
        release, done = asyncio.Event(), asyncio.Event()

        async def slow(ctx: Any, args: dict[str, Any]) -> Any:
            await release.wait()
            done.set()
            return []
        daemon.dispatcher.handlers["query-jobs"] = slow
        ra, wa = await _raw(a)
        await _call(ra, wa, '{"execute":"qmp_capabilities"}')
        wa.write(b'{"execute":"query-jobs"}')
        await wa.drain()
        await asyncio.sleep(0)
        wa.close()                        # gone before the reply
        rb, wb = await _raw(b)
        await _call(rb, wb, '{"execute":"qmp_capabilities"}')
        assert "return" in await _call(rb, wb, '{"execute":"query-version"}')
        release.set()
        await asyncio.wait_for(done.wait(), 60)
        server = daemon.chardevs["m0"].monitor
        assert server is not None
        for _ in range(100):
            if not server.sessions:
                break
            await asyncio.sleep(0.01)
        assert not server.sessions
        ra, wa = await _raw(a)             # the monitor takes a new client
        assert "return" in await _call(ra, wa, '{"execute":"qmp_capabilities"}')
        wa.close()
        wb.close()
    with_daemon(tmp_path, 2, body)
