"""The ``nbd`` protocol driver against real servers (qemu-nbd, nbdkit), differential
against qemu-img and qemu-io doing the same against the same server.

Servers are started by the tests on unix sockets in ``tmp_path`` (or a free loopback
port) and killed by PID in a ``finally``.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import need, qemu_img, qemu_io, tool

MiB = 1 << 20
START_TIMEOUT = 20.0


# -- servers --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(proc: subprocess.Popen[bytes], sock: Path | None, port: int | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        if sock is not None and sock.exists():
            with contextlib.suppress(OSError), \
                    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(sock))        # bound is not yet listening
                return
        if port is not None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
        time.sleep(0.02)
    raise RuntimeError("server did not start")


@contextlib.contextmanager
def serve(argv: list[str], sock: Path | None = None,
          port: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server until the block ends; stopped by PID whatever happens."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(proc, sock, port)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


@contextlib.contextmanager
def qemu_nbd(tmp_path: Path, image: Path | str, *args: str, fmt: str = "raw",
             name: str = "nbd.sock") -> Iterator[Path]:
    """qemu-nbd serving ``image`` on a unix socket (persistent, a few clients at once)."""
    need("qemu-nbd")
    sock = tmp_path / name
    with serve(["qemu-nbd", "-k", str(sock), "-t", "-e", "4", "-f", fmt, *args, str(image)],
               sock=sock):
        yield sock


@contextlib.contextmanager
def qemu_nbd_tcp(image: Path | str, *args: str, fmt: str = "raw") -> Iterator[int]:
    need("qemu-nbd")
    port = free_port()
    with serve(["qemu-nbd", "-b", "127.0.0.1", "-p", str(port), "-t", "-e", "4", "-f", fmt,
                *args, str(image)], port=port):
        yield port


@contextlib.contextmanager
def nbdkit(tmp_path: Path, *args: str, name: str = "kit.sock") -> Iterator[Path]:
    need("nbdkit")
    sock = tmp_path / name
    with serve(["nbdkit", "-f", "-U", str(sock), *args], sock=sock):
        yield sock


def unix_url(sock: Path, export: str = "") -> str:
    return f"nbd+unix:///{export}?socket={sock}"


# -- comparing with QEMU's tools ------------------------------------------------------

_TIMING = re.compile(r"^.* ops; .*sec .*\n", re.MULTILINE)


def same_img(*args: str) -> subprocess.CompletedProcess[str]:
    """Our blocklayer-img and qemu-img give the same output and exit code."""
    theirs = qemu_img(*args, check=False)
    ours = tool("img", *args, timeout=60)
    assert ours.stderr.replace("blocklayer-img:", "qemu-img:") == theirs.stderr
    assert ours.stdout == theirs.stdout
    assert ours.returncode == theirs.returncode
    return ours


def same_io(*args: str) -> subprocess.CompletedProcess[str]:
    """The same for blocklayer-io and qemu-io (timing lines dropped)."""
    theirs = qemu_io(*args, check=False)
    ours = tool("io", *args, timeout=60)
    assert ours.stderr.replace("blocklayer-io:", "qemu-io:") == theirs.stderr
    assert _TIMING.sub("", ours.stdout) == _TIMING.sub("", theirs.stdout)
    assert ours.returncode == theirs.returncode
    return ours


def run_io(runner: str, *args: str) -> tuple[int, str, str]:
    """blocklayer-io (``io``) or qemu-io, its output as compared (no timing lines)."""
    out = tool("io", *args, timeout=60) if runner == "io" else qemu_io(*args, check=False)
    return (out.returncode, _TIMING.sub("", out.stdout),
            out.stderr.replace("blocklayer-io:", "qemu-io:"))


def same_io_on_nbdkit(tmp_path: Path, server: tuple[str, ...] | list[str],
                      *args: str) -> tuple[int, str, str]:
    """Both tools, each against a fresh nbdkit of its own, give the same output."""
    results = []
    for runner in ("io", "qemu-io"):
        with nbdkit(tmp_path, *server, name=f"{runner}.sock") as sock:
            results.append(run_io(runner, *args, unix_url(sock)))
    assert results[0] == results[1]
    return results[0]


def make_raw(path: Path, size: int = 4 * MiB) -> Path:
    """A raw image with data, a zeroed run and holes."""
    qemu_img("create", "-q", "-f", "raw", str(path), str(size))
    qemu_io("-f", "raw", "-c", "write -P 1 0 64k", "-c", "write -P 2 1M 192k",
            "-c", "write -P 3 3M 4k", str(path))
    return path


def make_chain(tmp_path: Path) -> Path:
    """base.qcow2 <- top.qcow2 with bitmap b0 recording the top's writes."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "4M")
    qemu_io("-c", "write -P 1 0 1M", "-c", "write -P 3 3M 64k", str(base))
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    qemu_img("bitmap", "--add", str(top), "b0")
    qemu_io("-c", "write -P 2 512k 1M", "-c", "write -z 2M 64k", str(top))
    return top


def nbd_opts(sock: Path, **extra: str) -> str:
    opts = f"driver=raw,file.driver=nbd,file.server.type=unix,file.server.path={sock}"
    return opts + "".join(f",file.{k}={v}" for k, v in extra.items())


# -- info and map ---------------------------------------------------------------------

def test_info_and_map_of_a_raw_export(tmp_path: Path) -> None:
    image = make_raw(tmp_path / "a.raw")
    with qemu_nbd(tmp_path, image) as sock:
        for name in (unix_url(sock), f"nbd+unix://?socket={sock}", f"nbd:unix:{sock}"):
            same_img("info", name)
            same_img("info", "--output=json", "-f", "raw", name)
            same_img("map", "-f", "raw", name)
            same_img("map", "--output=json", "-f", "raw", name)
            same_img("map", "--output=json", "--start-offset=1M", "--max-length=1M", name)


def test_tcp_urls_and_legacy_forms(tmp_path: Path) -> None:
    image = make_raw(tmp_path / "a.raw")
    with qemu_nbd_tcp(image, "-x", "exp") as port:
        for name in (f"nbd://127.0.0.1:{port}/exp", f"nbd+tcp://127.0.0.1:{port}/exp",
                     f"nbd:127.0.0.1:{port}:exportname=exp"):
            same_img("info", "-f", "raw", name)
            same_img("map", "--output=json", "-f", "raw", name)
        same_img("info", "--image-opts",
                 f"driver=raw,file.driver=nbd,file.host=127.0.0.1,file.port={port},"
                 "file.export=exp")
        same_img("info", "--image-opts",
                 f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},"
                 "export=exp")
        same_img("info", f"nbd://127.0.0.1:{port}/nope")


def test_qcow2_chain_export_with_bitmap_and_depth_contexts(tmp_path: Path) -> None:
    top = make_chain(tmp_path)
    with qemu_nbd(tmp_path, top, "-B", "b0", "-A", fmt="qcow2") as sock:
        same_img("info", unix_url(sock))
        same_img("map", unix_url(sock))
        for context in ("base:allocation", "qemu:dirty-bitmap:b0", "qemu:allocation-depth"):
            opts = nbd_opts(sock, **{"x-dirty-bitmap": context})
            same_img("map", "--output=json", "--image-opts", opts)
            same_img("map", "--image-opts", opts)
        same_img("map", "--output=json", "--image-opts",
                 nbd_opts(sock, **{"x-dirty-bitmap": "qemu:dirty-bitmap:nope"}))


# -- formats on top of nbd, nbd under a backing file ----------------------------------

def test_qcow2_stored_on_an_export(tmp_path: Path) -> None:
    """The export is the qcow2 file itself: the format runs on our client."""
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "8M")
    qemu_io("-c", "write -P 5 0 1M", "-c", "write -z 2M 1M", "-c", "write -P 6 7M 4k",
            str(image))
    with qemu_nbd(tmp_path, image) as sock:
        url = unix_url(sock)
        same_img("info", url)
        same_img("info", "--output=json", "-f", "qcow2", url)
        same_img("check", url)
        same_img("check", "--output=json", url)
        same_img("map", "--output=json", url)
        same_io("-r", "-c", "read -P 5 0 1M", "-c", "read -P 0 2M 1M", "-c", "map", url)
        same_io("-c", "write -P 9 4M 64k", "-c", "read -P 9 4M 64k", url)
        same_img("check", url)
    qemu_img("check", str(image))


def test_backing_file_on_an_nbd_server(tmp_path: Path) -> None:
    base = make_raw(tmp_path / "base.raw")
    with qemu_nbd(tmp_path, base, "-r") as sock:
        overlay = tmp_path / "overlay.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-b", unix_url(sock), "-F", "raw",
                 str(overlay))
        qemu_io("-c", "write -P 7 1M 4k", str(overlay))
        same_img("info", str(overlay))
        same_img("info", "--backing-chain", "--output=json", str(overlay))
        same_img("map", "--output=json", str(overlay))
        same_img("compare", "-f", "qcow2", "-F", "raw", str(overlay), str(base))
        same_io("-r", "-c", "read -P 1 0 64k", "-c", "read -P 7 1M 4k",
                "-c", "read -P 2 1M+4k 188k", str(overlay))


# -- convert and compare --------------------------------------------------------------

def test_convert_from_an_export(tmp_path: Path) -> None:
    top = make_chain(tmp_path)
    with qemu_nbd(tmp_path, top, fmt="qcow2") as sock:
        ours, theirs = tmp_path / "ours.raw", tmp_path / "theirs.raw"
        assert tool("img", "convert", "-O", "raw", unix_url(sock), str(ours)).returncode == 0
        qemu_img("convert", "-O", "raw", unix_url(sock), str(theirs))
        assert ours.read_bytes() == theirs.read_bytes()
        assert qemu_img("map", "--output=json", "-f", "raw", str(ours)).stdout == \
            qemu_img("map", "--output=json", "-f", "raw", str(theirs)).stdout
        same_img("compare", unix_url(sock), str(top))
        same_img("compare", "-f", "raw", "-F", "raw", unix_url(sock), str(theirs))
        qcow = tmp_path / "ours.qcow2"
        assert tool("img", "convert", "-O", "qcow2", unix_url(sock), str(qcow)).returncode == 0
        same_img("compare", str(qcow), str(top))


def test_convert_to_an_export(tmp_path: Path) -> None:
    source = make_raw(tmp_path / "src.raw")
    target = tmp_path / "target.raw"
    with open(target, "wb") as f:
        f.write(b"\xee" * (4 * MiB))
    with qemu_nbd(tmp_path, target) as sock:
        done = tool("img", "convert", "-n", "-f", "raw", "-O", "raw", str(source),
                    unix_url(sock))
        assert (done.returncode, done.stderr) == (0, "")
        same_img("compare", "-f", "raw", "-F", "raw", str(source), unix_url(sock))
    assert target.read_bytes() == source.read_bytes()


# -- blocklayer-io over nbd:// and nbd+unix:// ----------------------------------------

IO_SCRIPT = ("-c", "read -P 1 0 64k", "-c", "write -P 8 100 3000", "-c", "read -v 96 16",
             "-c", "write -z 128k 64k", "-c", "read -P 0 128k 64k", "-c", "discard 1M 64k",
             "-c", "write -z -u 2M 128k", "-c", "map", "-c", "flush",
             "-c", "write -f 3M 4k", "-c", "aio_write -P 4 8k 4k", "-c", "aio_flush",
             "-c", "read -P 4 8k 4k")


def test_io_commands_over_unix_and_tcp(tmp_path: Path) -> None:
    for transport in ("unix", "tcp"):
        ours_image = make_raw(tmp_path / f"ours-{transport}.raw")
        theirs_image = make_raw(tmp_path / f"theirs-{transport}.raw")
        outputs = []
        for image, runner in ((ours_image, "io"), (theirs_image, "qemu-io")):
            if transport == "unix":
                ctx: contextlib.AbstractContextManager[object] = qemu_nbd(
                    tmp_path, image, name=f"{runner}.sock")
            else:
                ctx = qemu_nbd_tcp(image)
            with ctx as where:
                url = unix_url(where) if isinstance(where, Path) else \
                    f"nbd://127.0.0.1:{where}"
                outputs.append(run_io(runner, "-f", "raw", *IO_SCRIPT, url))
        assert outputs[0] == outputs[1]
        assert ours_image.read_bytes() == theirs_image.read_bytes()


def test_io_on_qcow2_chain_export(tmp_path: Path) -> None:
    top = make_chain(tmp_path)
    with qemu_nbd(tmp_path, top, "-r", fmt="qcow2") as sock:
        same_io("-r", "-f", "raw", "-c", "read -P 1 0 512k", "-c", "read -P 2 512k 1M",
                "-c", "read -P 0 2M 64k", "-c", "read -P 3 3M 64k", "-c", "map",
                unix_url(sock))


# -- nbdkit plugins -------------------------------------------------------------------

@pytest.mark.parametrize("plugin", [
    ("memory", "size=4M"),
    ("data", "data=@1048576 1 2 3 @2097152 (0x55)*65536", "size=4M"),
    ("file", "FILE"),
])
def test_nbdkit_plugins(tmp_path: Path, plugin: tuple[str, ...]) -> None:
    args = [a.replace("FILE", str(make_raw(tmp_path / "k.raw"))) for a in plugin]
    with nbdkit(tmp_path, *args) as sock:
        url = unix_url(sock)
        same_img("info", "-f", "raw", url)
        same_img("map", "-f", "raw", url)
        same_img("map", "--output=json", "-f", "raw", url)
        same_io("-r", "-f", "raw", "-c", "read -v 1048576 8", "-c", "map",
                "-c", "read -P 0 512k 4k", url)
        if plugin[0] != "data":
            same_io("-f", "raw", "-c", "write -P 9 0 8k", "-c", "write -z 8k 8k",
                    "-c", "discard 64k 64k", "-c", "read -P 9 0 8k", url)


@pytest.mark.parametrize("filters", [
    ("--filter=nozero",),                       # no WRITE_ZEROES: zero buffers instead
    ("--filter=noextents",),                    # no block status: all data
    ("--filter=nozero", "--filter=noextents"),  # neither
    ("--filter=blocksize-policy", "blocksize-minimum=4096",
     "blocksize-maximum=65536"),                # block size constraints
])
def test_fallbacks_for_what_nbdkit_does_not_offer(tmp_path: Path,
                                                 filters: tuple[str, ...]) -> None:
    flags = [f for f in filters if f.startswith("--")]
    params = [f for f in filters if not f.startswith("--")]
    same_io_on_nbdkit(tmp_path, [*flags, "memory", "size=1M", *params],
                      "-f", "raw", "-c", "write -P 3 1000 100k", "-c", "write -z 5000 70000",
                      "-c", "write -f -P 4 200k 4k", "-c", "read -v 4990 20",
                      "-c", "read -P 4 200k 4k", "-c", "map")
    with nbdkit(tmp_path, *flags, "memory", "size=1M", *params) as sock:
        same_img("map", "--output=json", "-f", "raw", unix_url(sock))


# -- errors ---------------------------------------------------------------------------

def test_connection_errors_as_qemu_img(tmp_path: Path) -> None:
    port = free_port()
    same_img("info", f"nbd://127.0.0.1:{port}/x")
    same_img("info", f"nbd:127.0.0.1:{port}")
    same_img("info", unix_url(tmp_path / "nothing.sock"))
    same_img("info", "--image-opts",
             f"driver=nbd,server.type=unix,server.path={tmp_path / 'nothing.sock'},"
             "open-timeout=1")


@pytest.mark.parametrize("name", [
    "nbd://", "nbd:foo", "nbd+unix:///?socket=a&b=c", "nbd+unix://host/?socket=x",
    "nbd+unix:///x", "nbd://host/x?socket=y", "nbd:unix:/x:exportname=",
    "nbd://h:notaport/",
])
def test_bad_filenames_as_qemu_img(name: str) -> None:
    same_img("info", name)


@pytest.mark.parametrize("opts", [
    "driver=nbd", "driver=nbd,server.type=unix", "driver=nbd,server.type=foo",
    "driver=nbd,server.type=inet,server.host=localhost", "driver=nbd,server.path=/x",
    "driver=nbd,server.type=unix,server.path=/x,host=y", "driver=nbd,path=/x,port=1",
    "driver=nbd,path=/x,host=y",
    "driver=nbd,server.type=inet,server.host=localhost,server.port=1,tls-creds=t",
    "driver=nbd,server.type=inet,server.host=localhost,server.port=1,reconnect-delay=x",
])
def test_bad_options_as_qemu_img(opts: str) -> None:
    same_img("info", "--image-opts", opts)


def test_read_only_export_refuses_a_writable_open(tmp_path: Path) -> None:
    image = make_raw(tmp_path / "a.raw")
    with qemu_nbd(tmp_path, image, "-r") as sock:
        same_io("-f", "raw", "-c", "read 0 512", unix_url(sock))
        same_io("-r", "-f", "raw", "-c", "write 0 512", unix_url(sock))
        same_io("-r", "-f", "raw", "-c", "read -P 1 0 64k", unix_url(sock))
        same_img("info", unix_url(sock, "missing"))


def test_server_errors_reach_the_request(tmp_path: Path) -> None:
    """nbdkit's error filter fails some reads and writes: the errno gets through."""
    ours = same_io_on_nbdkit(tmp_path, ["--filter=error", "memory", "size=1M",
                                        "error=ENOSPC", "error-pwrite-rate=1",
                                        "error-pread-rate=0"],
                             "-f", "raw", "-c", "read 0 4k", "-c", "write 0 4k")
    assert "write failed: No space left on device" in ours[1]



# -- creating images on an export -----------------------------------------------------

def test_create_on_an_export(tmp_path: Path) -> None:
    """The export exists; create lays a format on it as qemu-img does (the same bytes),
    and refuses what NBD cannot do with qemu-img's messages."""
    seed = os.urandom(8 * MiB)
    served = {}
    for runner in ("qemu-img", "ours"):
        image = tmp_path / f"{runner}.raw"
        image.write_bytes(seed)
        with qemu_nbd(tmp_path, image, name=f"{runner}.sock") as sock:
            url = unix_url(sock)
            run = (lambda *a: tool("img", *a, timeout=60)) if runner == "ours" else \
                (lambda *a: qemu_img(*a, check=False))
            results = [run("create", "-f", "qcow2", url, "4M"), run("check", url),
                       run("create", "-f", "raw", url, "100M"),
                       run("create", "-f", "raw", "-o", "preallocation=full", url, "1M")]
            served[runner] = [(r.returncode, r.stdout.replace(url, "URL"),
                               r.stderr.replace("blocklayer-img:", "qemu-img:")
                               .replace(url, "URL")) for r in results]
        served[runner + " bytes"] = image.read_bytes()      # type: ignore[assignment]
    assert served["ours"] == served["qemu-img"]
    assert served["ours bytes"] == served["qemu-img bytes"]
    same_img("create", "-f", "qcow2", unix_url(tmp_path / "none.sock"), "1M")
