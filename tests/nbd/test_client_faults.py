"""Faults on the client side: servers that die mid-I/O, come back, or break the
protocol; many requests in flight on one connection."""
from __future__ import annotations

import asyncio
import errno
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from blocklayer.core.errors import BlockError
from blocklayer.core.node import BlockNode
from blocklayer.core.open import open_image
from blocklayer.nbd import wire
from blocklayer.nbd.client import MAX_REQUESTS, NBDClient

from ..conftest import ROOT, need
from .test_client import nbdkit, qemu_nbd, unix_url

MiB = 1 << 20
BOUND = 60          # no test may wait longer than this for anything (a hang fails it)


def _client(node: BlockNode) -> NBDClient:
    proto = node if node.format_name == "nbd" else node.file
    assert proto is not None
    client = proto.driver.client         # type: ignore[attr-defined]
    assert isinstance(client, NBDClient)
    return client


async def _wait_in_flight(client: NBDClient, n: int) -> None:
    async def poll() -> None:
        while len(client._pending) < n:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), BOUND)


def _raw(path: Path, size: int = 4 * MiB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_many_requests_in_flight_on_one_connection(tmp_path: Path) -> None:
    image = _raw(tmp_path / "a.raw")
    rng = random.Random(7)

    async def main() -> None:
        with qemu_nbd(tmp_path, image) as sock:
            node = await open_image(unix_url(sock), fmt="raw")
            try:
                client = _client(node)
                blocks = [(i * 65536, bytes([rng.randrange(1, 256)]) * 65536)
                          for i in range(64)]
                writes = [asyncio.ensure_future(node.write(off, data))
                          for off, data in blocks]
                await asyncio.sleep(0)
                assert len(client._pending) == MAX_REQUESTS     # the rest wait their turn
                await asyncio.wait_for(asyncio.gather(*writes), BOUND)
                rng.shuffle(blocks)
                reads = await asyncio.wait_for(asyncio.gather(
                    *(node.read(off, 65536) for off, _ in blocks)), BOUND)
                assert [bytes(r) for r in reads] == [data for _, data in blocks]
            finally:
                await node.close()
    asyncio.run(main())


def test_server_killed_with_requests_in_flight(tmp_path: Path) -> None:
    """Reads held by the server (nbdkit's delay filter) when it dies fail with EIO, and
    so does every later request; nothing hangs."""
    async def main() -> None:
        with nbdkit(tmp_path, "--filter=delay", "memory", "size=4M", "rdelay=30") as sock:
            server = _server_proc(sock)
            node = await open_image(None, {"driver": "nbd", "server.type": "unix",
                                           "server.path": str(sock)})
            try:
                reads = [asyncio.ensure_future(node.read(i * 4096, 4096)) for i in range(8)]
                await _wait_in_flight(_client(node), 8)
                server.kill()
                results = await asyncio.wait_for(
                    asyncio.gather(*reads, return_exceptions=True), BOUND)
                for result in results:
                    assert isinstance(result, BlockError) and result.errno == errno.EIO
                with pytest.raises(BlockError) as later:
                    await asyncio.wait_for(node.write(0, b"x" * 512), BOUND)
                assert later.value.errno == errno.EIO
            finally:
                await node.close()
    asyncio.run(main())


def _server_proc(sock: Path) -> Any:
    """The server process listening on ``sock`` (the one the fixture started)."""
    for proc in _STARTED:
        if str(sock) in list(proc.args):  # type: ignore[arg-type]
            return proc
    raise AssertionError("server not found")


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _track_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember the servers test_client.serve() starts, to kill one mid-test."""
    from . import test_client
    real = subprocess.Popen

    def popen(*args: Any, **kw: Any) -> subprocess.Popen[bytes]:
        proc = real(*args, **kw)
        _STARTED.append(proc)
        return proc
    _STARTED.clear()
    monkeypatch.setattr(test_client.subprocess, "Popen", popen)


def test_io_tool_after_the_server_dies(tmp_path: Path) -> None:
    """blocklayer-io prints qemu-io's errors for a server that went away (qemu-io 7.2
    prints the same lines) and exits 1.  The server (nbdkit, logging its requests) is
    killed once it has answered the first read, while the tool sleeps."""
    log = tmp_path / "requests.log"
    out_path = tmp_path / "io.out"
    with nbdkit(tmp_path, "--filter=log", "memory", "size=4M", f"logfile={log}") as sock, \
            open(out_path, "w") as out:
        server = _server_proc(sock)
        io = subprocess.Popen(
            [sys.executable, "-m", "blocklayer.tools.io", "-f", "raw", "-c", "read 0 64k",
             "-c", "sleep 3000", "-c", "read 0 64k", "-c", "write 0 64k",
             unix_url(sock)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + BOUND
            while time.monotonic() < deadline and \
                    not re.search(r"Read .*return=0", log.read_text() if log.exists() else ""):
                time.sleep(0.01)
            server.kill()                   # while the tool sleeps
            server.wait(BOUND)
            io.wait(BOUND)
        finally:
            if io.poll() is None:
                io.kill()
                io.wait()
    lines = [line for line in out_path.read_text().splitlines() if " ops; " not in line]
    assert lines == ["read 65536/65536 bytes at offset 0", "read failed: Input/output error",
                     "write failed: Input/output error"]
    assert io.returncode == 1


def test_reconnect_delay_resends_what_the_connection_lost(tmp_path: Path) -> None:
    """With reconnect-delay, a request sent while the server is away waits for it to
    come back on the same socket, and succeeds."""
    image = _raw(tmp_path / "a.raw")

    async def main() -> None:
        with qemu_nbd(tmp_path, image) as sock:
            node = await open_image(None, {
                "driver": "raw", "file.driver": "nbd", "file.server.type": "unix",
                "file.server.path": str(sock), "file.reconnect-delay": 30})
            await node.write(0, b"\x11" * 4096)
            server = _server_proc(sock)
        try:
            assert server.poll() is not None           # gone: the block above ended
            os.unlink(sock)
            pending = asyncio.ensure_future(node.read(0, 4096))
            await asyncio.sleep(0.3)
            assert not pending.done()
            with qemu_nbd(tmp_path, image):
                data = await asyncio.wait_for(pending, BOUND)
                assert bytes(data) == b"\x11" * 4096
                await node.write(4096, b"\x22" * 4096)
        finally:
            await node.close()
        assert image.read_bytes()[4096:8192] == b"\x22" * 4096
    asyncio.run(main())


# -- servers that break the protocol ---------------------------------------------------

async def _fake_server(sock: Path, script: Any) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
    return await asyncio.start_unix_server(handle, str(sock))


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     size: int = MiB) -> None:
    """Just enough of a server: greeting, then every option but GO refused, GO ok."""
    writer.write(wire.Greeting(wire.HandshakeFlag.FIXED_NEWSTYLE
                               | wire.HandshakeFlag.NO_ZEROES).build())
    await reader.readexactly(4)
    while True:
        hdr = wire.OptionHeader.parse(await reader.readexactly(16))
        await reader.readexactly(hdr.length)
        if hdr.option != wire.Opt.GO:
            writer.write(wire.OptionReplyHeader(hdr.option, wire.Rep.ERR_UNSUP, 0).build())
            continue
        info = wire.InfoExport(size, wire.TransmissionFlag.HAS_FLAGS).build()
        writer.write(wire.OptionReplyHeader(hdr.option, wire.Rep.INFO, len(info)).build()
                     + info + wire.OptionReplyHeader(hdr.option, wire.Rep.ACK, 0).build())
        return


@pytest.mark.parametrize("reply", ["garbage", "wrong cookie", "short read"])
def test_server_breaking_the_protocol_fails_requests(tmp_path: Path, reply: str) -> None:
    sock = tmp_path / "fake.sock"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handshake(reader, writer)
        req = wire.RequestHeader.parse(await reader.readexactly(28))
        if reply == "garbage":
            writer.write(b"\xde\xad\xbe\xef" * 8)
        elif reply == "wrong cookie":
            writer.write(wire.SimpleReplyHeader(0, req.cookie + 1).build())
        else:
            writer.write(wire.SimpleReplyHeader(0, req.cookie).build() + b"x" * 10)
            writer.close()
            return
        await reader.read()              # hold the connection open

    async def main() -> None:
        server = await _fake_server(sock, script)
        try:
            node = await open_image(None, {"driver": "nbd", "server.type": "unix",
                                           "server.path": str(sock)}, read_only=True)
            try:
                with pytest.raises(BlockError) as failed:
                    await asyncio.wait_for(node.read(0, 512), BOUND)
                assert failed.value.errno == errno.EIO
                with pytest.raises(BlockError):
                    await asyncio.wait_for(node.read(0, 512), BOUND)
            finally:
                await node.close()
        finally:
            server.close()
    asyncio.run(main())


def test_server_hanging_up_during_the_handshake(tmp_path: Path) -> None:
    sock = tmp_path / "fake.sock"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(wire.Greeting(wire.HandshakeFlag.FIXED_NEWSTYLE).build())
        await reader.readexactly(4)
        writer.close()

    async def main() -> None:
        server = await _fake_server(sock, script)
        try:
            with pytest.raises(BlockError):
                await asyncio.wait_for(open_image(None, {
                    "driver": "nbd", "server.type": "unix", "server.path": str(sock)}),
                    BOUND)
        finally:
            server.close()
    asyncio.run(main())


def test_open_timeout_waits_for_a_server_to_appear(tmp_path: Path) -> None:
    need("qemu-nbd")
    image = _raw(tmp_path / "a.raw")
    sock = tmp_path / "late.sock"

    async def main() -> None:
        opening = asyncio.ensure_future(open_image(None, {
            "driver": "nbd", "server.type": "unix", "server.path": str(sock),
            "open-timeout": 30}))
        await asyncio.sleep(0.5)
        assert not opening.done()
        with qemu_nbd(tmp_path, image, name="late.sock"):
            node = await asyncio.wait_for(opening, BOUND)
            assert node.total_bytes == 4 * MiB
            await node.close()
    asyncio.run(main())
