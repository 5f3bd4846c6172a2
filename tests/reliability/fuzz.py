"""Fuzz targets over the qcow2 and QED open / read / block-status (map) / check paths,
with seed images built at run time by qemu-img and qemu-io.

One target takes image bytes: it opens them read-only in untrusted mode (nothing an
image names is opened), reads, walks block status as ``map`` does and checks, each
under a time budget.  Anything but a :class:`BlockError` (a traceback), a hang or a
runaway allocation is a finding.  Then the bytes open read-write: a failed open must
leave them byte-identical.  ``scripts/fuzz`` runs it long; the tests run it short.
"""
from __future__ import annotations

import asyncio
import subprocess
import tempfile
from pathlib import Path

from blocklayer.core.driver import CheckMode
from blocklayer.core.errors import BlockError
from blocklayer.core.open import open_image
from blocklayer.core.options import OpenFlags

KIB = 1024
FORMATS = ("qcow2", "qed")
READ_LIMIT = 4 << 20
BUDGET_SECONDS = 20.0


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def build_seeds(directory: Path) -> dict[str, list[bytes]]:
    """Small images with data, compressed and zero clusters, snapshots and bitmaps."""
    seeds: dict[str, list[bytes]] = {f: [] for f in FORMATS}
    variants = {
        "qcow2": [["-o", "cluster_size=4096"], ["-o", "cluster_size=4096,compat=0.10"],
                  ["-o", "cluster_size=16384,extended_l2=on"],
                  ["-o", "cluster_size=4096,refcount_bits=1"]],
        "qed": [["-o", "cluster_size=4096"], []],
    }
    for fmt, opts_list in variants.items():
        for i, opts in enumerate(opts_list):
            img = directory / f"seed{i}.{fmt}"
            _run("qemu-img", "create", "-q", "-f", fmt, *opts, str(img), "1M")
            cmds = ["write -P 1 0 20k", "write -P 3 900k 5000", "write -z 128k 8k"]
            if fmt == "qcow2":
                cmds.append("write -c -P 2 64k 16k")
            argv = ["qemu-io", "-f", fmt]
            for c in cmds:
                argv += ["-c", c]
            _run(*argv, str(img))
            if fmt == "qcow2" and i == 0:
                _run("qemu-img", "snapshot", "-c", "s1", str(img))
                _run("qemu-img", "bitmap", "--add", str(img), "b1")
            seeds[fmt].append(img.read_bytes())
    return seeds


def mutate(seed: bytes, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(seed)
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    return bytes(data)


async def _exercise(path: Path, fmt: str) -> None:
    flags = OpenFlags(allow_external_files=False)
    node = await open_image(str(path), fmt=fmt, read_only=True, flags=flags)
    try:
        size = min(node.total_bytes, READ_LIMIT)
        await node.read(0, size)
        pos = 0
        while pos < size:
            status = await node.block_status(pos, size - pos)
            pos += max(status.length, 1)
        await node.driver.check(CheckMode.NONE)
    finally:
        await node.close()


async def _open_rw(path: Path, fmt: str) -> bool:
    """Open read-write and close; True if the open failed."""
    flags = OpenFlags(allow_external_files=False)
    try:
        node = await open_image(str(path), fmt=fmt, flags=flags)
    except BlockError:
        return True
    try:
        await node.close()        # may fail (a BlockError) on what the image hides
    except BlockError:
        pass
    return False


def target(data: bytes, fmt: str) -> None:
    """One execution: raises AssertionError (or anything but BlockError) on a finding."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"img.{fmt}"
        path.write_bytes(data)
        try:
            asyncio.run(asyncio.wait_for(_exercise(path, fmt), BUDGET_SECONDS))
        except BlockError:
            pass
        except TimeoutError:
            raise AssertionError(f"{fmt}: open/read/map/check took over "
                                 f"{BUDGET_SECONDS:g} s") from None
        path.write_bytes(data)
        failed = asyncio.run(asyncio.wait_for(_open_rw(path, fmt), BUDGET_SECONDS))
        if failed:
            assert path.read_bytes() == data, f"{fmt}: a failed read-write open wrote"
