"""blocklayer-nbd's command line against qemu-nbd's: help, bad invocations, messages,
exit codes, -L output, --fork and --pid-file, the end after the last client."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import need, qemu_img

from .servers import server

OURS = [sys.executable, "-m", "blocklayer.tools.nbd"]


def both(args: list[str], cwd: Path) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    def one(cmd: list[str]) -> tuple[int, str, str]:
        try:
            res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=20,
                                 cwd=cwd)
        except subprocess.TimeoutExpired:
            return (-1, "", "timed out")
        return res.returncode, res.stdout, res.stderr
    need("qemu-nbd")
    theirs = one(["qemu-nbd"])
    ours = one(OURS)
    fix = lambda r: (r[0], r[1].replace("blocklayer-nbd", "qemu-nbd"),   # noqa: E731
                     r[2].replace("blocklayer-nbd", "qemu-nbd"))
    return theirs, fix(ours)


BAD = [
    [], ["-Z"], ["--foo"], ["a", "b"], ["/nonexist"], ["-e", "abc", "r.raw"],
    ["-e", "-1", "r.raw"], ["-o", "abc", "r.raw"], ["-o", "2M", "r.raw"],
    ["-f", "foo", "r.raw"], ["--cache=bad", "r.raw"], ["--aio=bad", "r.raw"],
    ["--discard=bad", "r.raw"], ["--detect-zeroes=bad", "r.raw"],
    ["--detect-zeroes=unmap", "r.raw"], ["-n", "-n", "r.raw"],
    ["--aio=threads", "--aio=threads", "r.raw"], ["-L", "r.raw"], ["-L", "-x", "a"],
    ["-L", "-r"], ["--fork", "-L"], ["-c", "/dev/nbd0"], ["-d"],
    ["-d", "/dev/nonexistent-nbd"], ["-x", "a" * 4097, "r.raw"], ["-D", "d" * 4097, "r.raw"],
    ["-f", "raw", "-B", "bm", "r.raw"], ["-l", "snap", "r.raw"],
    ["-l", "snapshot.foo=1", "r.raw"], ["--tls-creds=x", "r.raw"],
    ["--tls-authz=x", "r.raw"], ["-b", "1.2.3.4.5", "r.raw"], ["-p", "abc", "r.raw"],
    ["-f", "raw", "-o", "2097152", "r.raw"], ["-f", "raw", "--aio=native", "r.raw"],
    ["--object", "foo", "r.raw"], ["--object", "secret,id=s", "r.raw"],
    ["--object", "id=s", "r.raw"], ["--selinux-label=x", "r.raw"],
    ["--image-opts", "-f", "raw", "driver=raw,file.filename=r.raw"],
    ["--image-opts", "driver=raw,file.filename=r.raw,bogus=1"],
    ["-k", "/nonexistent/dir/s.sock", "-f", "raw", "r.raw"],
    ["-L", "-k", "/nonexistent.sock"], ["-L", "-b", "127.0.0.1", "-p", "1"],
    ["-f", "raw", "--pid-file", "/nonexistent/x", "-k", "PLACEHOLDER", "r.raw"],
    ["-h"], ["--help"],
]


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a)[:40] for a in BAD])
def test_invocation_as_qemu_nbd(tmp_path: Path, args: list[str]) -> None:
    qemu_img("create", "-f", "raw", str(tmp_path / "r.raw"), "1M")
    args = [str(tmp_path / "s.sock") if a == "PLACEHOLDER" else a for a in args]
    if not {"-L", "-k", "-p", "-b", "-d", "-h", "--help"} & set(args):
        args += ["-k", str(tmp_path / "s.sock")]      # never the shared TCP port
    theirs, ours = both(args, tmp_path)
    assert ours == theirs


def test_version(tmp_path: Path) -> None:
    theirs, ours = both(["-V"], tmp_path)
    assert ours[0] == theirs[0] == 0
    assert ours[1].splitlines()[1:] == theirs[1].splitlines()[1:]
    assert ours[1].startswith("qemu-nbd 7.2.22 (blocklayer ")


def test_list_other_servers_as_qemu_nbd(tmp_path: Path) -> None:
    image = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "4M")
    sock = tmp_path / "q.sock"
    with server("qemu", image, "-A", "-x", "exp", "-D", "desc", "-f", "qcow2", sock=sock):
        theirs, ours = both(["-L", "-k", str(sock)], tmp_path)
    assert ours == theirs and ours[0] == 0 and "qemu:allocation-depth" in ours[1]
    nbdkit = need("nbdkit")
    ksock = tmp_path / "k.sock"
    proc = subprocess.Popen([nbdkit, "-f", "-U", str(ksock), "memory", "1M"])
    try:
        for _ in range(200):
            if ksock.exists():
                break
            time.sleep(0.05)
        theirs, ours = both(["-L", "-k", str(ksock)], tmp_path)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    assert ours == theirs and ours[0] == 0


def _connect_and_leave(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.recv(18)


def test_exits_after_the_last_client_unless_persistent(tmp_path: Path) -> None:
    image = tmp_path / "d.raw"
    qemu_img("create", "-f", "raw", str(image), "1M")
    sock = tmp_path / "s.sock"
    proc = subprocess.Popen([*OURS, "-f", "raw", "-k", str(sock), str(image)],
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(400):
            if sock.exists():
                break
            time.sleep(0.05)
        _connect_and_leave(sock)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_fork_and_pid_file(tmp_path: Path) -> None:
    image = tmp_path / "d.raw"
    qemu_img("create", "-f", "raw", str(image), "1M")
    sock, pid_file = tmp_path / "s.sock", tmp_path / "nbd.pid"
    res = subprocess.run([*OURS, "--fork", "--pid-file", str(pid_file), "-f", "raw",
                          "-k", str(sock), str(image)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    pid = int(pid_file.read_text())
    try:
        assert sock.exists()                 # listening before the parent returned
        _connect_and_leave(sock)
        for _ in range(400):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the forked server did not exit after its client")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_socket_activation(tmp_path: Path) -> None:
    image = tmp_path / "d.raw"
    qemu_img("create", "-f", "raw", str(image), "1M")
    listener = socket.socket(socket.AF_UNIX)
    path = tmp_path / "act.sock"
    listener.bind(str(path))
    listener.listen()
    # LISTEN_PID must be the server's own pid: a wrapper sets it, then execs it.
    fd = listener.fileno()
    wrapper = ("import os, sys; os.dup2(%d, 3); os.environ['LISTEN_PID'] = str(os.getpid());"
               "os.environ['LISTEN_FDS'] = '1'; os.execv(sys.executable, sys.argv[1:])" % fd)
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *OURS, "-t", "-f", "raw",
                             str(image)], pass_fds=(fd,))
    listener.close()
    try:
        out = subprocess.run([need("nbdinfo"), "--size", f"nbd+unix:///?socket={path}"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == str(1 << 20), out.stderr
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    wrapper = ("import os, sys; os.environ['LISTEN_PID'] = str(os.getpid());"
               "os.environ['LISTEN_FDS'] = '1'; os.execv(sys.executable, sys.argv[1:])")
    bad = subprocess.run([sys.executable, "-c", wrapper, *OURS, "-k", str(tmp_path / "x.sock"),
                          str(image)], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1
    assert bad.stderr.endswith("Unix socket can't be set when using socket activation\n")
