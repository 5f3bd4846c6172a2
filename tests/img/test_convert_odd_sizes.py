"""convert with sources whose sizes are not multiples of 512 or of the cluster size:
qemu-img lays sources out in whole sectors and pads the last compressed cluster."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import qemu_img, tool


@pytest.mark.parametrize("args", [
    ["-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", "A"],
    ["-c", "-f", "raw", "-O", "qcow2", "A"],
    ["-f", "raw", "-O", "qcow2", "A", "B"],
    ["-f", "raw", "-O", "raw", "A", "B"],
])
def test_odd_sized_sources(tmp_path: Path, args: list[str]) -> None:
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    a.write_bytes(bytes(range(256)) * 390 + b"x")            # 99841 bytes
    b.write_bytes(b"\x07" * 70000)
    argv = [str(a) if x == "A" else str(b) if x == "B" else x for x in args]
    theirs, ours = tmp_path / "theirs.img", tmp_path / "ours.img"
    qemu_img("convert", *argv, str(theirs))
    res = tool("img", "convert", *argv, str(ours))
    assert res.returncode == 0, res.stderr
    fmt = args[args.index("-O") + 1]
    cmp = qemu_img("compare", "-s", "-f", fmt, "-F", fmt, str(theirs), str(ours), check=False)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
