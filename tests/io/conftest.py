"""Run qemu-io and blocklayer-io side by side on copies of one image."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

QEMU_IO = shutil.which("qemu-io")
ROOT = Path(__file__).resolve().parents[2]

_RATE = re.compile(r"^(.*), (\d+) ops; .* \(.*/sec and [\d.]+ ops/sec\)$", re.M)
_MACHINE = re.compile(r"^(\d+),(\d+),\d+:\d\d:\d\d\.\d\d,[\d.]+,[\d.]+$", re.M)
_PROG = re.compile(r"\b(qemu-io|blocklayer-io)\b")
#: qemu-io --help ends by pointing at QEMU's bug tracker; blocklayer-io does not
_QEMU_LINKS = re.compile(r"^\nSee <https://qemu.org/contribute/report-a-bug>.*\n.*qemu.org>.\n",
                         re.M)

needs_qemu_io = pytest.mark.skipif(QEMU_IO is None, reason="qemu-io is not installed")


@dataclass
class Result:
    rc: int
    out: str
    err: str
    image: bytes | None


def normalize(text: str) -> str:
    """Only the rate figures and the program name may differ."""
    text = _RATE.sub(r"\1, \2 ops; TIME", text)
    text = _MACHINE.sub(r"\1,\2,TIME", text)
    text = _QEMU_LINKS.sub("", text)
    return _PROG.sub("PROG", text)


def blocklayer_io_cmd() -> list[str]:
    return [sys.executable, "-m", "blocklayer.tools.io"]


def run_tool(cmd: list[str], cwd: Path, args: list[str], stdin: str | None = None,
             image: str = "img.raw", timeout: float = 30) -> Result:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               LC_ALL="C")
    proc = subprocess.run(cmd + args, cwd=cwd, input=stdin if stdin is not None else "",
                          capture_output=True, text=True, env=env, timeout=timeout)
    path = cwd / image
    data = path.read_bytes() if path.is_file() else None
    return Result(proc.returncode, proc.stdout, proc.stderr, data)


def make_image(directory: Path, content: bytes, name: str = "img.raw") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(content)
    return path


def both(tmp_path: Path, args: list[str], content: bytes = bytes(1 << 20),
         stdin: str | None = None) -> tuple[Result, Result]:
    """Run qemu-io and blocklayer-io with ``args`` on copies of an image ``img.raw``."""
    assert QEMU_IO is not None
    qdir, bdir = tmp_path / "qemu", tmp_path / "ours"
    make_image(qdir, content)
    make_image(bdir, content)
    q = run_tool(["qemu-io"], qdir, args, stdin)   # argv[0] as qemu-io prints it
    b = run_tool(blocklayer_io_cmd(), bdir, args, stdin)
    return q, b


def assert_same(q: Result, b: Result, image: bool = True) -> None:
    assert normalize(b.out) == normalize(q.out)
    assert normalize(b.err) == normalize(q.err)
    assert b.rc == q.rc
    if image:
        assert b.image == q.image
