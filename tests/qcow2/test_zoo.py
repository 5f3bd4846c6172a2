"""The differential zoo (issue 3): 40+ images across qcow2's options, made both ways.

Images QEMU makes (qemu-img create + qemu-io writes, zeroes, discards, compressed writes)
read back byte-identical through blocklayer, and blocklayer's check finds what
``qemu-img check`` finds.  The same options on images blocklayer creates and writes
pass ``qemu-img check`` with nothing to report and ``qemu-img compare`` equal to the
expected data.
"""
from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from blocklayer.core.driver import CheckMode
from tests.conftest import qemu_img, qemu_io

from .helpers import MIB, apply_model, create, open_qcow2, our_ops, qemu_ops

SIZE = 4 * MIB

VARIANTS: list[dict[str, str]] = []
for cluster, refbits, compat in itertools.product(("512", "65536", "2M"), ("1", "16", "64"),
                                                  ("0.10", "1.1")):
    if compat == "0.10" and refbits != "16":
        continue
    VARIANTS.append({"cluster_size": cluster, "refcount_bits": refbits, "compat": compat})
for cluster, comp in itertools.product(("4096", "65536", "2M"), ("zlib", "zstd")):
    VARIANTS.append({"cluster_size": cluster, "compression_type": comp})
for cluster in ("16384", "65536", "2M"):
    VARIANTS.append({"cluster_size": cluster, "extended_l2": "on"})
VARIANTS += [
    {"lazy_refcounts": "on"},
    {"lazy_refcounts": "on", "cluster_size": "4096"},
    {"preallocation": "metadata"},
    {"preallocation": "falloc", "cluster_size": "4096"},
    {"preallocation": "full"},
    {"refcount_bits": "2"}, {"refcount_bits": "4"}, {"refcount_bits": "8"},
    {"refcount_bits": "32"},
    {"extended_l2": "on", "compression_type": "zstd"},
    {"cluster_size": "1024", "refcount_bits": "64"},
    {"cluster_size": "1M", "compat": "0.10"},
]


def _ids(v: dict[str, str]) -> str:
    return ",".join(f"{k}={x}" for k, x in v.items())


def _cluster(variant: dict[str, str]) -> int:
    text = variant.get("cluster_size", "65536")
    return {"2M": 2 * MIB, "1M": MIB}.get(text, int(text) if text.isdigit() else 65536)


def _ops(variant: dict[str, str], seed: int) -> list[tuple[str, int, int, int]]:
    """Compressed writes first, each into a cluster of its own (neither QEMU nor a
    1-bit refcount can overwrite or share them), then random writes, zeroes, discards."""
    import random
    rng = random.Random(seed)
    ops = []
    cs = _cluster(variant)
    if variant.get("refcount_bits") != "1" and "preallocation" not in variant:
        for idx in rng.sample(range(SIZE // cs), min(3, SIZE // cs)):
            ops.append(("compress", idx * cs, cs, rng.randrange(1, 255)))
    for _ in range(10):
        kind = rng.choice(["write", "write", "zero", "discard"])
        off = rng.randrange(SIZE - 4096)
        ops.append((kind, off, rng.randrange(1, min(300000, SIZE - off)), rng.randrange(1, 255)))
    return ops


def _check_json(path: Path) -> dict:
    res = qemu_img("check", "--output=json", "-f", "qcow2", str(path), check=False)
    return json.loads(res.stdout) if res.stdout.strip() else {"rc": res.returncode}


async def _our_check(path: Path) -> dict:
    from blocklayer.core.options import OpenFlags
    from blocklayer.core.open import open_image
    node = await open_image(str(path), fmt="qcow2", read_only=True,
                            flags=OpenFlags(check=True), backing=False)
    try:
        r = await node.driver.check(CheckMode.NONE)
    finally:
        await node.close()
    return {"corruptions": r.corruptions, "leaks": r.leaks, "check-errors": r.check_errors,
            "image-end-offset": r.image_end_offset, "total-clusters": r.total_clusters,
            "allocated-clusters": r.allocated_clusters,
            "fragmented-clusters": r.fragmented_clusters,
            "compressed-clusters": r.compressed_clusters}


def _qemu_create(path: Path, variant: dict[str, str], size: int = SIZE) -> None:
    opts = ",".join(f"{k}={v}" for k, v in variant.items())
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, str(path), str(size))


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_qemu_made_image_reads_back_and_checks_alike(tmp_path: Path,
                                                     variant: dict[str, str]) -> None:
    path = tmp_path / "q.qcow2"
    _qemu_create(path, variant)
    ops = _ops(variant, seed=len(_ids(variant)))
    qemu_ops(path, ops)
    expected = tmp_path / "expected.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(path), str(expected))

    async def main() -> tuple[bytes, dict]:
        node = await open_qcow2(path, read_only=True)
        try:
            data = bytes(await node.read(0, node.total_bytes))
        finally:
            await node.close()
        return data, await _our_check(path)
    data, ours = asyncio.run(main())
    assert data == expected.read_bytes()
    theirs = _check_json(path)
    for key, value in ours.items():
        assert value == theirs.get(key, 0), f"{key}: ours {value}, qemu {theirs.get(key, 0)}"


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_our_image_passes_qemu_check_and_compare(tmp_path: Path,
                                                 variant: dict[str, str]) -> None:
    path = tmp_path / "ours.qcow2"
    ops = _ops(variant, seed=len(_ids(variant)) + 1)
    model = bytearray(SIZE)
    cs = _cluster(variant)
    for kind, off, n, pat in ops:       # discard drops whole clusters only
        if kind == "discard":
            start, end = -(-off // cs) * cs, (off + n) // cs * cs
            if end > start:
                model[start:end] = bytes(end - start)
        else:
            apply_model(model, [(kind, off, n, pat)])

    async def main() -> None:
        await create(path, SIZE, **variant)
        node = await open_qcow2(path, discard="unmap")
        try:
            await our_ops(node, ops)
        finally:
            await node.close()
    asyncio.run(main())
    res = qemu_img("check", "-f", "qcow2", str(path), check=False)
    assert res.returncode == 0 and "No errors were found" in res.stdout, res.stdout + res.stderr
    expected = tmp_path / "expected.raw"
    expected.write_bytes(bytes(model))
    res = qemu_img("compare", "-f", "raw", "-F", "qcow2", str(expected), str(path), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    info = json.loads(qemu_img("info", "--output=json", str(path)).stdout)
    data = info["format-specific"]["data"]
    if "compat" in variant:
        assert data["compat"] == variant["compat"]
    if "refcount_bits" in variant:
        assert data["refcount-bits"] == int(variant["refcount_bits"])


@pytest.mark.parametrize("cluster", ["4096", "65536"])
def test_lazy_refcounts_left_dirty_by_qemu(tmp_path: Path, cluster: str) -> None:
    """qemu-io aborts with lazy refcounts: we read the data and find what qemu-img finds;
    a read-write open repairs the image as QEMU's does."""
    path = tmp_path / "dirty.qcow2"
    _qemu_create(path, {"lazy_refcounts": "on", "cluster_size": cluster})
    qemu_io("-c", "write -P 5 0 300k", "-c", "write -P 6 1M 64k", "-c", "abort", str(path),
            check=False)
    expected = tmp_path / "expected.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(path), str(expected))
    theirs = _check_json(path)
    assert theirs.get("corruptions")           # the abort really left it dirty
    ours = asyncio.run(_our_check(path))
    for key, value in ours.items():
        assert value == theirs.get(key, 0), f"{key}: ours {value}, qemu {theirs.get(key, 0)}"

    async def reopen() -> bytes:
        node = await open_qcow2(path)
        try:
            return bytes(await node.read(0, node.total_bytes))
        finally:
            await node.close()
    assert asyncio.run(reopen()) == expected.read_bytes()
    after = _check_json(path)
    assert not after.get("corruptions") and not after.get("leaks"), after
