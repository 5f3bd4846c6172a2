"""Image locks as QEMU 7.2 takes them: QEMU and blocklayer refuse each other's writers."""
from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from blocklayer.core import registry
from blocklayer.core.driver import Perm
from blocklayer.core.errors import PermissionConflict
from blocklayer.core.open import open_image

from ..conftest import need, qemu_img, qemu_io
from .cowdriver import CowDriver  # noqa: F401  (registered by test_graph too)

registry.DRIVERS.setdefault("test-cow", "tests.core.cowdriver:CowDriver")


class QemuIoHolder:
    """An interactive qemu-io that keeps an image open until closed."""

    def __init__(self, *args: str) -> None:
        need("qemu-io")
        self.proc = subprocess.Popen(["qemu-io", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("length\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert "MiB" in line or "KiB" in line, line

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=10)


@pytest.fixture
def qcow2(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "locked.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "1M")
    yield path


def test_qemu_writer_blocks_our_writer(qcow2: Path) -> None:
    holder = QemuIoHolder("-f", "qcow2", str(qcow2))
    try:
        async def main() -> None:
            with pytest.raises(PermissionConflict, match='Failed to get "write" lock') as err:
                await open_image(str(qcow2), fmt="raw")
            assert f"Is another process using the image [{qcow2}]?" in str(err.value)
            # a format-style read-only open unshares write: refused too
            with pytest.raises(PermissionConflict, match='Failed to get shared "write" lock'):
                await open_image(str(qcow2), fmt="raw", read_only=True,
                                 shared=Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED)
            # force-share read-only works
            node = await open_image(str(qcow2), fmt="raw", read_only=True, shared=Perm.ALL)
            assert (await node.read(0, 4))[:3] == b"QFI"
            await node.close()
        asyncio.run(main())
    finally:
        holder.close()


def test_our_writer_blocks_qemu_writer(tmp_path: Path) -> None:
    from blocklayer.core.create import create_image
    from blocklayer.core.driver import CreateOption
    CowDriver.create_options = (CreateOption("size", "size"), CreateOption("backing_file", "string"))
    path = tmp_path / "ours.cow"

    async def main() -> None:
        await create_image(str(path), "test-cow", 1 << 20)
        node = await open_image(str(path), fmt="test-cow")     # format: unshares write
        try:
            res = await asyncio.to_thread(qemu_io, "-f", "raw", "-c", "read 0 512", str(path),
                                          check=False)
            assert res.returncode == 1
            assert 'Failed to get "write" lock' in res.stderr
            assert f"Is another process using the image [{path}]?" in res.stderr
            res = await asyncio.to_thread(qemu_io, "-r", "-U", "-f", "raw", "-c", "read 0 512",
                                          str(path), check=False)
            assert res.returncode == 0, res.stderr
            res = await asyncio.to_thread(qemu_img, "info", "-U", str(path), check=False)
            assert res.returncode == 0
        finally:
            await node.close()
        res = await asyncio.to_thread(qemu_io, "-f", "raw", "-c", "read 0 512", str(path))
        assert res.returncode == 0
    asyncio.run(main())


def test_raw_writers_share_as_in_qemu(raw_image: Path) -> None:
    """qemu-io on raw shares write (no format metadata): both may write, as in QEMU."""
    holder = QemuIoHolder("-f", "raw", str(raw_image))
    try:
        async def main() -> None:
            node = await open_image(str(raw_image), fmt="raw")
            await node.write(0, b"ok")
            await node.close()
        asyncio.run(main())
    finally:
        holder.close()


@pytest.mark.parametrize("fmt", ["qcow2", "qed"])
def test_blocklayer_io_and_qemu_io_refuse_each_others_writers(tmp_path: Path, fmt: str) -> None:
    """The foundation issue's promise, tool against tool."""
    from ..conftest import tool
    path = tmp_path / f"img.{fmt}"
    qemu_img("create", "-q", "-f", fmt, str(path), "1M")
    holder = QemuIoHolder("-f", fmt, str(path))
    try:
        res = tool("io", "-f", fmt, "-c", "write 0 512", str(path))
        assert res.returncode == 1
        assert 'Failed to get "write" lock' in res.stderr and "Traceback" not in res.stderr
        res = tool("io", "-r", "-U", "-f", fmt, "-c", "read 0 512", str(path))
        assert res.returncode == 0, res.stderr
    finally:
        holder.close()
    ours = subprocess.Popen([*tool_argv("io"), "-f", fmt, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert ours.stdin and ours.stdout
        ours.stdin.write("length\n")
        ours.stdin.flush()
        assert "MiB" in ours.stdout.readline().replace("qemu-io> ", "")
        res = qemu_io("-f", fmt, "-c", "write 0 512", str(path), check=False)
        assert res.returncode == 1 and 'Failed to get "write" lock' in res.stderr
        res = qemu_io("-r", "-U", "-f", fmt, "-c", "read 0 512", str(path), check=False)
        assert res.returncode == 0, res.stderr
    finally:
        ours.communicate("quit\n", timeout=20)


def tool_argv(name: str) -> list[str]:
    import sys
    return [sys.executable, "-m", f"blocklayer.tools.{name}"]
