"""Faults: clients that send garbage, oversized or truncated requests, or vanish
mid-request, while 8 well-behaved clients write disjoint random data.  Afterwards the
image is clean and every byte the good clients wrote reads back."""
from __future__ import annotations

import random
import socket
import struct
import threading
import time
from pathlib import Path

from tests.conftest import qemu_img

from blocklayer.nbd import events as ev
from blocklayer.nbd.events import CLIENT, NEED_DATA
from blocklayer.nbd.protocol import Connection
from blocklayer.nbd.wire import ClientFlag, Cmd, InfoType, RequestHeader

from .servers import libnbd_python, server

MiB = 1 << 20
SIZE = 32 * MiB
WRITERS = 8

WRITER_SCRIPT = r"""
import random, sys, threading, nbd
uri, expected, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = 32 << 20
region = size // 8
image = bytearray(size)
errors = []
def writer(i):
    try:
        h = nbd.NBD()
        h.connect_uri(uri)
        rnd = random.Random(i)
        base = i * region
        for _ in range(rounds):
            n = rnd.choice([512, 4096, 65536, 200000, 1 << 20])
            off = base + rnd.randrange(0, region - n)
            data = rnd.randbytes(n)
            h.pwrite(data, off)
            image[off:off + n] = data
        h.flush()
        got = h.pread(region, base)
        if got != bytes(image[base:base + region]):
            errors.append(f"client {i} reads back other data")
        h.shutdown()
    except Exception as e:
        errors.append(f"client {i}: {e!r}")
threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
open(expected, "wb").write(image)
print("\n".join(errors) or "ok")
"""


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(path))
    return s


def _handshake(path: Path) -> tuple[socket.socket, Connection]:
    """A well-formed handshake with structured replies; then the caller misbehaves."""
    s = _connect(path)
    conn = Connection(CLIENT)

    def until(kind: type) -> None:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(s.recv(65536))
                continue
            if isinstance(event, kind):
                return

    until(ev.Greeting)
    s.sendall(conn.send(ev.ClientFlags(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)))
    s.sendall(conn.send(ev.StructuredReplyOption()))
    until(ev.OptionAck)
    s.sendall(conn.send(ev.GoOption("", (InfoType.BLOCK_SIZE,))))
    until(ev.OptionAck)
    return s, conn


def _drain(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except OSError:
        pass
    return out


def _misbehave(path: Path, rnd: random.Random) -> None:
    what = rnd.randrange(8)
    if what == 0:                                   # garbage instead of client flags
        s = _connect(path)
        s.sendall(rnd.randbytes(rnd.randrange(1, 200)))
        _drain(s)
    elif what == 1:                                 # garbage option
        s = _connect(path)
        s.recv(18)
        s.sendall(struct.pack(">I", 3) + rnd.randbytes(300))
        _drain(s)
    else:
        s, conn = _handshake(path)
        if what == 2:                               # garbage request
            s.sendall(rnd.randbytes(rnd.randrange(28, 100)))
        elif what == 3:                             # oversized write: refused, dropped
            s.sendall(RequestHeader(0, Cmd.WRITE, 1, 0, 1 << 30).build() + bytes(4096))
        elif what == 4:                             # truncated write, then gone
            s.sendall(RequestHeader(0, Cmd.WRITE, 2, 0, 65536).build() + bytes(1000))
            s.close()
            return
        elif what == 5:                             # gone in the middle of a big read
            s.sendall(RequestHeader(0, Cmd.READ, 3, 0, 16 * MiB).build())
            s.close()
            return
        elif what == 6:                             # refused requests, then garbage
            for header in [(0, 42, 4, 0, 0), (0, Cmd.READ, 5, SIZE, 512),
                           (0x40, Cmd.FLUSH, 6, 0, 0)]:
                s.sendall(RequestHeader(*header).build())
            s.sendall(b"\xff" * 28)
        else:                                        # idles a while, says nothing
            time.sleep(0.2)
        _drain(s)
    s.close()


def test_faults_while_eight_clients_write(tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), str(SIZE))
    sock = tmp_path / "nbd.sock"
    expected = tmp_path / "expected.raw"
    with server("ours", image, "-e", "0", "-f", "qcow2", sock=sock) as uri:
        stop = threading.Event()
        failures: list[BaseException] = []

        def attacker(seed: int) -> None:
            rnd = random.Random(seed)
            while not stop.is_set():
                try:
                    _misbehave(sock, rnd)
                except (OSError, AssertionError) as exc:
                    if not isinstance(exc, (ConnectionError, socket.timeout)):
                        failures.append(exc)
                    if isinstance(exc, socket.timeout):
                        failures.append(exc)

        attackers = [threading.Thread(target=attacker, args=(i,)) for i in range(2)]
        for t in attackers:
            t.start()
        try:
            res = libnbd_python(WRITER_SCRIPT, uri.format(""), str(expected), "60",
                                timeout=600)
        finally:
            stop.set()
            for t in attackers:
                t.join(60)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "ok", res.stdout
        assert not failures, failures
    check = qemu_img("check", str(image), check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No errors were found" in check.stdout
    qemu_img("compare", "-f", "raw", "-F", "qcow2", str(expected), str(image))
