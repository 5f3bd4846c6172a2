"""NBD exports of the storage daemon against Debian's qemu-storage-daemon 7.2: the same
QMP sessions (server start/stop, export add/del and their errors, query-block-exports,
events) with NBD clients (libnbd) connected in between; every reply, error, event and
byte read compared, the images left checked and compared with qemu-img."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient

from tests.conftest import qemu_img
from tests.daemon.harness import Normaliser, _matches, diff
from tests.nbd.servers import DIST_PACKAGES
from tests.nbd.test_tls import certs  # noqa: F401 -- the fixture
from tests.qmp.qsd import daemon

Step = tuple[Any, ...]


def nbd_module() -> Any:
    if not os.path.exists(os.path.join(DIST_PACKAGES, "nbd.py")):
        pytest.skip("python3-libnbd is not installed")
    if DIST_PACKAGES not in sys.path:
        sys.path.append(DIST_PACKAGES)
    import nbd
    return nbd


def cmd(name: str, args: dict[str, Any] | None = None) -> Step:
    return ("cmd", name, args or {})


def F(path: str) -> dict[str, Any]:
    return {"driver": "file", "filename": path}


def unix(path: str) -> dict[str, Any]:
    return {"addr": {"type": "unix", "data": {"path": path}}}


class Clients:
    """libnbd handles by label, each on an export of the daemon's NBD socket."""

    def __init__(self, work: Path) -> None:
        self.nbd = nbd_module()
        self.work = work
        self.handles: dict[str, Any] = {}

    def run(self, step: Step) -> Any:
        kind, label = step[0], step[1]
        try:
            if kind == "connect":
                h = self.nbd.NBD()
                h.set_export_name(step[2])
                for context in step[3:]:
                    h.add_meta_context(context)
                h.connect_unix(str(self.work / "nbd.sock"))
                self.handles[label] = h
                return {"size": h.get_size(), "ro": h.is_read_only()}
            h = self.handles.get(label)
            if h is None:
                return "not connected"
            if kind == "write":
                h.pwrite(step[2], step[3])
                h.flush()
                return "ok"
            if kind == "read":
                return h.pread(step[2], step[3])
            if kind == "map":
                return self.map(h, step[2])
            if kind == "close":
                del self.handles[label]
                h.shutdown()
                return "closed"
        except self.nbd.Error as exc:
            return f"nbd error: {exc.errno}"
        raise AssertionError(step)

    def map(self, h: Any, context: str) -> list[Any]:
        """Every extent of one metadata context, from block status over the export."""
        out: list[Any] = []
        offset, size = 0, h.get_size()

        def got(meta: str, at: int, entries: list[int], err: Any) -> int:
            if meta == context:
                out.append((at, entries))
            return 0
        while offset < size:
            before = len(out)
            h.block_status(size - offset, offset, got)
            if len(out) == before:
                raise AssertionError(f"no {context} extents at {offset}")
            offset += sum(out[-1][1][0::2])
        return out

    def close(self) -> None:
        self.handles.clear()          # libnbd closes a handle when it is collected


async def session(work: Path, sock: Path, steps: list[Step]) -> list[Any]:
    norm = Normaliser(work)
    client = QMPClient("exports")
    listener = EventListener()
    client.register_listener(listener)
    await client.connect(str(sock))
    nbd = Clients(work)
    out: list[Any] = []
    try:
        for step in steps:
            if step[0] == "wait":
                events = out[-1][2]
                while not any(_matches(e, step) for e in events):
                    events.append(norm(dict(await asyncio.wait_for(listener.get(), 60))))
                continue
            if step[0] == "cmd":
                _, name, args = step
                try:
                    reply: Any = {"return": await client.execute(name, args)}
                except ExecuteError as exc:
                    reply = {"error": {"class": exc.error_class, "desc": exc.error.error.desc}}
            else:
                name, reply = f"{step[0]} {step[1]}", nbd.run(step)
            await client.execute("query-version")       # a barrier for the events
            events = []
            while not listener.empty():
                events.append(norm(dict(await listener.get())))
            out.append((name, norm(reply), events))
    finally:
        nbd.close()
        await client.disconnect()
    return out


def images(work: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", str(work / "a.qcow2"), "16M")
    qemu_img("create", "-q", "-f", "qcow2", str(work / "b.qcow2"), "16M")
    qemu_img("create", "-q", "-f", "raw", str(work / "c.raw"), "4M")
    qemu_img("bitmap", "--add", str(work / "a.qcow2"), "b0")


def run_both(tmp: Path, steps: list[Step], *extra: str) -> tuple[list[Any], list[Any]]:
    results = []
    for which in ("qsd", "ours"):
        work = tmp / which
        work.mkdir()
        images(work)
        with daemon(which, work, *extra) as sock:
            results.append(asyncio.run(asyncio.wait_for(session(work, sock, steps), 120)))
    return results[0], results[1]


def check_images(tmp: Path, names: list[str]) -> None:
    for name in names:
        a, b = tmp / "qsd" / name, tmp / "ours" / name
        fmt = "qcow2" if name.endswith(".qcow2") else "raw"
        if fmt == "qcow2":
            qemu_img("check", "-f", fmt, str(b))
        qemu_img("compare", "-f", fmt, "-F", fmt, str(a), str(b))


def same(tmp: Path, steps: list[Step], *extra: str) -> None:
    a, b = run_both(tmp, steps, *extra)
    assert diff(a, b) == []


NODES = [
    cmd("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": F("a.qcow2")}),
    cmd("blockdev-add", {"driver": "qcow2", "node-name": "ro", "file": F("b.qcow2"),
                         "read-only": True}),
    cmd("blockdev-add", {"driver": "raw", "node-name": "c", "file": F("c.raw")}),
]


def test_server_and_export_errors(tmp_path: Path) -> None:
    long = "x" * 4097
    same(tmp_path, NODES + [
        cmd("block-export-add", {"type": "nbd", "id": "e1", "node-name": "a"}),
        cmd("nbd-server-stop"),
        cmd("nbd-server-add", {"device": "a"}),
        cmd("nbd-server-start", unix("nbd.sock")),
        cmd("nbd-server-start", unix("nbd2.sock")),
        cmd("block-export-add", {"type": "nbd", "id": "e1", "node-name": "a", "writable": True}),
        cmd("block-export-add", {"type": "nbd", "id": "e1", "node-name": "a"}),
        cmd("block-export-add", {"type": "nbd", "id": "e2", "node-name": "a"}),
        cmd("block-export-add", {"type": "nbd", "id": "e3", "node-name": "a", "name": "e1"}),
        cmd("block-export-add", {"type": "nbd", "id": "e4", "node-name": "nope"}),
        cmd("block-export-add", {"type": "nbd", "id": "e5", "node-name": "ro",
                                 "writable": True}),
        cmd("block-export-add", {"type": "nbd", "id": "e6", "node-name": "ro", "name": long}),
        cmd("block-export-add", {"type": "nbd", "id": "e7", "node-name": "ro",
                                 "name": "x" * 4096}),
        cmd("block-export-add", {"type": "nbd", "id": "e8", "node-name": "ro",
                                 "description": long}),
        cmd("block-export-add", {"type": "nbd", "id": "e8", "node-name": "ro",
                                 "bitmaps": ["nob"]}),
        cmd("block-export-add", {"type": "nbd", "id": "eb", "node-name": "a",
                                 "name": "bm", "bitmaps": ["b0"]}),
        cmd("block-export-add", {"type": "nbd", "id": "eb", "node-name": "a",
                                 "name": "bm", "bitmaps": ["b0"], "writable": True}),
        cmd("block-export-del", {"id": "eb"}),
        cmd("block-export-add", {"type": "nbd", "id": "e9", "node-name": "ro",
                                 "allocation-depth": True, "description": "d"}),
        cmd("block-export-add", {"type": "nbd", "id": "#bad", "node-name": "ro"}),
        cmd("block-export-add", {"type": "nbd", "id": "", "node-name": "ro"}),
        cmd("block-export-add", {"type": "nbd", "id": "9x", "node-name": "ro"}),
        cmd("query-block-exports"),
        cmd("blockdev-del", {"node-name": "a"}),
        cmd("blockdev-del", {"node-name": "ro"}),
        cmd("nbd-server-add", {"device": "ro", "name": "legacy"}),
        cmd("nbd-server-add", {"device": "ro"}),
        cmd("nbd-server-add", {"device": "c", "writable": True, "description": "cc"}),
        cmd("query-block-exports"),
        cmd("nbd-server-remove", {"name": "legacy"}),
        cmd("nbd-server-remove", {"name": "nosuch"}),
        cmd("block-export-del", {"id": "nosuch"}),
        cmd("block-export-del", {"id": "e1", "mode": "hard"}),
        cmd("block-export-del", {"id": "e1"}),
        cmd("query-block-exports"),
        cmd("nbd-server-stop"),
        cmd("query-block-exports"),
        cmd("blockdev-del", {"node-name": "a"}),
        cmd("nbd-server-stop"),
        cmd("nbd-server-remove", {"name": "ro"}),
        cmd("nbd-server-start", {**unix("nbd.sock"), "tls-creds": "nosuch"}),
        cmd("nbd-server-start", {"addr": {"type": "inet",
                                          "data": {"host": "127.0.0.1", "port": "0"}}}),
        cmd("nbd-server-stop"),
        cmd("nbd-server-start", {**unix("nbd.sock"), "max-connections": 2}),
        cmd("block-export-add", {"type": "nbd", "id": "e1", "node-name": "c",
                                 "writable": True}),
        cmd("query-block-exports"),
        cmd("query-blockstats"),
    ])


def test_bitmap_exports(tmp_path: Path) -> None:
    """Persistent and run-time bitmaps exported, busy while exported, their contexts
    recording writes made through the export."""
    ctx = "qemu:dirty-bitmap:"
    same(tmp_path, NODES + [
        cmd("nbd-server-start", unix("nbd.sock")),
        cmd("block-dirty-bitmap-add", {"node": "c", "name": "r", "granularity": 4096}),
        cmd("block-dirty-bitmap-add", {"node": "c", "name": "off", "disabled": True}),
        cmd("block-export-add", {"type": "nbd", "id": "ec", "node-name": "c",
                                 "bitmaps": ["r"]}),
        cmd("block-export-add", {"type": "nbd", "id": "ec", "node-name": "c",
                                 "writable": True, "bitmaps": ["r", "off", "nope"]}),
        cmd("block-export-add", {"type": "nbd", "id": "ec", "node-name": "c",
                                 "writable": True, "bitmaps": ["r", "off"]}),
        cmd("block-export-add", {"type": "nbd", "id": "ea", "node-name": "a",
                                 "writable": True, "bitmaps": ["b0"]}),
        cmd("query-named-block-nodes", {"flat": True}),
        cmd("block-dirty-bitmap-remove", {"node": "c", "name": "r"}),
        cmd("block-dirty-bitmap-clear", {"node": "c", "name": "off"}),
        ("connect", "w", "c", ctx + "r", ctx + "off"),
        ("connect", "q", "a", ctx + "b0"),
        ("write", "w", b"\x01" * 5000, 12288),
        ("write", "w", b"\x02" * 512, 1 << 20),
        ("map", "w", ctx + "r"),
        ("map", "w", ctx + "off"),
        ("write", "q", b"\x03" * 70000, 65536 * 3 - 100),
        ("map", "q", ctx + "b0"),
        ("close", "w"), ("close", "q"),
        cmd("block-export-del", {"id": "ec"}),
        cmd("block-export-del", {"id": "ea"}),
        cmd("x-debug-block-dirty-bitmap-sha256", {"node": "c", "name": "r"}),
        cmd("block-dirty-bitmap-remove", {"node": "c", "name": "r"}),
        cmd("query-named-block-nodes", {"flat": True}),
    ])


def test_clients_and_deletion(tmp_path: Path) -> None:
    """Data through exports, and deleting exports with clients on them (safe, hard,
    server stop): events when the export really goes."""
    data = bytes(range(256)) * 256
    same(tmp_path, NODES + [
        cmd("nbd-server-start", unix("nbd.sock")),
        cmd("block-export-add", {"type": "nbd", "id": "ea", "node-name": "a",
                                 "writable": True}),
        cmd("block-export-add", {"type": "nbd", "id": "er", "node-name": "ro",
                                 "name": "ron"}),
        cmd("block-export-add", {"type": "nbd", "id": "ec", "node-name": "c",
                                 "writable": True}),
        ("connect", "w", "a"),
        ("connect", "r", "ron"),
        ("connect", "x", "nosuch"),
        ("write", "w", data, 4096),
        ("read", "w", 65536, 0),
        ("write", "r", data, 0),
        ("read", "r", 4096, 0),
        cmd("query-blockstats", {"query-nodes": True}),
        cmd("block-export-del", {"id": "ea"}),
        cmd("query-block-exports"),
        cmd("block-export-del", {"id": "er", "mode": "hard"}),
        ("read", "r", 4096, 0),
        cmd("query-block-exports"),
        ("write", "w", data, 8192),
        ("close", "w"),
        cmd("block-export-del", {"id": "ea", "mode": "safe"}),
        cmd("query-block-exports"),
        ("connect", "c1", "c"),
        ("connect", "c2", "c"),
        ("write", "c1", data, 0),
        ("read", "c2", 65536, 0),
        cmd("nbd-server-stop"),
        ("read", "c2", 4096, 0),
        cmd("query-block-exports"),
        cmd("blockdev-del", {"node-name": "c"}),
        cmd("blockdev-del", {"node-name": "a"}),
    ])
    check_images(tmp_path, ["a.qcow2", "b.qcow2", "c.raw"])


def test_command_line_exports(tmp_path: Path) -> None:
    """--nbd-server and --export: the export is there at start and serves data."""
    same(tmp_path, [
        cmd("query-block-exports"),
        ("connect", "w", "cx"),
        ("write", "w", b"\x5a" * 65536, 0),
        ("read", "w", 65536, 0),
        ("close", "w"),
        cmd("block-export-del", {"id": "ex"}),
        cmd("nbd-server-stop"),
    ], "--blockdev", "driver=file,node-name=cf,filename=c.raw",
        "--nbd-server", "addr.type=unix,addr.path=nbd.sock,max-connections=4",
        "--export", "type=nbd,id=ex,node-name=cf,name=cx,writable=on,description=x")
    check_images(tmp_path, ["c.raw"])


def test_export_follows_a_snapshot(tmp_path: Path) -> None:
    """blockdev-snapshot-sync under an export with a client on it: the export moves to
    the overlay (query-block-exports names it), the client's writes land there."""
    data = b"\xa5" * 65536
    same(tmp_path, NODES + [
        cmd("nbd-server-start", unix("nbd.sock")),
        cmd("block-export-add", {"type": "nbd", "id": "ea", "node-name": "a",
                                 "writable": True}),
        ("connect", "w", "a"),
        ("write", "w", data, 0),
        cmd("blockdev-snapshot-sync", {"node-name": "a", "snapshot-file": "s.qcow2",
                                       "snapshot-node-name": "s", "format": "qcow2"}),
        cmd("query-block-exports"),
        ("write", "w", data[:4096], 1 << 20),
        ("read", "w", 65536, 0),
        ("close", "w"),
        cmd("blockdev-del", {"node-name": "s"}),
        cmd("block-export-del", {"id": "ea"}),
        cmd("blockdev-del", {"node-name": "s"}),
    ])
    check_images(tmp_path, ["a.qcow2", "s.qcow2"])


@pytest.mark.parametrize("identity", ["C=GB,,O=Test,,CN=client", "CN=someone"])
def test_tls_exports(tmp_path: Path, certs: Path, identity: str) -> None:  # noqa: F811
    """--object tls-creds-x509/authz-simple and nbd-server-start tls-creds/tls-authz:
    QEMU's TLS client gets in with an allowed certificate, a plain client never."""
    import subprocess

    from tests.conftest import need
    seen = []
    for which in ("qsd", "ours"):
        work = tmp_path / which
        work.mkdir()
        images(work)
        with daemon(which, work, "--object",
                    f"tls-creds-x509,id=tls0,dir={certs},endpoint=server",
                    "--object", f"authz-simple,id=a0,identity={identity}") as sock:
            replies = asyncio.run(session(work, sock, NODES + [
                cmd("nbd-server-start", {**unix("nbd.sock"), "tls-creds": "nosuch"}),
                cmd("nbd-server-start", {**unix("nbd.sock"), "tls-creds": "tls0",
                                         "tls-authz": "a0"}),
                cmd("block-export-add", {"type": "nbd", "id": "e", "node-name": "c",
                                         "writable": True}),
            ]))
            opts = (f"driver=nbd,server.type=unix,server.path={work}/nbd.sock,export=c,"
                    "tls-creds=tls0,tls-hostname=localhost")
            io = subprocess.run(
                [need("qemu-io"), "--object",
                 f"tls-creds-x509,id=tls0,dir={certs},endpoint=client", "--image-opts", opts,
                 "-c", "write -P 7 0 64k", "-c", "read -P 7 0 64k"],
                check=False, capture_output=True, text=True, timeout=60)
            plain = subprocess.run(
                [need("nbdinfo"), "--size", f"nbd+unix:///c?socket={work}/nbd.sock"],
                check=False, capture_output=True, text=True, timeout=60)
        seen.append((replies, io.returncode, "read 65536/65536" in io.stdout,
                     plain.returncode != 0))
    assert seen[0] == seen[1]
    assert seen[0][1] == (0 if identity.endswith("CN=client") else 1)
    check_images(tmp_path, ["c.raw"])
