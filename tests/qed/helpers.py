"""Shared helpers of the QED tests: the oracle's view of an image and ours."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from blocklayer.core.create import create_image
from blocklayer.core.driver import CheckMode, CheckResult
from blocklayer.core.node import BlockNode
from blocklayer.core.open import open_image
from tests.conftest import qemu_img, qemu_io

Op = tuple[str, int, int, int]        # ("write" | "zero", offset, length, pattern)

CHECK_KEYS = {"corruptions": "corruptions", "leaks": "leaks", "check-errors": "check_errors",
              "allocated-clusters": "allocated_clusters",
              "fragmented-clusters": "fragmented_clusters",
              "total-clusters": "total_clusters"}


async def create(path: Path, size: int, **opts: Any) -> None:
    await create_image(str(path), "qed", size, {k: v for k, v in opts.items() if v is not None})


async def open_qed(path: Path, read_only: bool = False) -> BlockNode:
    return await open_image(str(path), fmt="qed", read_only=read_only)


async def apply(node: BlockNode, ops: list[Op]) -> None:
    for kind, off, n, pat in ops:
        if kind == "write":
            await node.write(off, bytes([pat]) * n)
        else:
            await node.write_zeroes(off, n)


def apply_model(model: bytearray, ops: list[Op]) -> None:
    for kind, off, n, pat in ops:
        model[off:off + n] = bytes([pat if kind == "write" else 0]) * n


def qemu_apply(path: Path, ops: list[Op]) -> None:
    args: list[str] = []
    for kind, off, n, pat in ops:
        args += ["-c", f"write -P {pat} {off} {n}" if kind == "write" else f"write -z {off} {n}"]
    qemu_io("-f", "qed", *args, str(path))


def qemu_check(path: Path) -> dict[str, int]:
    out = qemu_img("check", "-f", "qed", "--output=json", str(path), check=False)
    data = json.loads(out.stdout)
    return {k: data.get(k, 0) for k in CHECK_KEYS}


def our_check_dict(result: CheckResult) -> dict[str, int]:
    return {k: getattr(result, attr) for k, attr in CHECK_KEYS.items()}


async def our_check(path: Path) -> dict[str, int]:
    node = await open_qed(path, read_only=True)
    try:
        return our_check_dict(await node.driver.check(CheckMode.NONE))
    finally:
        await node.close()


async def read_all(path: Path) -> bytes:
    node = await open_qed(path, read_only=True)
    try:
        return await node.read(0, node.total_bytes)
    finally:
        await node.close()


def qemu_raw(path: Path, out: Path) -> bytes:
    qemu_img("convert", "-f", "qed", "-O", "raw", str(path), str(out))
    return out.read_bytes()
