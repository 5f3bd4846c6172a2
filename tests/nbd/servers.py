"""NBD servers for tests: ours (``python -m blocklayer.tools.nbd``) and qemu-nbd, each on
a unix socket in a temporary directory or a free loopback port, always stopped by PID."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import need

DIST_PACKAGES = "/usr/lib/python3/dist-packages"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(proc: subprocess.Popen[bytes], sock: Path | None, port: int | None,
                log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()}")
        try:
            if sock is not None:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                    return
            elif port is not None:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


@contextlib.contextmanager
def server(kind: str, image: Path, *args: str, sock: Path | None = None,
           port: int | None = None) -> Iterator[str]:
    """Serve ``image`` with ``kind`` ("ours" or "qemu") persistently; yields the URI.
    The server must not exit after its first client, so it gets ``-t`` (the test's
    probe connection is a client too)."""
    if kind == "qemu":
        cmd = [need("qemu-nbd")]
    else:
        cmd = [sys.executable, "-m", "blocklayer.tools.nbd"]
    where = ["-k", str(sock)] if sock is not None else ["-b", "127.0.0.1", "-p", str(port)]
    log = image.parent / f"{kind}-{sock.name if sock else port}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([*cmd, "-t", *where, *args, str(image)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_ready(proc, sock, port, log)
        yield (f"nbd+unix:///{{}}?socket={sock}" if sock is not None
               else f"nbd://127.0.0.1:{port}/{{}}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text


def libnbd_python(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a script with Debian's python3, which has libnbd's ``nbd`` module."""
    if not os.path.exists(os.path.join(DIST_PACKAGES, "nbd.py")):
        need("python3-libnbd (nbd.py)")
    return subprocess.run(["/usr/bin/python3", "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout)
