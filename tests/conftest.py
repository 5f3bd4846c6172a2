"""Shared fixtures: the QEMU oracle binaries and small helpers to run async code."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Awaitable, TypeVar

import pytest

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent

# Tests run the tools from this checkout even when the package is not installed.
os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed (CI must install it)")
        pytest.skip(f"{tool} is not installed")
    return path


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def qemu_img(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    need("qemu-img")
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=check)


def qemu_io(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    need("qemu-io")
    return subprocess.run(["qemu-io", *args], capture_output=True, text=True, check=check)


def tool(name: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run one of our tools from this checkout (``img``, ``io``, ``nbd``, ``daemon``)."""
    module = {"img": "blocklayer.tools.img", "io": "blocklayer.tools.io",
              "nbd": "blocklayer.tools.nbd", "daemon": "blocklayer.tools.daemon"}[name]
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, **kw)


@pytest.fixture
def raw_image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    return path


def qemu_img_create_luks(path: Path | str, size: str) -> None:
    """A LUKS-encrypted qcow2 made by qemu-img (secret ``pass``).  qemu-img's PBKDF
    benchmark sometimes fails with "Unable to get accurate CPU usage" (its CPU clock
    reads no progress); that is qemu-img's, so the create is tried again."""
    args = ("create", "-q", "--object", "secret,id=s0,data=pass", "-f", "qcow2", "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100",
            str(path), size)
    for _ in range(10):
        r = qemu_img(*args, check=False)
        if r.returncode == 0:
            return
        if "Unable to get accurate CPU usage" not in r.stderr:
            break
    raise subprocess.CalledProcessError(r.returncode, ["qemu-img", *args], r.stdout, r.stderr)
