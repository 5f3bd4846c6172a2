"""A crash after any number of metadata/data writes leaves at most leaks, and small
caches (constant eviction) keep the image consistent."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, qemu_img, run

from .helpers import MIB, apply_model, assert_clean, create, open_qcow2, our_ops, qemu_raw

CRASH = """
import asyncio, os, sys
from pathlib import Path
from blocklayer.core.driver import ReqFlag
from tests.qcow2.helpers import open_qcow2, our_ops
limit = int(sys.argv[2])
async def go(img):
    node = await open_qcow2(img, **{"l2-cache-size": "8k", "refcount-cache-size": "16k",
                                    "discard": "unmap"})
    drv = node.file.driver
    real = drv.write
    count = 0
    async def write(offset, data, flags):
        nonlocal count
        count += 1
        if count > limit:
            os._exit(3)
        await real(offset, data, flags)
    drv.write = write
    for i in range(12):
        await our_ops(node, [("write", i * 2 * 1024 * 1024 + 512 * i, 9000, i + 1)])
        await our_ops(node, [("compress", (40 + i) * 1024 * 1024, 4096, 50 + i)])
    await our_ops(node, [("discard", 0, 4 * 1024 * 1024, 0)])
    await node.truncate(128 * 1024 * 1024)
    await our_ops(node, [("write", 100 * 1024 * 1024, 70000, 99)])
    await node.close()
    os._exit(0)
asyncio.run(go(Path(sys.argv[1])))
"""


@pytest.mark.parametrize("limit", [3, 9, 17, 30, 50, 80, 110, 125, 140, 1000])
def test_crash_leaves_only_leaks(tmp_path: Path, limit: int) -> None:
    img = tmp_path / "img.qcow2"
    run(create(img, 64 * MIB, cluster_size=4096))
    proc = subprocess.run([sys.executable, "-c", CRASH, str(img), str(limit)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode in (0, 3), proc.stderr
    out = qemu_img("check", "--output=json", str(img), check=False)
    data = json.loads(out.stdout)
    assert data.get("corruptions", 0) == 0 and data.get("check-errors", 0) == 0, data
    if proc.returncode == 0:
        assert data.get("leaks", 0) == 0


def test_tiny_caches(tmp_path: Path) -> None:
    img = tmp_path / "img.qcow2"
    ops = [("write", i * MIB * 2 + 100, 5000, i + 1) for i in range(30)] + \
          [("zero", 8 * MIB, 8 * MIB, 0), ("write", 9 * MIB, 3000, 77)]

    async def go() -> None:
        await create(img, 64 * MIB, cluster_size=4096, refcount_bits=64)
        node = await open_qcow2(img, **{"cache-size": "24k"})
        try:
            await our_ops(node, ops)
            assert len(node.driver.l2_cache.entries) <= 2
        finally:
            await node.close()
    run(go())
    assert_clean(img)
    model = bytearray(64 * MIB)
    apply_model(model, ops)
    assert qemu_raw(img, tmp_path / "out.raw") == bytes(model)


CRASH_LAZY = """
import asyncio, os, sys
from pathlib import Path
from tests.qcow2.helpers import create, open_qcow2, our_ops
async def go(img):
    await create(img, 64 << 20, lazy_refcounts=True, cluster_size=512)
    node = await open_qcow2(img)
    await our_ops(node, [("write", 0, 12 << 20, 4)])       # grows the refcount table
    await node.flush()
    await our_ops(node, [("write", 20 << 20, 3 << 20, 5), ("compress", 30 << 20, 512, 6)])
    await node.driver.l2_cache.write_back()
    os._exit(0)
asyncio.run(go(Path(sys.argv[1])))
"""


def test_lazy_crash_after_refcount_table_growth(tmp_path: Path) -> None:
    img = tmp_path / "img.qcow2"
    subprocess.run([sys.executable, "-c", CRASH_LAZY, str(img)], check=True, cwd=ROOT)

    async def reopen() -> None:
        node = await open_qcow2(img)
        await node.close()
    run(reopen())
    assert_clean(img)
    model = bytearray(64 * MIB)
    apply_model(model, [("write", 0, 12 * MIB, 4), ("write", 20 * MIB, 3 * MIB, 5),
                        ("write", 30 * MIB, 512, 6)])
    assert qemu_raw(img, tmp_path / "out.raw") == bytes(model)
