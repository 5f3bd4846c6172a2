"""Internal snapshots against qemu-img: listing, create, apply, delete, load_tmp."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from blocklayer.core.driver import SnapshotInfo
from blocklayer.core.errors import BlockError
from blocklayer.formats.qcow2.snapshot import Snapshot, build_table
from blocklayer.core.open import open_image
from tests.conftest import qemu_img, qemu_io, run


def info_snapshots(path: Path) -> list[dict]:
    out = qemu_img("info", "-f", "qcow2", "--output=json", str(path))
    return json.loads(out.stdout).get("snapshots", [])


def assert_clean(path: Path) -> None:
    out = qemu_img("check", "-f", "qcow2", str(path), check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def make(path: Path, extra: tuple[str, ...] = ()) -> None:
    qemu_img("create", "-f", "qcow2", *extra, str(path), "4M")
    qemu_io("-f", "qcow2", "-c", "write -P 1 0 192k", "-c", "write -c -P 2 1M 64k",
            str(path))


def convert(path: Path, out: Path, snap: str | None = None) -> bytes:
    args = ["-l", snap] if snap else []
    qemu_img("convert", "-f", "qcow2", *args, "-O", "raw", str(path), str(out))
    return out.read_bytes()


async def ours(path: Path, *steps: tuple[str, str], read_only: bool = False) -> list:
    node = await open_image(str(path), fmt="qcow2", read_only=read_only)
    out = []
    try:
        drv = node.driver
        for op, name in steps:
            if op == "create":
                await drv.snapshot_create(SnapshotInfo(id="", name=name, date_sec=1000,
                                                       date_nsec=5000, icount=0))
            elif op == "goto":
                await drv.snapshot_goto(name)
            elif op == "delete":
                out.append(await drv.snapshot_delete(None, name))
            elif op == "write":
                await node.write(0, bytes([int(name)]) * 65536)
            elif op == "load_tmp":
                await drv.snapshot_load_tmp(None, name)
                out.append(bytes(await node.read(0, node.total_bytes)))
        out.append(await drv.snapshot_list())
    finally:
        await node.close()
    return out


def test_table_round_trip() -> None:
    sn = Snapshot(0x50000, 1, "7", "name", 5 << 32, 1, 2, 3, 4 << 20, 9)
    data = build_table([sn, sn])
    assert len(data) == 2 * 40 + 24 + 5 + 3 + 24 + 5


def test_list_matches_qemu(tmp_path: Path) -> None:
    path = tmp_path / "a.qcow2"
    make(path)
    for name in ("first", "second", "third"):
        qemu_img("snapshot", "-c", name, str(path))
    qemu_img("snapshot", "-d", "second", str(path))
    (listed,) = run(ours(path, read_only=True))
    theirs = info_snapshots(path)
    assert [(s.id, s.name, s.date_sec, s.date_nsec, s.vm_state_size, s.icount)
            for s in listed] == \
        [(t["id"], t["name"], t["date-sec"], t["date-nsec"], t["vm-state-size"],
          t.get("icount")) for t in theirs]


def test_refcount_overflow(tmp_path: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    make(a, ("-o", "refcount_bits=1"))
    shutil.copy(a, b)
    with pytest.raises(BlockError, match=r"^-22 \(Invalid argument\)$"):
        run(ours(a, ("create", "s1")))
    err = qemu_img("snapshot", "-c", "s1", str(b), check=False).stderr
    assert "-22 (Invalid argument)" in err
    ca = qemu_img("check", "--output=json", str(a), check=False)
    cb = qemu_img("check", "--output=json", str(b), check=False)
    assert json.loads(ca.stdout)["leaks"] == json.loads(cb.stdout)["leaks"] == 1


@pytest.mark.parametrize("opts", [(), ("-o", "compat=0.10"), ("-o", "refcount_bits=4"),
                                  ("-o", "extended_l2=on,cluster_size=16k")])
def test_ours_vs_qemu(tmp_path: Path, opts: tuple[str, ...]) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    make(a, opts)
    shutil.copy(a, b)
    # ours: s1, write, s2, write, apply s1, delete s2
    run(ours(a, ("create", "s1"), ("write", "7"), ("create", "s2"), ("write", "8"),
             ("goto", "s1"), ("delete", "s2")))
    qemu_img("snapshot", "-c", "s1", str(b))
    qemu_io("-f", "qcow2", "-c", "write -P 7 0 64k", str(b))
    qemu_img("snapshot", "-c", "s2", str(b))
    qemu_io("-f", "qcow2", "-c", "write -P 8 0 64k", str(b))
    qemu_img("snapshot", "-a", "s1", str(b))
    qemu_img("snapshot", "-d", "s2", str(b))
    assert_clean(a)
    assert convert(a, tmp_path / "a.raw") == convert(b, tmp_path / "b.raw")
    ta, tb = info_snapshots(a), info_snapshots(b)
    assert [(s["id"], s["name"], s["vm-state-size"]) for s in ta] == \
        [(s["id"], s["name"], s["vm-state-size"]) for s in tb]
    assert (ta[0]["date-sec"], ta[0]["date-nsec"], ta[0]["icount"]) == (1000, 5000, 0)
    # and the other way round: qemu-img applies and deletes what we made
    run(ours(a, ("write", "9"), ("create", "s3")))
    qemu_img("snapshot", "-a", "s1", str(a))
    qemu_img("snapshot", "-d", "s3", str(a))
    assert_clean(a)
    assert convert(a, tmp_path / "a.raw") == convert(b, tmp_path / "b.raw")


def test_delete_all_and_load_tmp(tmp_path: Path) -> None:
    path = tmp_path / "a.qcow2"
    make(path)
    qemu_img("snapshot", "-c", "old", str(path))
    qemu_io("-f", "qcow2", "-c", "write -P 5 0 128k", str(path))
    want = convert(path, tmp_path / "s.raw", "old")
    got, _ = run(ours(path, ("load_tmp", "old"), read_only=True))
    assert got == want
    with pytest.raises(BlockError, match="not readonly"):
        run(ours(path, ("load_tmp", "old")))
    deleted, listed = run(ours(path, ("delete", "old")))
    assert deleted.name == "old" and listed == []
    assert_clean(path)
    assert info_snapshots(path) == []
    with pytest.raises(BlockError, match="Can't find the snapshot"):
        run(ours(path, ("delete", "old")))
    with pytest.raises(BlockError, match="No such file or directory"):
        run(ours(path, ("goto", "old")))
