"""convert -C (copy offloading) against qemu-img 7.2: same output, same image content,
same allocation and, for qcow2, the same cluster layout; the offload really runs (the
host files see copy_range requests) and falls back to reading and writing where a
source cannot offload."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blocklayer.tools.img import convert as convert_mod
from blocklayer.tools.img.main import run as img_run

from .helpers import assert_same_effect, images_equal, qimg, qio


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("offload")
    qimg("create", "-q", "-f", "raw", "a.raw", "4M", cwd=d)
    # zeroes written as data: copied by -C, left out by zero detection without it
    qio(d / "a.raw", "write -P 1 64k 128k", "write -P 0 1M 256k", "write -P 2 3M 4k",
        fmt="raw")
    qimg("create", "-q", "-f", "qcow2", "b.qcow2", "8M", cwd=d)
    qio(d / "b.qcow2", "write -P 3 0 1M", "write -P 4 5M 64k", "write -P 0 6M 64k")
    qimg("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "c.qcow2", cwd=d)
    qio(d / "c.qcow2", "write -P 5 0 100k", "write -z 200k 64k", "write -P 6 6M 512k")
    qimg("convert", "-c", "-O", "qcow2", "c.qcow2", "cz.qcow2", cwd=d)
    (d / "odd1.raw").write_bytes(bytes(range(256)) * 390 + b"x")       # 99841 bytes
    (d / "odd2.raw").write_bytes(b"\x07" * 70000)
    return d


CASES = [
    ["-f", "raw", "-O", "raw", "a.raw"],
    ["-f", "raw", "-O", "qcow2", "a.raw"],
    ["-O", "qcow2", "b.qcow2"],
    ["-O", "raw", "c.qcow2"],
    ["-O", "qcow2", "c.qcow2"],
    ["-O", "qcow2", "-B", "b.qcow2", "-F", "qcow2", "c.qcow2"],
    ["-O", "qcow2", "-o", "extended_l2=on", "c.qcow2"],
    ["-m", "1", "-O", "qcow2", "-o", "compat=0.10,cluster_size=512", "c.qcow2"],
    ["-t", "none", "-T", "none", "-O", "qcow2", "c.qcow2"],
    ["-f", "raw", "-O", "raw", "odd1.raw", "odd2.raw"],
    ["-f", "raw", "-O", "qcow2", "-o", "cluster_size=4k", "odd1.raw", "odd2.raw"],
    ["-O", "raw", "cz.qcow2"],
    ["-O", "qcow2", "cz.qcow2"],
]


def _map(image: Path) -> Any:
    res = qimg("map", "--output=json", str(image))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("args", CASES, ids=[" ".join(c) for c in CASES])
def test_convert_offload_as_qemu_img(sources: Path, tmp_path: Path, args: list[str]) -> None:
    mine, ref = assert_same_effect(["convert", "-C", *args, "o.img"], sources, tmp_path)
    images_equal(mine / "o.img", ref / "o.img", strict=True)
    assert _map(mine / "o.img") == _map(ref / "o.img")


# ---- in process: what the converter asked of the target ---------------------------------

@pytest.fixture
def offload_counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """(bytes copied by offloading, bytes written) at the target's file after each run."""
    counts: list[tuple[int, int]] = []
    original = convert_mod.Converter.run

    async def run_and_count(self: convert_mod.Converter) -> None:
        await original(self)
        host = self.target.file
        assert host is not None
        counts.append((host.stats.copy_range.bytes, host.stats.write.bytes))
    monkeypatch.setattr(convert_mod.Converter, "run", run_and_count)
    yield counts


def _convert_in_process(args: list[str], cwd: Path) -> None:
    here = os.getcwd()
    os.chdir(cwd)
    try:
        assert img_run(["convert", "-q", *args]) == 0
    finally:
        os.chdir(here)


def test_offload_reaches_the_host_file(sources: Path, tmp_path: Path,
                                       offload_counts: list[tuple[int, int]]) -> None:
    """Every data byte of the source arrives by copy offloading, none without -C."""
    for flag, out in ((["-C"], "offloaded.qcow2"), ([], "copied.qcow2")):
        _convert_in_process([*flag, "-f", "raw", "-O", "qcow2", str(sources / "a.raw"),
                             str(tmp_path / out)], tmp_path)
    offloaded, copied = offload_counts
    data = 4096 + 128 * 1024 + 256 * 1024 + 4096      # what a.raw's file holds as data
    assert offloaded[0] == data
    assert copied[0] == 0
    images_equal(tmp_path / "offloaded.qcow2", tmp_path / "copied.qcow2")


def test_offload_falls_back_for_the_rest_of_the_job(tmp_path: Path,
                                                    offload_counts: list[tuple[int, int]]) -> None:
    """Normal clusters first, then compressed ones: the first part is offloaded, the
    copy that meets a compressed cluster and everything after it are read and written."""
    qimg("create", "-q", "-f", "qcow2", "s.qcow2", "4M", cwd=tmp_path)
    qio(tmp_path / "s.qcow2", "write -P 1 0 1M", "write -c -P 2 2M 64k",
        "write -P 3 3M 64k")
    _convert_in_process(["-C", "-m", "1", "-O", "qcow2", "s.qcow2", "ours.qcow2"], tmp_path)
    assert qimg("convert", "-C", "-m", "1", "-O", "qcow2", "s.qcow2", "theirs.qcow2",
                cwd=tmp_path).returncode == 0
    (offloaded, written), = offload_counts
    assert offloaded == 1 << 20
    assert written >= 2 * 65536
    images_equal(tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2", strict=True)
    assert _map(tmp_path / "ours.qcow2") == _map(tmp_path / "theirs.qcow2")


def test_offload_across_file_systems_falls_back(tmp_path: Path,
                                                offload_counts: list[tuple[int, int]]) -> None:
    """copy_file_range between /dev/shm and the disk may fail with EXDEV: then the job
    reads and writes, and the image is the same."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system at /dev/shm")
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        src = shm / "s.raw"
        src.write_bytes(b"\x05" * (1 << 20))
        _convert_in_process(["-C", "-f", "raw", "-O", "raw", str(src), "o.raw"], tmp_path)
    finally:
        shutil.rmtree(shm)
    (offloaded, written), = offload_counts
    assert offloaded in (0, 1 << 20)          # 0 where the kernel refuses a cross-fs copy
    assert offloaded + written >= 1 << 20
    assert (tmp_path / "o.raw").read_bytes() == b"\x05" * (1 << 20)
