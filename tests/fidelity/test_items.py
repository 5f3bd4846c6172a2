"""Items 4-7 of issue 11, each against qemu-img / qemu-io through symlinks of their names."""
from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import run_both

RAW_1000 = [["sh", "-c", "head -c 1000 /dev/urandom > o.raw"]]
RAW_3 = [["sh", "-c", "printf abc > o.raw"]]
ONE_RAW = [["qemu-img", "create", "-q", "-f", "raw", "a.raw", "1M"], ["mkdir", "d"]]


@pytest.mark.parametrize("tool,args,setup", [
    ("qemu-img", ["info", "--output=json", "o.raw"], RAW_1000),
    ("qemu-img", ["map", "--output=json", "o.raw"], RAW_1000),
    ("qemu-io", ["-f", "raw", "-c", "read -v 496 16", "o.raw"], RAW_3),
    ("qemu-io", ["-f", "raw", "-c", "write -P 1 500 12", "-c", "read -P 1 500 12",
                 "-c", "length", "o.raw"], RAW_3),
], ids=["info", "map", "read-tail", "write-tail"])
def test_raw_size_is_whole_sectors(tmp_path: Path, tool: str, args: list[str],
                                   setup: list[list[str]]) -> None:
    ours, theirs = run_both(tmp_path, tool, *args, setup=setup)
    strip = (lambda t: "\n".join(ln for ln in t.splitlines()
                                 if "actual-size" not in ln and "ops/sec" not in ln))
    assert (ours.rc, strip(ours.out), ours.err) == (theirs.rc, strip(theirs.out), theirs.err)


@pytest.mark.parametrize("tool,args", [
    ("qemu-img", ["info", "--image-opts", "driver=file,filename=/dev/null"]),
    ("qemu-img", ["info", "--image-opts", "driver=host_device,filename=a.raw"]),
    ("qemu-img", ["info", "--image-opts", "driver=host_cdrom,filename=a.raw"]),
    ("qemu-img", ["info", "-f", "raw", "/dev/null"]),
    ("qemu-img", ["info", "d"]),
    ("qemu-io", ["-c", "read 0 1", "d"]),
    ("qemu-io", ["-r", "-c", "read 0 1", "d"]),
], ids=["file-devnull", "hostdev-file", "cdrom-file", "devnull-probed", "dir-ro",
        "dir-rw", "dir-ro-io"])
def test_file_type_checks(tmp_path: Path, tool: str, args: list[str]) -> None:
    ours, theirs = run_both(tmp_path, tool, *args, setup=ONE_RAW)
    assert str(ours) == str(theirs)


@pytest.mark.parametrize("args", [
    ["create", "-f", "qcow2", "-b", "nosuch.qcow2", "top.qcow2"],
    ["create", "-f", "qcow2", "-b", "nosuch.qcow2", "top.qcow2", "1M"],
    ["create", "-f", "qcow2", "-u", "-b", "nosuch.qcow2", "top.qcow2", "1M"],
    ["create", "-f", "qcow2", "-b", "a.raw", "top.qcow2"],
], ids=["missing", "missing-size", "missing-unsafe", "detected"])
def test_create_backing_without_format_opens_it_first(tmp_path: Path, args: list[str]) -> None:
    ours, theirs = run_both(tmp_path, "qemu-img", *args, setup=ONE_RAW)
    assert str(ours) == str(theirs)


@pytest.mark.parametrize("tool,args", [
    ("qemu-io", ["-c", "read 0 512", "blkdebug::a.raw"]),
    ("qemu-io", ["-c", "read 0 512", "blkdebug:a.raw"]),
    ("qemu-io", ["-c", "open -o driver=raw,file.align=4096 blkdebug::a.raw",
                 "-c", "read 0 512", "-c", "write 512 512"]),
    ("qemu-img", ["info", "blkdebug:nosuch.conf:a.raw"]),
    ("qemu-img", ["map", "--output=json", "-f", "raw", "blkdebug::a.raw"]),
], ids=["plain", "no-config-colon", "file-align", "missing-config", "map"])
def test_blkdebug_filenames(tmp_path: Path, tool: str, args: list[str]) -> None:
    ours, theirs = run_both(tmp_path, tool, *args, setup=ONE_RAW)
    strip = (lambda t: "\n".join(ln for ln in t.splitlines() if "ops/sec" not in ln))
    assert (ours.rc, strip(ours.out), ours.err) == (theirs.rc, strip(theirs.out), theirs.err)
