"""Start the real qemu-storage-daemon (the oracle) on a unix socket in a temporary
directory; always killed by PID."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, need


def wait_listening(path: Path, proc: subprocess.Popen[Any] | None = None) -> None:
    """Until the unix socket accepts (it exists a moment before it listens)."""
    for _ in range(400):
        if path.exists():
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(path))
                    return
                except ConnectionRefusedError:
                    pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.025)
    raise RuntimeError(f"{path} never listened")


@contextmanager
def daemon(which: str, tmp: Path, *extra: str) -> Iterator[Path]:
    """``which`` is "qsd" or "ours"; yields the monitor socket path."""
    sock = tmp / f"{which}.sock"
    args = ["--chardev", f"socket,id=m0,path={sock},server=on,wait=off", "--monitor",
            "chardev=m0", *extra]
    if which == "qsd":
        cmd = [need("qemu-storage-daemon"), *args]
    else:
        cmd = [sys.executable, "-m", "blocklayer.tools.daemon", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            cwd=tmp)
    try:
        wait_listening(sock, proc)
        yield sock
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


class RawSession:
    """A plain socket session: exact bytes of every reply."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")
        self.greeting = self.file.readline()

    def send(self, data: bytes) -> bytes:
        self.file.write(data)
        self.file.flush()
        return self.file.readline()

    def call(self, name: str, args: Any = None) -> bytes:
        import json
        msg: dict[str, Any] = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        return self.send(json.dumps(msg).encode())

    def close(self) -> None:
        self.file.close()
        self.sock.close()
