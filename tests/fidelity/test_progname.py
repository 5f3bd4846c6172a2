"""Item 1 of issue 11: the tools name themselves after ``basename(argv[0])``."""
from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import tool
from .helpers import run_both


@pytest.mark.parametrize("args", [
    ["info", "nosuch.qcow2"],
    ["create", "-f", "qcow2", "x.qcow2", "1x"],
    ["bogus"],
    [],
    ["resize", "--nosuch"],
    ["convert", "-S", "7", "a", "b"],
    ["bench", "-c", "x", "a"],
    ["--version"],
])
def test_qemu_img_prefix_is_argv0(tmp_path: Path, args: list[str]) -> None:
    ours, theirs = run_both(tmp_path, "qemu-img", *args)
    if args == ["--version"]:
        assert ours.out.split(" version ")[0] == theirs.out.split(" version ")[0] == "qemu-img"
        return
    assert str(ours) == str(theirs)


@pytest.mark.parametrize("args", [
    ["-c", "read 0 512", "nosuch.raw"],
    ["--nosuch"],
    ["-x"],
    ["-c", "nosuchcmd"],
])
def test_qemu_io_prefix_is_argv0(tmp_path: Path, args: list[str]) -> None:
    ours, theirs = run_both(tmp_path, "qemu-io", *args)
    assert str(ours) == str(theirs)


def test_qemu_io_usage_names_argv0(tmp_path: Path) -> None:
    ours, theirs = run_both(tmp_path, "qemu-io", "-h")
    assert ours.out.splitlines()[0] == theirs.out.splitlines()[0]


def test_module_run_keeps_blocklayer_name() -> None:
    assert tool("img", "info", "/nonexistent/x").stderr.startswith("blocklayer-img: ")
    assert tool("io", "-c", "read 0 1", "/nonexistent/x").stderr.startswith("blocklayer-io: ")
