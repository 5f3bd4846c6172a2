"""Chains of a thousand images (issue 12, finding 4): they open, read, map, convert and
list as QEMU 7.2's tools do (no depth limit in QEMU); a stack too small for the chain
gives one clear error, never a traceback or a crash."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, qemu_img, qemu_io

DEPTH = 1000
NAME = "c{:04d}.qcow2"


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """c0000 (data at 0) <- c0001 <- ... <- c1000, made by patching one template."""
    d = tmp_path_factory.mktemp("chain")
    qemu_img("create", "-q", "-f", "qcow2", str(d / NAME.format(0)), "1M")
    qemu_io("-c", "write -P 3 0 4k", "-c", "write -P 4 512k 4k", str(d / NAME.format(0)))
    template = d / "t.qcow2"
    qemu_img("create", "-q", "-u", "-f", "qcow2", "-b", NAME.format(0), "-F", "qcow2",
             str(template), "1M")
    raw = template.read_bytes()
    old = NAME.format(0).encode()
    assert raw.count(old) == 1
    for i in range(1, DEPTH + 1):
        (d / NAME.format(i)).write_bytes(raw.replace(old, NAME.format(i - 1).encode()))
    template.unlink()
    return d / NAME.format(DEPTH)


def ours(kind: str, *args: str, stack: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if stack is not None:
            resource.setrlimit(resource.RLIMIT_STACK, (stack, stack))
    return subprocess.run([sys.executable, "-m", f"blocklayer.tools.{kind}", *args],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_read_through_a_thousand_images(chain: Path) -> None:
    cmds = ["-r", "-c", "read -P 3 0 4k", "-c", "read -P 4 512k 4k", "-c", "read -P 0 4k 4k"]
    res = ours("io", *cmds, str(chain))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("read 4096/4096") == 3, res.stdout + res.stderr
    assert "Pattern verification failed" not in res.stdout


def test_map_convert_and_info_match_qemu(chain: Path, tmp_path: Path) -> None:
    # (the JSON map walks the chain per extent: 30 s in qemu-img, left out here)
    q, o = qemu_img("map", str(chain)), ours("img", "map", str(chain))
    assert o.returncode == 0, o.stderr
    assert o.stdout == q.stdout
    args = ["info", "--backing-chain", "--output=json", str(chain)]
    q, o = qemu_img(*args), ours("img", *args)
    assert o.returncode == 0, o.stderr
    assert json.loads(o.stdout) == json.loads(q.stdout)
    theirs, mine = tmp_path / "q.raw", tmp_path / "o.raw"
    qemu_img("convert", "-O", "raw", str(chain), str(theirs))
    o = ours("img", "convert", "-O", "raw", str(chain), str(mine))
    assert o.returncode == 0, o.stderr
    assert mine.read_bytes() == theirs.read_bytes()


def test_stack_too_small_is_a_clear_error(chain: Path) -> None:
    res = ours("io", "-r", "-c", "read 0 4k", str(chain), stack=2 << 20)
    assert res.returncode == 1
    assert "Backing chain is too deep" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
