"""Persistent dirty bitmaps against qemu-img bitmap / info / check and qemu-nbd."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from blocklayer.core.driver import SnapshotInfo
from blocklayer.core.errors import BlockError
from blocklayer.core.open import open_image
from blocklayer.core.options import OpenFlags
from tests.conftest import need, qemu_img, qemu_io, run

KIB = 1024


def info_bitmaps(path: Path) -> list[dict]:
    out = qemu_img("info", "-f", "qcow2", "-U", "--output=json", str(path))
    return json.loads(out.stdout)["format-specific"]["data"].get("bitmaps", [])


def assert_clean(path: Path) -> None:
    out = qemu_img("check", "-f", "qcow2", str(path), check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def qemu_dirty(path: Path, name: str, tmp: Path) -> list[tuple[int, int]]:
    """The dirty ranges of a bitmap as QEMU sees it (qemu-nbd -B, qemu-img map)."""
    need("qemu-nbd")
    sock = tmp / f"{name}.sock"
    proc = subprocess.Popen(["qemu-nbd", "-r", "-f", "qcow2", "-B", name, "-k", str(sock),
                             str(path)], stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.02)
        out = qemu_img("map", "--output=json", "--image-opts",
                       f"driver=nbd,server.type=unix,server.path={sock},"
                       f"x-dirty-bitmap=qemu:dirty-bitmap:{name}")
    finally:
        proc.terminate()
        proc.wait()
    return [(e["start"], e["length"]) for e in json.loads(out.stdout) if not e["data"]]


def ranges(bits: np.ndarray, gran: int, size: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in np.flatnonzero(bits).tolist():
        start, end = i * gran, min((i + 1) * gran, size)
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((start, end - start))
    return out


async def our_bitmaps(path: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    node = await open_image(str(path), fmt="qcow2", read_only=True)
    try:
        drv = node.driver
        listed = drv.bitmap_list()
        return listed, {b["name"]: drv.bitmap_get(b["name"]) for b in listed
                        if not b["inconsistent"]}
    finally:
        await node.close()


def test_read_qemu_bitmaps(tmp_path: Path) -> None:
    path = tmp_path / "a.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "4M")
    qemu_img("bitmap", "--add", str(path), "b1")
    qemu_io("-f", "qcow2", "-c", "write 0 64k", "-c", "write 1M 4k", "-c", "write 3M 300k",
            str(path))
    qemu_img("bitmap", "--add", "-g", "128k", "--disable", str(path), "b2")
    qemu_img("bitmap", "--merge", "b1", str(path), "b2")
    qemu_img("bitmap", "--add", "-g", "512", str(path), "b3")
    qemu_io("-f", "qcow2", "-c", "write 2M 1k", str(path))
    qemu_img("bitmap", "--clear", str(path), "b1")
    listed, bits = run(our_bitmaps(path))
    assert [{k: b[k] for k in ("name", "granularity", "flags")} for b in listed] == \
        info_bitmaps(path)
    assert [b["recording"] for b in listed] == [True, False, True]
    for b in listed:
        assert ranges(bits[b["name"]], b["granularity"], 4 << 20) == \
            qemu_dirty(path, b["name"], tmp_path)


def test_check_counts_bitmap_clusters_as_qemu(tmp_path: Path) -> None:
    import sys
    path = tmp_path / "a.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "4M")
    qemu_img("bitmap", "--add", str(path), "b1")
    qemu_io("-f", "qcow2", "-c", "write 0 64k", "-c", "write 3M 300k", str(path))
    qemu_img("bitmap", "--add", "-g", "512", str(path), "b2")
    qemu_io("-f", "qcow2", "-c", "write 2M 1k", str(path))
    mine = subprocess.run([sys.executable, "-m", "blocklayer.tools.img", "check",
                           "--output=json", str(path)], capture_output=True, text=True)
    theirs = qemu_img("check", "--output=json", str(path))
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout) == json.loads(theirs.stdout)


def test_ours_in_qemu(tmp_path: Path) -> None:
    path = tmp_path / "a.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "8M")
    qemu_img("bitmap", "--add", str(path), "theirs")

    async def work() -> None:
        node = await open_image(str(path), fmt="qcow2")
        drv = node.driver
        await drv.bitmap_add("ours")
        await drv.bitmap_add("small", granularity=4 * KIB, disabled=True)
        await drv.bitmap_add("temp", persistent=False)
        await node.write(100 * KIB, b"x" * 5000)
        await node.write(7 << 20, b"y" * 70000)
        drv.bitmap_set("small", 1 << 20, 10 * KIB)
        await drv.bitmap_merge("small", "theirs")
        assert [b["flags"] for b in info_bitmaps(path)] == [["in-use", "auto"]]
        await node.close()

    run(work())
    assert info_bitmaps(path) == [
        {"flags": ["auto"], "name": "theirs", "granularity": 65536},
        {"flags": ["auto"], "name": "ours", "granularity": 65536},
        {"flags": [], "name": "small", "granularity": 4096}]
    assert_clean(path)
    listed, bits = run(our_bitmaps(path))
    for b in listed:
        assert ranges(bits[b["name"]], b["granularity"], 8 << 20) == \
            qemu_dirty(path, b["name"], tmp_path)
    assert qemu_dirty(path, "ours", tmp_path) == [(64 * KIB, 64 * KIB), (7 << 20, 128 * KIB)]
    # qemu-img can go on working with what we stored
    qemu_img("bitmap", "--remove", str(path), "ours")
    qemu_img("bitmap", "--enable", str(path), "small")
    assert_clean(path)
    assert [b["name"] for b in info_bitmaps(path)] == ["theirs", "small"]


def test_remove_snapshot_resize(tmp_path: Path) -> None:
    path = tmp_path / "a.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "4M")
    qemu_img("bitmap", "--add", str(path), "b1")
    qemu_img("bitmap", "--add", str(path), "b2")
    qemu_io("-f", "qcow2", "-c", "write 0 64k", str(path))

    async def work() -> None:
        node = await open_image(str(path), fmt="qcow2", flags=OpenFlags(resize=True))
        drv = node.driver
        await drv.bitmap_remove("b1")
        await node.truncate(6 << 20, True)
        await node.write(5 << 20, b"z" * 10)
        await drv.snapshot_create(SnapshotInfo(id="", name="s"))
        await node.write(0, b"q")
        await drv.snapshot_goto("s")
        await node.close()

    run(work())
    assert_clean(path)
    assert [b["name"] for b in info_bitmaps(path)] == ["b2"]
    assert qemu_dirty(path, "b2", tmp_path) == [(0, 64 * KIB), (5 << 20, 64 * KIB)]

    async def remove_all() -> None:
        node = await open_image(str(path), fmt="qcow2")
        await node.driver.bitmap_remove("b2")
        await node.close()

    run(remove_all())
    assert info_bitmaps(path) == []
    assert_clean(path)
    data = path.read_bytes()
    assert not int.from_bytes(data[88:96], "big") & 1      # autoclear bit gone


def test_in_use_after_crash(tmp_path: Path) -> None:
    path, copy = tmp_path / "a.qcow2", tmp_path / "crashed.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "4M")
    qemu_img("bitmap", "--add", str(path), "b1")

    async def crash() -> None:
        node = await open_image(str(path), fmt="qcow2")
        await node.write(0, b"x")
        shutil.copy(path, copy)            # as the disk is while we run
        await node.close()

    run(crash())
    assert info_bitmaps(copy)[0]["flags"] == ["in-use", "auto"]
    listed, _ = run(our_bitmaps(copy))
    assert listed[0]["inconsistent"]

    async def use() -> None:
        node = await open_image(str(copy), fmt="qcow2")
        with pytest.raises(BlockError, match="inconsistent"):
            await node.driver.bitmap_clear("b1")
        await node.driver.bitmap_remove("b1")
        await node.close()

    run(use())
    assert info_bitmaps(copy) == []
    assert_clean(copy)


def test_limits(tmp_path: Path) -> None:
    v2 = tmp_path / "v2.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", str(v2), "4M")

    async def add(path: Path, name: str, **kw: object) -> None:
        node = await open_image(str(path), fmt="qcow2")
        try:
            await node.driver.bitmap_add(name, **kw)
        finally:
            await node.close()

    with pytest.raises(BlockError, match="Cannot store dirty bitmaps in qcow2 v2 files"):
        run(add(v2, "b"))
    v3 = tmp_path / "v3.qcow2"
    qemu_img("create", "-f", "qcow2", str(v3), "4M")
    with pytest.raises(BlockError, match="Granularity is under minimum"):
        run(add(v3, "b", granularity=256))
    with pytest.raises(BlockError, match="Granularity must be power of 2"):
        run(add(v3, "b", granularity=3000))
    with pytest.raises(BlockError, match="Bitmap name too long"):
        run(add(v3, "n" * 1024))
    assert info_bitmaps(v3) == []


def test_resize_refused_with_an_inconsistent_bitmap(tmp_path: Path) -> None:
    """The bitmap check comes before any resizing (the driver's truncate says the order:
    check the bitmaps, resize, resize the bitmaps), with qemu-img's message."""
    from blocklayer.formats.qcow2 import layout as L
    from tests.conftest import tool
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "4M")
    qemu_img("bitmap", "--add", str(base), "b0")
    raw = bytearray(base.read_bytes())
    ext = L.parse_header(bytes(raw[:65536])).bitmaps
    assert ext is not None
    entry = L.BitmapDirEntry.parse_from(bytes(raw), ext.directory_offset)
    assert entry is not None
    entry.flags |= L.BME_FLAG_IN_USE                    # as a crash leaves it
    built = entry.build()
    raw[ext.directory_offset:ext.directory_offset + len(built)] = built
    theirs, mine = tmp_path / "theirs.qcow2", tmp_path / "mine.qcow2"
    theirs.write_bytes(raw)
    mine.write_bytes(raw)
    want = qemu_img("resize", str(theirs), "8M", check=False)
    got = tool("img", "resize", str(mine), "8M")
    assert (got.returncode, got.stderr.replace("blocklayer-img:", "qemu-img:", 1)) == \
        (want.returncode, want.stderr) != (0, "")
    sizes = [json.loads(qemu_img("info", "-U", "--output=json", str(p)).stdout)["virtual-size"]
             for p in (theirs, mine)]
    assert sizes == [4 << 20, 4 << 20]
