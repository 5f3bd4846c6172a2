"""Real NBD clients against blocklayer-nbd, compared with the same clients against
qemu-nbd serving the same image: nbdinfo, nbdcopy, qemu-img, qemu-io, libnbd, fio."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import need, qemu_img, qemu_io

from .servers import free_port, libnbd_python, server

MiB = 1 << 20


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    need(cmd[0])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check)


@pytest.fixture
def layered(tmp_path: Path) -> Path:
    """A qcow2 overlay on a qcow2 backing file, data in both, zeroes and holes."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "8M")
    qemu_io("-f", "qcow2", "-c", "write -P 0x11 0 512k", "-c", "write -P 0x22 3M 1M",
            "-c", "write -z 4M 1M", str(base))
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    qemu_io("-f", "qcow2", "-c", "write -P 0x33 512k 1M", "-c", "write -z 3M 64k",
            str(top))
    return top


def both(tmp_path: Path, image: Path, *args: str):  # type: ignore[no-untyped-def]
    """Yield (kind, uri) for qemu-nbd and ours, each serving its own copy of image's
    chain (so neither holds the other's locks)."""
    for kind in ("qemu", "ours"):
        copy_dir = tmp_path / kind
        copy_dir.mkdir()
        for f in image.parent.iterdir():
            if f.is_file():
                shutil.copy(f, copy_dir / f.name)
        with server(kind, copy_dir / image.name, *args, sock=tmp_path / f"{kind}.sock") as uri:
            yield kind, uri


def test_nbdinfo_matches_qemu_nbd(tmp_path: Path, layered: Path) -> None:
    out: dict[str, list[str]] = {}
    for kind, uri in both(tmp_path, layered, "-A", "-f", "qcow2", "-x", "exp",
                          "-D", "a description"):
        u = uri.format("exp")
        info = json.loads(run("nbdinfo", "--json", u).stdout)
        for export in info["exports"]:
            export.pop("uri")
        listing = run("nbdinfo", "--list", "--json", u).stdout
        listed = json.loads(listing)
        for export in listed["exports"]:
            export.pop("uri")
        out[kind] = [json.dumps(info), json.dumps(listed),
                     run("nbdinfo", "--map", u).stdout,
                     run("nbdinfo", "--map=qemu:allocation-depth", u).stdout,
                     run("nbdinfo", "--map", "--totals", u).stdout,
                     run("nbdinfo", "--can", "zero", u, check=False).returncode.__str__()]
    assert out["ours"] == out["qemu"]
    assert "qemu:allocation-depth" in out["ours"][0]


def test_read_only_export_matches_qemu_nbd(tmp_path: Path, layered: Path) -> None:
    out = {}
    for kind, uri in both(tmp_path, layered, "-r", "-e", "2", "-f", "qcow2"):
        info = json.loads(run("nbdinfo", "--json", uri.format("")).stdout)
        info["exports"][0].pop("uri")
        out[kind] = (info, run("qemu-nbd", "-L", "-k", uri.split("socket=")[1]).stdout)
    assert out["ours"] == out["qemu"]
    assert out["ours"][0]["exports"][0]["is_read_only"] is True


def test_dirty_bitmap_contexts_match_qemu_nbd(tmp_path: Path) -> None:
    """-B exports bitmaps of the top image and of its backing file; each
    qemu:dirty-bitmap context maps as qemu-nbd's, and the listing agrees."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "4M")
    qemu_img("bitmap", "--add", "-g", "65536", str(base), "bb")
    qemu_io("-f", "qcow2", "-c", "write 0 100k", "-c", "write 2M 64k", str(base))
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    qemu_img("bitmap", "--add", "-g", "131072", str(top), "b0")
    qemu_img("bitmap", "--add", "--disable", str(top), "b1")
    qemu_io("-f", "qcow2", "-c", "write 1M 5k", "-c", "write 3M 300k", str(top))
    out: dict[str, list[str]] = {}
    for kind, uri in both(tmp_path, top, "-r", "-f", "qcow2", "-x", "e",
                          "-B", "b0", "-B", "b1", "-B", "bb"):
        u = uri.format("e")
        info = json.loads(run("nbdinfo", "--json", u).stdout)
        for export in info["exports"]:
            export.pop("uri")
        out[kind] = [json.dumps(info)] + [
            run("nbdinfo", f"--map=qemu:dirty-bitmap:{name}", u).stdout
            for name in ("b0", "b1", "bb")]
    assert out["ours"] == out["qemu"]
    assert "qemu:dirty-bitmap:bb" in out["ours"][0]
    assert "dirty" in out["ours"][1]


def test_qemu_img_and_qemu_io_over_unix_and_tcp(tmp_path: Path, layered: Path) -> None:
    maps = {}
    for kind, uri in both(tmp_path, layered, "-f", "qcow2"):
        u = uri.format("")
        maps[kind] = (run("qemu-img", "map", "--output=json", "-f", "raw", u).stdout,
                      run("qemu-img", "info", "--output=json", "-f", "raw", u).stdout
                      .replace(str(tmp_path / kind), "DIR").replace(kind, "KIND"))
        run("qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", u, str(layered))
        target = tmp_path / f"{kind}-conv.qcow2"
        run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", u, str(target))
        run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(target), str(layered))
        io = run("qemu-io", "-f", "raw", "-c", "write -P 0x44 1M 64k", "-c",
                 "read -P 0x44 1M 64k", "-c", "write -z 2M 64k", "-c", "read -P 0 2M 64k",
                 "-c", "aio_write -P 0x55 5M 4k", "-c", "aio_flush", "-c",
                 "read -P 0x55 5M 4k", u).stdout
        assert "Pattern verification failed" not in io and io.count("read") == 3
    assert maps["ours"] == maps["qemu"]
    port = free_port()
    with server("ours", layered, "-f", "qcow2", port=port) as uri:
        u = uri.format("")
        assert json.loads(run("qemu-img", "info", "--output=json", "-f", "raw", u).stdout)[
            "virtual-size"] == 8 * MiB
        io = run("qemu-io", "-f", "raw", "-c", "read -P 0x33 512k 1M", u).stdout
        assert "read 1048576/1048576" in io


def test_nbdcopy_both_ways(tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "16M")
    data = tmp_path / "data.bin"
    import random
    rnd = random.Random(7)
    payload = bytearray(rnd.randbytes(6 * MiB)) + bytes(2 * MiB) + rnd.randbytes(MiB)
    data.write_bytes(payload)
    back = tmp_path / "back.bin"
    with server("ours", image, "-f", "qcow2", sock=tmp_path / "s.sock") as uri:
        u = uri.format("")
        run("nbdcopy", str(data), u)
        run("nbdcopy", u, str(back))
    got = back.read_bytes()
    assert got[:len(payload)] == bytes(payload)
    assert not any(got[len(payload):])
    qemu_img("check", str(image))
    qemu_img("compare", "-f", "raw", "-F", "qcow2", str(back), str(image))


LIBNBD_SCRIPT = r"""
import errno, sys, nbd
uri, ro_uri = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(uri)
assert h.get_structured_replies_negotiated()
assert h.can_meta_context("base:allocation")
h.pwrite(b"\x5a" * 65536, 1 << 20)
h.zero(65536, 2 << 20, nbd.CMD_FLAG_NO_HOLE)
h.flush()
chunks = []
def chunk(buf, offset, status, err):
    chunks.append((status, offset, len(buf), buf == b"\x5a" * len(buf) or not any(buf)))
    return 0
buf = h.pread_structured(2 << 20, 0, chunk)
assert buf[:1 << 20] == bytes(1 << 20) and buf[1 << 20:(1 << 20) + 65536] == b"\x5a" * 65536
kinds = {c[0] for c in chunks}
assert nbd.READ_HOLE in kinds and nbd.READ_DATA in kinds, chunks
extents = []
def ext(metacontext, offset, entries, err):
    extents.append((metacontext, list(entries)))
    return 0
h.block_status(4 << 20, 0, ext)
ctx, entries = extents[0]
assert ctx == "base:allocation"
assert sum(entries[0::2]) == 4 << 20, entries
h.block_status(4 << 20, 0, ext, nbd.CMD_FLAG_REQ_ONE)
assert len(extents[1][1]) == 2
try:
    h.pread(512, h.get_size())
except nbd.Error as e:
    print("past-end", e.errno, errno.errorcode.get(e.errno))
h.shutdown()
r = nbd.NBD()
r.connect_uri(ro_uri)
assert r.is_read_only()
try:
    r.pwrite(b"x", 0)
except nbd.Error as e:
    print("read-only", e.errno, errno.errorcode.get(e.errno))
r.set_strict_mode(0)
try:
    r.pwrite(b"x" * 512, 0)
except nbd.Error as e:
    print("forced write", e.errno, errno.errorcode.get(e.errno), e.string)
try:
    r.pread(512, r.get_size() - 256)
except nbd.Error as e:
    print("forced past-end", e.errno, errno.errorcode.get(e.errno), e.string)
print("ok")
"""


def test_libnbd_scripts(tmp_path: Path) -> None:
    out = {}
    for kind in ("qemu", "ours"):
        rw, ro = tmp_path / f"{kind}-rw.qcow2", tmp_path / f"{kind}-ro.raw"
        qemu_img("create", "-f", "qcow2", str(rw), "8M")
        qemu_img("create", "-f", "raw", str(ro), "1M")
        with server(kind, rw, "-f", "qcow2", sock=tmp_path / f"{kind}-rw.sock") as rw_uri, \
                server(kind, ro, "-r", "-f", "raw", sock=tmp_path / f"{kind}-ro.sock") as ro_uri:
            res = libnbd_python(LIBNBD_SCRIPT, rw_uri.format(""), ro_uri.format(""))
        assert res.returncode == 0, res.stderr
        out[kind] = res.stdout.splitlines()
    assert out["ours"] == out["qemu"]
    lines = out["ours"]
    assert lines[-1] == "ok"
    assert "EINVAL" in lines[0]              # libnbd refuses it itself
    assert "EPERM" in lines[1]               # libnbd's own check of the flags
    assert "EINVAL" in lines[2]              # what qemu-nbd answers
    assert "EINVAL" in lines[3]


def test_fio_nbd_engine(tmp_path: Path) -> None:
    image = tmp_path / "fio.raw"
    qemu_img("create", "-f", "raw", str(image), "32M")
    with server("ours", image, "-f", "raw", "-e", "0", sock=tmp_path / "f.sock") as uri:
        res = run("fio", "--name=t", "--ioengine=nbd", f"--uri={uri.format('')}",
                  "--rw=randrw", "--bs=4k", "--iodepth=8", "--size=8M", "--io_size=4M",
                  "--verify=crc32c", "--verify_state_save=0",
                  "--output-format=json")
    job = json.loads(res.stdout[res.stdout.index("{"):])["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] > 0 and job["read"]["io_bytes"] > 0
