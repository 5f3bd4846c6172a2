"""Differential testing of blocklayer-img against qemu-img 7.2: same inputs, same
output after filtering only what must differ (program name, timing, node names)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import need

QEMU_IMG = "qemu-img"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"rc={self.rc}\n--- stdout\n{self.out}--- stderr\n{self.err}"


def normalize(text: str) -> str:
    text = text.replace("qemu-img", "blocklayer-img")
    text = re.sub(r"Run completed in [0-9.]+ seconds", "Run completed in X seconds", text)
    text = re.sub(r"#block\d+", "#blockN", text)
    # progress steps depend on request sizes: compare that progress was shown at all
    text = re.sub(r"(?:    \([0-9.]+/100%\)[\r\n]+)+", "[progress]\n", text)
    return text


def ours(args: list[str], cwd: Path) -> Result:
    p = subprocess.run([sys.executable, "-m", "blocklayer.tools.img", *args], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    return Result(p.returncode, normalize(p.stdout), normalize(p.stderr))


def theirs(args: list[str], cwd: Path) -> Result:
    need(QEMU_IMG)
    p = subprocess.run([QEMU_IMG, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    return Result(p.returncode, normalize(p.stdout), normalize(p.stderr))


def assert_same(args: list[str], cwd: Path) -> Result:
    """Run both on the same files (read-only commands)."""
    a, b = ours(args, cwd), theirs(args, cwd)
    assert str(a) == str(b), f"blocklayer-img {' '.join(args)}\n{a}\n=== qemu-img\n{b}"
    return a


def assert_same_effect(args: list[str], base: Path, tmp: Path) -> tuple[Path, Path]:
    """Run both on copies of ``base``; same output; return (ours dir, theirs dir)."""
    mine, ref = tmp / "ours", tmp / "theirs"
    for d in (mine, ref):
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(base, d, symlinks=True)
    a, b = ours(args, mine), theirs(args, ref)
    assert str(a) == str(b), f"blocklayer-img {' '.join(args)}\n{a}\n=== qemu-img\n{b}"
    return mine, ref


def qimg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    need(QEMU_IMG)
    return subprocess.run([QEMU_IMG, *args], cwd=cwd, capture_output=True, text=True)


def qio(image: Path, *cmds: str, fmt: str | None = None) -> None:
    need("qemu-io")
    args = ["qemu-io"] + (["-f", fmt] if fmt else [])
    for c in cmds:
        args += ["-c", c]
    subprocess.run([*args, str(image)], check=True, capture_output=True)


def images_equal(a: Path, b: Path, strict: bool = False) -> None:
    """Same guest content (qemu-img compare), and both images pass qemu-img check."""
    res = qimg("compare", *(["-s"] if strict else []), str(a), str(b))
    if res.returncode == 2 and "backing file" in res.stderr:    # a dangling backing file
        assert qimg("compare", str(b), str(b)).returncode == 2, res.stderr
        return
    assert res.returncode == 0, res.stdout + res.stderr
    for img in (a, b):
        chk = qimg("check", str(img))
        assert chk.returncode in (0, 63), chk.stdout + chk.stderr


def make_zoo(d: Path) -> Path:
    """A directory of small images: raw, qcow2 chains, snapshots, bitmaps, qed."""
    d.mkdir(parents=True, exist_ok=True)
    qimg("create", "-q", "-f", "raw", "a.raw", "4M", cwd=d)
    qio(d / "a.raw", "write -P 1 64k 128k", "write -P 2 1M 4k", fmt="raw")
    qimg("create", "-q", "-f", "raw", "z.raw", "4M", cwd=d)
    qimg("create", "-q", "-f", "qcow2", "b.qcow2", "8M", cwd=d)
    qio(d / "b.qcow2", "write -P 3 0 1M", "write -P 4 5M 64k")
    qimg("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "c.qcow2", cwd=d)
    qio(d / "c.qcow2", "write -P 5 0 100k", "write -z 200k 64k", "write -P 6 6M 512k")
    qimg("create", "-q", "-f", "qcow2", "s.qcow2", "1M", cwd=d)
    qio(d / "s.qcow2", "write -P 7 0 64k")
    qimg("snapshot", "-c", "snap1", "s.qcow2", cwd=d)
    qio(d / "s.qcow2", "write -P 8 0 64k")
    qimg("bitmap", "--add", "b.qcow2", "bm0", cwd=d)
    qimg("create", "-q", "-f", "qed", "qb.qed", "8M", cwd=d)
    qio(d / "qb.qed", "write -P 9 0 2M", "write -P 10 4M 1M")
    qimg("create", "-q", "-f", "qed", "-b", "qb.qed", "-F", "qed", "qt.qed", cwd=d)
    qio(d / "qt.qed", "write -P 11 1M 2M")
    return d
