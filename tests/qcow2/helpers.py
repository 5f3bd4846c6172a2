"""Shared helpers of the qcow2 tests: the oracle's view of an image and ours."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from blocklayer.core.create import create_image
from blocklayer.core.node import BlockNode
from blocklayer.core.open import open_image
from tests.conftest import qemu_img, qemu_io

KIB, MIB = 1 << 10, 1 << 20
Op = tuple[str, int, int, int]   # (write | zero | discard | compress, offset, length, pattern)


async def create(path: Path, size: int | None, **opts: Any) -> None:
    await create_image(str(path), "qcow2", size,
                       {k: v for k, v in opts.items() if v is not None})


async def open_qcow2(path: Path, read_only: bool = False, **options: Any) -> BlockNode:
    return await open_image(str(path), options or None, fmt="qcow2", read_only=read_only)


async def read_all(path: Path, **options: Any) -> bytes:
    node = await open_qcow2(path, read_only=True, **options)
    try:
        return await node.read(0, node.total_bytes)
    finally:
        await node.close()


def qemu_ops(path: Path, ops: list[Op], *extra: str) -> None:
    """Apply ``ops`` with one qemu-io run."""
    args: list[str] = []
    for kind, off, n, pat in ops:
        cmd = {"write": f"write -P {pat} {off} {n}", "zero": f"write -z {off} {n}",
               "zero-unmap": f"write -z -u {off} {n}", "discard": f"discard {off} {n}",
               "compress": f"write -c -P {pat} {off} {n}"}[kind]
        args += ["-c", cmd]
    qemu_io(*extra, "-f", "qcow2", *args, str(path))


def apply_model(model: bytearray, ops: list[Op], zero_discard: bool = True) -> None:
    for kind, off, n, pat in ops:
        if kind in ("write", "compress"):
            model[off:off + n] = bytes([pat]) * n
        elif kind.startswith("zero") or (kind == "discard" and zero_discard):
            model[off:off + n] = bytes(n)


async def our_ops(node: BlockNode, ops: list[Op]) -> None:
    from blocklayer.core.driver import ReqFlag
    for kind, off, n, pat in ops:
        if kind == "write":
            await node.write(off, bytes([pat]) * n)
        elif kind == "compress":
            await node.write(off, bytes([pat]) * n, ReqFlag.COMPRESSED)
        elif kind == "zero":
            await node.write_zeroes(off, n)
        elif kind == "zero-unmap":
            await node.write_zeroes(off, n, ReqFlag.MAY_UNMAP)
        elif kind == "discard":
            await node.discard(off, n)


def qemu_raw(path: Path, out: Path) -> bytes:
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(path), str(out))
    return out.read_bytes()


def qemu_check(path: Path) -> dict[str, Any]:
    out = qemu_img("check", "-f", "qcow2", "--output=json", str(path), check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def assert_clean(path: Path) -> None:
    data = qemu_check(path)
    bad = {k: data.get(k, 0) for k in ("corruptions", "leaks", "check-errors")}
    assert bad == {"corruptions": 0, "leaks": 0, "check-errors": 0}, data


def qemu_info(path: Path) -> dict[str, Any]:
    out = qemu_img("info", "--output=json", str(path))
    data = json.loads(out.stdout)
    data.pop("filename", None)
    return data


def _data_extents(path: Path) -> list[tuple[int, int]]:
    import os
    out = []
    with open(path, "rb") as f:
        fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    return out


def same_file(a: Path, b: Path) -> bool:
    """Byte equality of two (possibly huge, sparse) files, reading only their data."""
    if a.stat().st_size != b.stat().st_size:
        return False
    regions = sorted(set(_data_extents(a)) | set(_data_extents(b)))
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in regions:
            pos = start
            while pos < end:
                n = min(end - pos, 1 << 22)
                fa.seek(pos)
                fb.seek(pos)
                if fa.read(n) != fb.read(n):
                    return False
                pos += n
    return True
