"""The command line against qemu-storage-daemon's: messages (after the program name),
exit codes, --pidfile, --daemonize, and a clean shutdown on SIGTERM/SIGINT."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, need, qemu_img, tool
from tests.qmp.qsd import wait_listening

BAD = [
    ["--bogus"],
    ["foo"],
    ["--blockdev"],
    ["--blockdev", "driver=nope,node-name=x"],
    ["--blockdev", '{"driver":"null-co"}'],
    ["--blockdev", "driver=null-co,node-name=x,size=abc"],
    ["--blockdev", "driver=null-co,node-name=x,read-only=maybe"],
    ["--blockdev", "driver=null-co,node-name=x", "--blockdev", "driver=null-co,node-name=x"],
    ["--blockdev", "driver=qcow2,node-name=q,file=nope"],
    ["--monitor", "chardev=zz"],
    ["--object", "bogus,id=b"],
    ["--object", "secret,id=s,data=x", "--object", "secret,id=s,data=y"],
    ["--chardev", "socket,id=c,path=SOCK,server=on,wait=off", "--monitor", "c,mode=readline"],
    ["--chardev", "socket,id=c,path=MISSING"],
    ["--nbd-server", "addr.type=unix"],
    ["--nbd-server", "addr.type=bogus"],
    ["--nbd-server", "addr.type=unix,addr.path=SOCK,max-connections=x"],
    ["--nbd-server", "addr.type=unix,addr.path=SOCK,bogus=1"],
    ["--export", "type=nbd,id=e"],
    ["--export", "type=bogus,id=e,node-name=zz"],
    ["--blockdev", "driver=qcow2,node-name=q,file.driver=file,file.filename=x,file.aio=bogus"],
]


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a) for a in BAD])
def test_errors_as_qsd(tmp_path: Path, args: list[str]) -> None:
    args = [a.replace("SOCK", str(tmp_path / "s.sock"))
            .replace("MISSING", str(tmp_path / "missing.sock")) for a in args]
    want = subprocess.run(["qemu-storage-daemon", *args], capture_output=True, text=True,
                          timeout=30, executable=need("qemu-storage-daemon"), check=False)
    got = tool("daemon", *args, timeout=30)
    assert got.returncode == want.returncode == 1
    assert got.stderr.replace("blocklayer-storage-daemon", "qemu-storage-daemon") == want.stderr


def test_help_and_version() -> None:
    assert tool("daemon", "-h").stdout.startswith("Usage: blocklayer-storage-daemon [options]")
    out = tool("daemon", "-V")
    assert out.returncode == 0 and out.stdout.startswith("blocklayer-storage-daemon version 7.2")


def _start(tmp: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "blocklayer.tools.daemon", *args],
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _wait_file(path: Path) -> None:
    for _ in range(400):
        if path.exists() and path.stat().st_size:
            return
        time.sleep(0.025)
    raise AssertionError(f"{path} not written")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_clean_and_unlocked(tmp_path: Path, sig: int) -> None:
    img = tmp_path / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), "16M")
    pid = tmp_path / "pid"
    proc = _start(tmp_path, "--blockdev", f"driver=qcow2,node-name=d,file.driver=file,"
                  f"file.filename={img}", "--pidfile", str(pid))
    try:
        _wait_file(pid)
        assert int(pid.read_text()) == proc.pid
        locked = qemu_img("info", str(img), check=False)
        assert locked.returncode == 1 and "lock" in locked.stderr
        os.kill(proc.pid, sig)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not pid.exists()
    qemu_img("check", str(img))
    assert qemu_img("info", str(img)).returncode == 0


def test_daemonize(tmp_path: Path) -> None:
    pid = tmp_path / "pid"
    out = tool("daemon", "--daemonize", "--pidfile", str(pid), "--blockdev",
               "driver=null-co,node-name=n", timeout=60)
    assert out.returncode == 0
    _wait_file(pid)
    child = int(pid.read_text())
    try:
        os.kill(child, 0)
    finally:
        os.kill(child, signal.SIGTERM)
    for _ in range(400):
        if not pid.exists():
            break
        time.sleep(0.025)
    assert not pid.exists()


def test_daemonize_reports_failure() -> None:
    out = tool("daemon", "--daemonize", "--blockdev", "driver=nope", timeout=60)
    assert out.returncode == 1
    assert "Parameter 'driver' does not accept value 'nope'" in out.stderr


def test_tcp_monitor_and_quit(tmp_path: Path) -> None:
    import asyncio
    import socket as pysocket

    from qemu.qmp import QMPClient
    with pysocket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _start(tmp_path, "--chardev", f"socket,id=t,host=127.0.0.1,port={port},server=on,"
                  "wait=off", "--monitor", "chardev=t")

    async def session() -> None:
        for _ in range(400):
            try:
                with pysocket.create_connection(("127.0.0.1", port)):
                    break
            except ConnectionRefusedError:
                await asyncio.sleep(0.025)
        client = QMPClient("tcp")
        await client.connect(("127.0.0.1", port))
        chardevs = await client.execute("query-chardev")
        assert chardevs == [{"frontend-open": True, "label": "t",
                             "filename": f"tcp:127.0.0.1:{port},server=on"}]
        assert await client.execute("quit") == {}
        try:
            await client.disconnect()
        except EOFError:
            pass                       # the daemon hung up after quit, as QSD does
    try:
        asyncio.run(session())
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_qmp_shell(tmp_path: Path) -> None:
    """qemu.qmp's qmp-shell, unchanged, drives the daemon."""
    sock = tmp_path / "m.sock"
    proc = _start(tmp_path, "--chardev", f"socket,id=m,path={sock},server=on,wait=off",
                  "--monitor", "chardev=m", "--blockdev", "driver=null-co,node-name=n")
    try:
        wait_listening(sock)
        out = subprocess.run([sys.executable, "-m", "qemu.qmp.qmp_shell", str(sock)],
                             input="query-version\nblockdev-del node-name=n\n"
                                   "blockdev-del node-name=n\n",
                             capture_output=True, text=True, timeout=60, check=False)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert "Connected to QEMU 7.2.22" in out.stdout
    assert '{"return": {}}' in out.stdout
    assert "Failed to find node with node-name='n'" in out.stdout

