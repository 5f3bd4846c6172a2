"""Images written by us: ``qemu-img check`` finds nothing and the data is right."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blocklayer.core.driver import Prealloc
from blocklayer.core.errors import BlockError
from tests.conftest import ROOT, qemu_img, qemu_io, run

from .helpers import (KIB, MIB, apply_model, assert_clean, create, open_qcow2, our_ops,
                      qemu_ops, qemu_raw, read_all)

SIZE = 32 * MIB


def ops_for(cs: int, compressed: bool = True) -> list[tuple[str, int, int, int]]:
    ops = [
        ("write", 0, cs // 2 + 7, 0x11),
        ("write", cs + 100, 5000, 0x22),
        ("write", 4 * cs, 3 * cs, 0x33),
        ("zero", 5 * cs, cs, 0),
        ("write", 5 * cs + 512, 512, 0x34),
        ("write", 9 * MIB - 700, 3 * cs + 1000, 0x44),
        ("discard", 4 * cs, cs, 0),
        ("zero-unmap", 9 * MIB, cs, 0),
        ("zero", 12 * MIB + 100, 3000, 0),
        ("write", SIZE - 512, 512, 0x55),
    ]
    if compressed:
        ops += [("compress", 16 * MIB, 2 * cs, 0x66), ("compress", 24 * MIB, cs, 0x77),
                ("write", 16 * MIB + 10, 20, 0x88), ("zero", 24 * MIB, cs, 0)]
    return ops


CONFIGS = [
    (512, {"cluster_size": 512}),
    (65536, {"refcount_bits": 1}),
    (2 * MIB, {"cluster_size": 2 * MIB, "refcount_bits": 64}),
    (65536, {"compat": "0.10"}),
    (65536, {"extended_l2": True}),
    (16384, {"cluster_size": 16384, "extended_l2": True, "compression_type": "zstd"}),
    (4096, {"cluster_size": 4096, "lazy_refcounts": True, "refcount_bits": 8}),
]


@pytest.mark.parametrize("cs,opts", CONFIGS, ids=[str(o) for _, o in CONFIGS])
def test_our_writes_check_clean(tmp_path: Path, cs: int, opts: dict) -> None:
    img = tmp_path / "img.qcow2"
    ops = ops_for(cs)

    async def go() -> None:
        await create(img, SIZE, **opts)
        node = await open_qcow2(img, discard="unmap")
        try:
            await our_ops(node, ops)
        finally:
            await node.close()
    run(go())
    model = bytearray(SIZE)
    apply_model(model, ops)
    assert_clean(img)
    expected = tmp_path / "expected.raw"
    expected.write_bytes(bytes(model))
    assert qemu_img("compare", "-q", "-f", "qcow2", "-F", "raw", str(img), str(expected),
                    check=False).returncode == 0
    assert run(read_all(img)) == bytes(model)


@pytest.mark.parametrize("extended", [False, True], ids=["standard", "extended-l2"])
def test_copy_on_write_from_backing(tmp_path: Path, extended: bool) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), str(SIZE))
    qemu_ops(base, [("write", 0, SIZE // 2, 0x01), ("compress", SIZE // 2, MIB, 0x02)])
    ops = ops_for(65536, compressed=False)

    async def go() -> None:
        await create(top, None, backing_file=base.name, backing_fmt="qcow2",
                     extended_l2=extended)
        node = await open_qcow2(top, discard="unmap")
        try:
            await our_ops(node, ops)
        finally:
            await node.close()
    run(go())
    assert_clean(top)
    expected = bytearray(qemu_raw(base, tmp_path / "base.raw"))
    for kind, off, n, pat in ops:     # discards fall back to zeroes here too (v3)
        expected[off:off + n] = bytes([pat]) * n if kind == "write" else bytes(n)
    assert qemu_raw(top, tmp_path / "out.raw") == bytes(expected)


def test_overwrite_qemu_compressed_and_zero_clusters(tmp_path: Path) -> None:
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", str(img), str(SIZE))
    first = [("compress", 0, 64 * KIB, 0x21), ("zero", MIB, 64 * KIB, 0),
             ("write", 2 * MIB, 64 * KIB, 0x22)]
    qemu_ops(img, first)
    qemu_io("-f", "qcow2", "-c", f"write -z {2 * MIB} {8 * KIB}", str(img))   # zero-alloc
    second = [("write", 100, 1000, 0x31), ("write", MIB + 4000, 200, 0x32),
              ("write", 2 * MIB + 10, 10, 0x33), ("write", 60 * KIB, 8 * KIB, 0x34)]

    async def go() -> None:
        node = await open_qcow2(img)
        try:
            await our_ops(node, second)
        finally:
            await node.close()
    run(go())
    model = bytearray(SIZE)
    apply_model(model, first + [("zero", 2 * MIB, 8 * KIB, 0)] + second)
    assert_clean(img)
    assert qemu_raw(img, tmp_path / "out.raw") == bytes(model)


def test_compressed_overwrite_refused(tmp_path: Path) -> None:
    img = tmp_path / "img.qcow2"

    async def go() -> None:
        await create(img, SIZE)
        node = await open_qcow2(img)
        try:
            await our_ops(node, [("write", 0, 4096, 1)])
            with pytest.raises(BlockError, match="Compression can't overwrite"):
                await our_ops(node, [("compress", 0, 65536, 2)])
        finally:
            await node.close()
    run(go())
    assert_clean(img)


def test_compressed_layout_matches_qemu(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "theirs.qcow2", tmp_path / "ours.qcow2"
    # one cluster per request: QEMU compresses the clusters of one request in parallel,
    # so their order in the file is not fixed
    ops = [("compress", 0, 65536, 0x41), ("compress", 65536, 65536, 0x43),
           ("compress", MIB, 65536, 0x42)]
    qemu_img("create", "-q", "-f", "qcow2", str(theirs), str(SIZE))
    qemu_ops(theirs, ops)

    async def go() -> None:
        await create(ours, SIZE)
        node = await open_qcow2(ours)
        try:
            await our_ops(node, ops)
        finally:
            await node.close()
    run(go())
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("backing", [False, True])
def test_zeroed_copy_on_write_allocates_as_qemu(tmp_path: Path, backing: bool) -> None:
    """QEMU's handle_alloc_space: unaligned writes into clusters with nothing under them
    zero the new clusters whole (fallocate) and write only the data; over a backing
    file's data the copy-on-write parts are written.  The files are byte for byte the
    same as qemu-io's and take the same blocks on the host."""
    from tests.conftest import tool
    theirs, ours = tmp_path / "theirs.qcow2", tmp_path / "ours.qcow2"
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "4M")
    qemu_io("-f", "qcow2", "-c", "write -P 9 1M 64k", str(base))
    for path in (theirs, ours):
        opts = ("-b", str(base), "-F", "qcow2") if backing else ()
        qemu_img("create", "-q", "-f", "qcow2", *opts, str(path), "4M")
    cmds = ["-c", "write -P 3 196508 70000", "-c", "write -P 4 1052000 9000",
            "-c", "write -P 5 3145000 100"]
    qemu_io("-f", "qcow2", *cmds, str(theirs))
    assert tool("io", "-f", "qcow2", *cmds, str(ours)).returncode == 0
    assert ours.read_bytes() == theirs.read_bytes()
    assert ours.stat().st_blocks == theirs.stat().st_blocks


def test_external_data_file_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    img = tmp_path / "img.qcow2"
    ops = ops_for(65536, compressed=False)

    async def go() -> None:
        await create(img, SIZE, data_file="img.data", data_file_raw=True)
        node = await open_qcow2(img, discard="unmap")
        try:
            await our_ops(node, ops)
        finally:
            await node.close()
    run(go())
    model = bytearray(SIZE)
    apply_model(model, ops)
    assert_clean(img)
    assert qemu_raw(img, tmp_path / "out.raw") == bytes(model)
    assert (tmp_path / "img.data").read_bytes().ljust(SIZE, b"\0") == bytes(model)


def test_lazy_refcounts_crash_repaired(tmp_path: Path) -> None:
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4k",
             str(img), str(SIZE))
    qemu_io("-f", "qcow2", "-c", "write -P 5 0 1M", "-c", "write -P 6 8M 100k",
            "-c", "abort", str(img), check=False)
    assert "dirty-flag" in qemu_img("info", "--output=json", str(img)).stdout
    ops = [("write", 4 * MIB, 70000, 7)]

    async def go() -> None:
        node = await open_qcow2(img)
        try:
            await our_ops(node, ops)
        finally:
            await node.close()
    run(go())
    assert_clean(img)
    model = bytearray(SIZE)
    apply_model(model, [("write", 0, MIB, 5), ("write", 8 * MIB, 100 * KIB, 6)] + ops)
    assert qemu_raw(img, tmp_path / "out.raw") == bytes(model)


CRASH = """
import asyncio, os, sys
from pathlib import Path
from tests.qcow2.helpers import create, open_qcow2, our_ops
async def crash(img):
    await create(img, 32 << 20, lazy_refcounts=True, cluster_size=4096)
    node = await open_qcow2(img)
    await our_ops(node, [("write", 0, 300 << 10, 9), ("compress", 1 << 20, 8192, 3)])
    await node.driver.l2_cache.write_back()    # the L2 tables reach the disk, not refcounts
    os._exit(0)
asyncio.run(crash(Path(sys.argv[1])))
"""


def test_our_crash_with_lazy_refcounts(tmp_path: Path) -> None:
    img = tmp_path / "img.qcow2"
    subprocess.run([sys.executable, "-c", CRASH, str(img)], check=True, cwd=ROOT)
    assert json.loads(qemu_img("info", "--output=json", str(img)).stdout)["dirty-flag"]
    run(read_all(img))       # read-only opens do not repair

    async def reopen() -> None:
        node = await open_qcow2(img)
        await node.close()
    run(reopen())
    assert_clean(img)
    model = bytearray(SIZE)
    apply_model(model, [("write", 0, 300 * KIB, 9), ("compress", MIB, 8192, 3)])
    assert qemu_raw(img, tmp_path / "out.raw") == bytes(model)


@pytest.mark.parametrize("opts", [{}, {"cluster_size": 512}, {"extended_l2": True}])
def test_resize_grow_and_shrink(tmp_path: Path, opts: dict) -> None:
    img = tmp_path / "img.qcow2"

    async def go() -> None:
        await create(img, 4 * MIB, **opts)
        node = await open_qcow2(img)
        try:
            await our_ops(node, [("write", 0, 4 * MIB, 1)])
            await node.truncate(3 * 1024 * MIB)
            await our_ops(node, [("write", 2048 * MIB, 70000, 2)])
            await node.truncate(2 * MIB + 512)
            await node.truncate(6 * MIB)
            await our_ops(node, [("write", 5 * MIB, 512, 3)])
            await node.truncate(8 * MIB, prealloc=Prealloc.METADATA)
        finally:
            await node.close()
    run(go())
    assert_clean(img)
    # as in QEMU, the tail of the cluster cut by the shrink shows again after the grow
    cs = opts.get("cluster_size", 65536)
    kept = -(-(2 * MIB + 512) // cs) * cs
    model = bytearray(8 * MIB)
    apply_model(model, [("write", 0, kept, 1), ("write", 5 * MIB, 512, 3)])
    assert qemu_raw(img, tmp_path / "out.raw") == bytes(model)


def test_reopen_read_write_and_back(tmp_path: Path) -> None:
    from blocklayer.core.reopen import reopen_set_read_only
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", str(img), str(SIZE))
    qemu_io("-f", "qcow2", "-c", "write -P 5 0 1M", "-c", "abort", str(img), check=False)

    async def go() -> None:
        node = await open_qcow2(img, read_only=True)
        try:
            await reopen_set_read_only(node, False)
            await our_ops(node, [("write", 2 * MIB, 70000, 6)])
            await reopen_set_read_only(node, True)
            assert not json.loads(qemu_img("info", "-U", "--output=json",
                                           str(img)).stdout)["dirty-flag"]
        finally:
            await node.close()
    run(go())
    assert_clean(img)
    model = bytearray(SIZE)
    apply_model(model, [("write", 0, MIB, 5), ("write", 2 * MIB, 70000, 6)])
    assert qemu_raw(img, tmp_path / "out.raw") == bytes(model)


@pytest.mark.parametrize("bits", [1, 16, 64])
def test_refcount_table_growth(tmp_path: Path, bits: int) -> None:
    img = tmp_path / "img.qcow2"
    ops = [("write", 0, 9 * MIB, 1), ("write", 40 * MIB, 12 * MIB + 300, 2),
           ("compress", 60 * MIB, 512, 3), ("discard", 0, 4 * MIB, 0),
           ("write", 100, 3 * MIB, 4)]

    async def go() -> None:
        await create(img, 64 * MIB, cluster_size=512, refcount_bits=bits)
        node = await open_qcow2(img, discard="unmap")
        try:
            await our_ops(node, ops)
        finally:
            await node.close()
    run(go())
    assert_clean(img)
    model = bytearray(64 * MIB)
    apply_model(model, ops)
    assert qemu_raw(img, tmp_path / "out.raw") == bytes(model)


@pytest.mark.parametrize("extended", [False, True], ids=["standard", "extended-l2"])
def test_concurrent_writes_into_one_cluster(tmp_path: Path, extended: bool) -> None:
    import asyncio
    img = tmp_path / "img.qcow2"

    async def go() -> None:
        await create(img, 4 * MIB, extended_l2=extended)
        node = await open_qcow2(img)
        try:
            await asyncio.gather(*(node.write(MIB + i * 4096 + 100, bytes([i + 1]) * 3000)
                                   for i in range(16)))
        finally:
            await node.close()
    run(go())
    assert_clean(img)
    info = json.loads(qemu_img("check", "--output=json", str(img)).stdout)
    assert info["allocated-clusters"] == 1
    model = bytearray(4 * MIB)
    for i in range(16):
        model[MIB + i * 4096 + 100:MIB + i * 4096 + 3100] = bytes([i + 1]) * 3000
    assert qemu_raw(img, tmp_path / "out.raw") == bytes(model)
