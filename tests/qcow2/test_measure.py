"""``measure -O qcow2`` gives qemu-img's numbers, for a size and for a source image."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import qemu_img, qemu_io, tool


@pytest.mark.parametrize("args", [
    ["--size", "1G"], ["--size", "16M", "-o", "cluster_size=4096,refcount_bits=1"],
    ["--size", "100M", "-o", "extended_l2=on"], ["--size", "1G", "-o", "preallocation=full"],
    ["--size", "3M", "-o", "cluster_size=2M,compat=0.10"],
])
def test_measure_new_image(args: list[str]) -> None:
    theirs = qemu_img("measure", "--output=json", "-O", "qcow2", *args).stdout
    ours = tool("img", "measure", "--output=json", "-O", "qcow2", *args)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs


def test_measure_from_images(tmp_path: Path) -> None:
    src = tmp_path / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(src), "100M")
    qemu_io("-c", "write 0 1M", "-c", "write 7M 100k", "-c", "write -z 20M 1M", str(src))
    qemu_img("bitmap", "--add", "-g", "65536", str(src), "b0")
    raw = tmp_path / "src.raw"
    qemu_img("convert", "-O", "raw", str(src), str(raw))
    for args in (["-O", "qcow2", str(src)], ["-O", "qcow2", "-o", "cluster_size=512", str(src)],
                 ["-O", "qcow2", "-o", "compat=0.10", str(src)], ["-O", "qcow2", str(raw)],
                 ["-O", "raw", str(src)]):
        theirs = qemu_img("measure", *args).stdout
        ours = tool("img", "measure", *args)
        assert (ours.returncode, ours.stdout) == (0, theirs), ours.stderr
