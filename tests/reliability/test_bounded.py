"""Reads bounded by what the file is (issue 12, findings 2 and 3).

A data file naming ``/proc/self/environ`` (size 0) reads as zeroes, as in QEMU, so the
environment never reaches ``convert`` or ``read`` output; a blkdebug config naming
``/dev/zero`` is refused instead of read without end."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from blocklayer.core.bounded import FileTooLarge, read_named_file
from tests.conftest import ROOT, qemu_img, qemu_img_create_luks, qemu_io

SECRET = "hunter2-not-for-output"
EXT_DATA_FILE = 0x44415441


def rename_data_file(img: Path, name: bytes) -> None:
    """Point the data-file extension of ``img`` at ``name`` (cluster 0 rewritten)."""
    raw = bytearray(img.read_bytes())
    c0 = bytes(raw[:65536])
    at = c0.find(struct.pack(">I", EXT_DATA_FILE), 72)
    old = struct.unpack_from(">I", c0, at + 4)[0]
    new = (c0[:at + 4] + struct.pack(">I", len(name)) + name
           + bytes(-len(name) % 8) + c0[at + 8 + old + (-old % 8):])
    raw[:65536] = new.ljust(65536, b"\0")[:65536]
    img.write_bytes(bytes(raw))


@pytest.fixture
def environ_image(tmp_path: Path) -> Path:
    img = tmp_path / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'd.raw'}",
             str(img), "1M")
    qemu_io("-c", "write -P 1 0 64k", str(img))
    rename_data_file(img, b"/proc/self/environ")
    return img


def _env() -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "SECRETVAR": SECRET}


def test_proc_data_file_reads_as_zeroes_in_convert(environ_image: Path, tmp_path: Path) -> None:
    theirs, ours = tmp_path / "q.raw", tmp_path / "o.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(environ_image), str(theirs)],
                   check=True, env=_env())
    subprocess.run([sys.executable, "-m", "blocklayer.tools.img", "convert", "-O", "raw",
                    str(environ_image), str(ours)], check=True, env=_env())
    assert SECRET.encode() not in theirs.read_bytes()
    assert ours.read_bytes() == theirs.read_bytes()


def test_proc_data_file_reads_as_zeroes_in_qemu_io_read(environ_image: Path) -> None:
    cmd = ["-r", "-c", "read -v 0 4k", str(environ_image)]
    q = subprocess.run(["qemu-io", *cmd], capture_output=True, text=True, env=_env())
    o = subprocess.run([sys.executable, "-m", "blocklayer.tools.io", *cmd],
                       capture_output=True, text=True, env=_env())
    assert "SECRETVAR" not in o.stdout and "53 45 43 52" not in o.stdout
    dump = [ln for ln in o.stdout.splitlines() if ln.startswith("0000")]
    assert dump == [ln for ln in q.stdout.splitlines() if ln.startswith("0000")]


def test_blkdebug_config_dev_zero_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "x.raw"
    img.write_bytes(bytes(65536))
    spec = {"driver": "raw", "file": {"driver": "blkdebug", "config": "/dev/zero",
                                      "image": {"driver": "file", "filename": str(img)}}}
    res = subprocess.run([sys.executable, "-m", "blocklayer.tools.io", "-r", "-c",
                          "read 0 512", "json:" + json.dumps(spec)],
                         capture_output=True, text=True, timeout=60, env=_env(),
                         preexec_fn=lambda: __import__("resource").setrlimit(
                             __import__("resource").RLIMIT_AS, (1 << 30, 1 << 30)))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Could not read blkdebug config file" in res.stderr
    assert "Traceback" not in res.stderr


def test_read_named_file_caps(tmp_path: Path) -> None:
    small = tmp_path / "s"
    small.write_bytes(b"x" * 100)
    assert read_named_file(str(small), limit=100) == b"x" * 100
    with pytest.raises(FileTooLarge):
        read_named_file(str(small), limit=99)
    with pytest.raises(FileTooLarge):
        read_named_file("/dev/zero", limit=4096)
    with pytest.raises(OSError):
        read_named_file(str(tmp_path / "missing"))
    assert os.path.exists("/proc/self/environ")


def test_qed_header_size_zero_opens_and_checks_as_qemu(tmp_path: Path) -> None:
    img = tmp_path / "a.qed"
    qemu_img("create", "-q", "-f", "qed", str(img), "1M")
    qemu_io("-f", "qed", "-c", "write -P 7 0 4k", str(img))
    with open(img, "r+b") as f:
        f.seek(12)
        f.write(struct.pack("<I", 0))
    for args in (["check", "-f", "qed", str(img)], ["info", "-f", "qed", str(img)]):
        q = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
        o = subprocess.run([sys.executable, "-m", "blocklayer.tools.img", *args],
                           capture_output=True, text=True, env=_env())
        assert o.returncode == q.returncode, o.stderr
        if args[0] == "check":
            assert o.stdout == q.stdout


def test_info_says_encrypted(tmp_path: Path) -> None:
    img = tmp_path / "e.qcow2"
    qemu_img_create_luks(img, "1M")
    o = subprocess.run([sys.executable, "-m", "blocklayer.tools.img", "info", str(img)],
                       capture_output=True, text=True, env=_env())
    assert "encrypted: yes" in o.stdout.splitlines()
    o = subprocess.run([sys.executable, "-m", "blocklayer.tools.img", "info",
                        "--output=json", str(img)], capture_output=True, text=True, env=_env())
    assert json.loads(o.stdout)["encrypted"] is True
    for argv in (["io", "-c", "read 0 4k"], ["img", "check"]):   # opening it: QEMU's words
        q = subprocess.run([f"qemu-{argv[0]}", *argv[1:], str(img)], capture_output=True,
                           text=True)
        o = subprocess.run([sys.executable, "-m", f"blocklayer.tools.{argv[0]}", *argv[1:],
                            str(img)], capture_output=True, text=True, env=_env())
        assert (o.returncode, o.stderr.replace("blocklayer-", "qemu-")) == \
            (q.returncode, q.stderr)


def test_check_of_image_with_broken_backing_fails_as_qemu(tmp_path: Path) -> None:
    base, top = tmp_path / "b.qcow2", tmp_path / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    base.unlink()
    q = subprocess.run(["qemu-img", "check", str(top)], capture_output=True, text=True)
    o = subprocess.run([sys.executable, "-m", "blocklayer.tools.img", "check", str(top)],
                       capture_output=True, text=True, env=_env())
    assert q.returncode == 1
    assert o.returncode == q.returncode
    assert o.stderr.replace("blocklayer-img", "qemu-img") == q.stderr
