"""The storage daemon under load: 8 NBD clients (libnbd) write random data to one
export while a QMP client changes the graph around it (blockdev-reopen of an
unexported node, internal snapshots of the exported one, external snapshots of
another, exports of other nodes added and deleted).  Afterwards every acknowledged
write reads back and every image checks clean.  Then the same load and a SIGKILL:
``blocklayer-img check -r all`` repairs at most leaked clusters and every write
flushed before the kill reads back.

Bounded in time: BLOCKLAYER_LOAD_SECONDS (default 20; the issue's figure is 60)."""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from tests.conftest import ROOT, qemu_img
from tests.daemon.test_exports import nbd_module
from tests.qmp.qsd import wait_listening

SECONDS = float(os.environ.get("BLOCKLAYER_LOAD_SECONDS", "20"))
CLIENTS = 8
REGION = 4 << 20                       # each client writes its own region
SECTOR = 512
SIZE = CLIENTS * REGION


class Writer(threading.Thread):
    """One NBD client: random writes into its region, a flush now and then.  Keeps,
    per sector, the last value flushed and the values written since."""

    def __init__(self, nbd: Any, uri: str, index: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.h = nbd.NBD()
        self.h.connect_uri(uri)
        self.base = index * REGION
        self.rng = random.Random(index)
        self.stop = stop
        self.acked = bytearray(REGION)           # every acknowledged write applied
        self.durable: list[bytes | None] = [None] * (REGION // SECTOR)   # None: zeroes
        self.since: list[list[bytes]] = [[] for _ in range(REGION // SECTOR)]
        self.writes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._write()
                if self.writes % 16 == 0:
                    self._flush()
        except Exception as exc:  # noqa: BLE001 -- the daemon killed: reported if unexpected
            self.error = exc

    def _write(self) -> None:
        n = self.rng.randrange(1, 129) * SECTOR
        off = self.rng.randrange(0, (REGION - n) // SECTOR + 1) * SECTOR
        data = self.rng.randbytes(n)
        # recorded before it is sent: a write in flight when the daemon is killed may
        # have reached the image (it was not acknowledged, so either value is allowed)
        for i in range(n // SECTOR):
            self.since[off // SECTOR + i].append(data[i * SECTOR:(i + 1) * SECTOR])
        self.h.pwrite(data, self.base + off)
        self.acked[off:off + n] = data
        self.writes += 1

    def _flush(self) -> None:
        pending = [i for i, s in enumerate(self.since) if s]
        self.h.flush()
        for i in pending:
            self.durable[i] = bytes(self.acked[i * SECTOR:(i + 1) * SECTOR])
            self.since[i] = []

    def check_acked(self, data: bytes) -> None:
        assert data == bytes(self.acked), f"client at {self.base}: acknowledged writes lost"

    def check_durable(self, data: bytes) -> None:
        """Every sector holds its flushed value or one written after the last flush."""
        zero = bytes(SECTOR)
        for i, durable in enumerate(self.durable):
            got = data[i * SECTOR:(i + 1) * SECTOR]
            allowed = [durable or zero, *self.since[i]]
            assert got in allowed, f"sector {self.base // SECTOR + i}: flushed data lost"


def images(work: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", str(work / "a.qcow2"), str(SIZE))
    for name in ("x", "y"):
        qemu_img("create", "-q", "-f", "qcow2", str(work / f"{name}.qcow2"), "8M")


def start(work: Path) -> subprocess.Popen[str]:
    sock = work / "qmp.sock"
    nodes = []
    for name in ("a", "x", "y"):
        nodes += ["--blockdev", f"driver=file,node-name={name}f,filename={name}.qcow2",
                  "--blockdev", f"driver=qcow2,node-name={name},file={name}f"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "blocklayer.tools.daemon", "--chardev",
         f"socket,id=m0,path={sock},server=on,wait=off", "--monitor", "chardev=m0", *nodes,
         "--nbd-server", f"addr.type=unix,addr.path={work}/nbd.sock",
         "--export", "type=nbd,id=load,node-name=a,writable=on"],
        cwd=work, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wait_listening(sock, proc)
    wait_listening(work / "nbd.sock", proc)     # the options after --monitor are applied
    return proc


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    return err


async def graph_changes(work: Path, until: float) -> list[str]:
    """The QMP side of the load; every command must succeed.  The export's nodes, top
    last (external snapshots put overlays under it)."""
    client = QMPClient("load")
    await client.connect(str(work / "qmp.sock"))
    tops = ["a"]
    internal: list[str] = []
    try:
        i = 0
        while time.monotonic() < until:
            i += 1
            await client.execute("blockdev-reopen", {"options": [
                {"driver": "qcow2", "node-name": "x", "file": "xf", "read-only": i % 2 == 1}]})
            if i % 4 == 0 and len(tops) < 4:
                internal = []
                await client.execute("blockdev-snapshot-sync", {
                    "node-name": tops[-1], "format": "qcow2", "snapshot-node-name": f"a{i}",
                    "snapshot-file": str(work / f"a{i}.qcow2")})
                tops.append(f"a{i}")
            await client.execute("blockdev-snapshot-internal-sync",
                                 {"device": tops[-1], "name": f"s{i}"})
            internal.append(f"s{i}")
            if len(internal) > 2:
                await client.execute("blockdev-snapshot-delete-internal-sync",
                                     {"device": tops[-1], "name": internal.pop(0)})
            await client.execute("block-export-add", {"type": "nbd", "id": "ey",
                                                      "node-name": "y", "writable": True})
            exports = await client.execute("query-block-exports")
            assert [(e["id"], e["node-name"]) for e in exports] == \
                [("ey", "y"), ("load", tops[-1])], exports  # type: ignore[index,union-attr]
            await client.execute("block-export-del", {"id": "ey"})
            await asyncio.sleep(0.05)
    finally:
        await client.disconnect()
    return tops


def load(work: Path, seconds: float) -> tuple[list[Writer], list[str]]:
    nbd = nbd_module()
    stopping = threading.Event()
    writers = [Writer(nbd, f"nbd+unix:///a?socket={work}/nbd.sock", i, stopping)
               for i in range(CLIENTS)]
    for w in writers:
        w.start()
    try:
        tops = asyncio.run(asyncio.wait_for(
            graph_changes(work, time.monotonic() + seconds), seconds + 120))
    finally:
        stopping.set()
        for w in writers:
            w.join(60)
    return writers, tops


def image_data(work: Path, name: str) -> bytes:
    raw = work / f"{name}.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(work / name), str(raw))
    try:
        return raw.read_bytes()
    finally:
        raw.unlink()


def check_clean(work: Path) -> None:
    for image in sorted(work.glob("*.qcow2")):
        qemu_img("check", "-q", "-f", "qcow2", str(image))


def test_graph_changes_under_nbd_load(tmp_path: Path) -> None:
    images(tmp_path)
    proc = start(tmp_path)
    try:
        writers, tops = load(tmp_path, SECONDS)
        assert len(tops) > 1
        for w in writers:
            assert w.error is None, w.error
            assert w.writes > 0
            w.check_acked(w.h.pread(REGION, w.base))     # read back through the export
            w.h.shutdown()
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    data = image_data(tmp_path, f"{tops[-1]}.qcow2")
    for w in writers:
        w.check_acked(data[w.base:w.base + REGION])
    check_clean(tmp_path)


def test_sigkill_under_load(tmp_path: Path) -> None:
    images(tmp_path)
    proc = start(tmp_path)
    nbd = nbd_module()
    stopping = threading.Event()
    writers = [Writer(nbd, f"nbd+unix:///a?socket={tmp_path}/nbd.sock", i, stopping)
               for i in range(CLIENTS)]
    try:
        for w in writers:
            w.start()
        tops = asyncio.run(asyncio.wait_for(
            graph_changes(tmp_path, time.monotonic() + SECONDS / 2), SECONDS + 120))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        stopping.set()
        for w in writers:
            w.join(60)
        stop(proc)
    assert all(w.writes > 0 for w in writers)
    for top in tops:
        image = tmp_path / f"{top}.qcow2"
        out = subprocess.run([sys.executable, "-m", "blocklayer.tools.img", "check", "-r",
                              "all", "--output=json", str(image)], check=False,
                             capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert out.returncode == 0, out.stdout + out.stderr      # leaks at most: repaired
        report = json.loads(out.stdout)
        assert report.get("corruptions", 0) == 0, report
        assert report.get("check-errors", 0) == 0, report
        qemu_img("check", "-q", "-f", "qcow2", str(image))
    data = image_data(tmp_path, f"{tops[-1]}.qcow2")
    for w in writers:
        w.check_durable(data[w.base:w.base + REGION])
