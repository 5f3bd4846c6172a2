"""The differential harness shared by the simple formats' tests (vdi, vpc, ...).

Everything runs QEMU's tools and ours on the same input and compares: the guest data
(both ways), ``info`` (human and JSON), ``create`` (file bytes, with the fields that
hold a time or a random UUID masked by the caller), ``convert`` and hostile headers
opened under an address-space limit.
"""
from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from blocklayer.core.create import create_image
from blocklayer.core.node import BlockNode
from blocklayer.core.open import open_image
from tests.conftest import ROOT, qemu_img, qemu_io, tool
from tests.conftest import run as _run

Op = tuple[str, int, int, int]          # ("write" | "zero", offset, length, pattern)
KIB, MIB = 1 << 10, 1 << 20
AS_LIMIT = 1 << 30                      # address space for opening hostile images


def apply_model(model: bytearray, ops: list[Op]) -> None:
    for kind, off, n, pat in ops:
        model[off:off + n] = bytes([pat if kind == "write" else 0]) * n


def qemu_apply(path: Path, fmt: str, ops: list[Op]) -> None:
    args: list[str] = []
    for kind, off, n, pat in ops:
        args += ["-c", f"write -P {pat} {off} {n}" if kind == "write" else
                 f"write -z {off} {n}"]
    qemu_io("-f", fmt, *args, str(path))


async def our_apply(node: BlockNode, ops: list[Op]) -> None:
    for kind, off, n, pat in ops:
        if kind == "write":
            await node.write(off, bytes([pat]) * n)
        else:
            await node.write_zeroes(off, n)


async def our_create(path: Path, fmt: str, size: int, **opts: Any) -> None:
    await create_image(str(path), fmt, size, opts)


async def our_read_all(path: Path, fmt: str) -> bytes:
    node = await open_image(str(path), fmt=fmt, read_only=True)
    try:
        return bytes(await node.read(0, node.total_bytes))
    finally:
        await node.close()


async def our_write(path: Path, fmt: str, ops: list[Op]) -> None:
    node = await open_image(str(path), fmt=fmt)
    try:
        await our_apply(node, ops)
    finally:
        await node.close()


def qemu_raw(path: Path, fmt: str, tmp: Path) -> bytes:
    """The guest data as qemu-img converts it to raw."""
    out = tmp / f"{path.name}.raw"
    qemu_img("convert", "-f", fmt, "-O", "raw", str(path), str(out))
    return out.read_bytes()


def ours_named(text: str) -> str:
    """Our tool's output with its program name replaced by qemu-img's."""
    return text.replace("blocklayer-img:", "qemu-img:")


Outcome = tuple[int, str, str]          # exit code, stdout, stderr


def both(*args: str) -> tuple[Outcome, Outcome]:
    """The same ``qemu-img`` command by QEMU and by us."""
    q = qemu_img(*args, check=False)
    b = tool("img", *args)
    return ((q.returncode, q.stdout, q.stderr),
            (b.returncode, b.stdout, ours_named(b.stderr)))


def info_pair(path: Path, *args: str) -> tuple[Outcome, Outcome]:
    return both("info", *args, str(path))


def patched(src: Path, dst: Path, edits: list[tuple[int, str, Any]],
            fix: Callable[[bytearray], None] | None = None) -> Path:
    """A copy of ``src`` with ``struct`` edits (offset, format, value) applied."""
    data = bytearray(src.read_bytes())
    for off, fmt, value in edits:
        struct.pack_into(fmt, data, off, value)
    if fix is not None:
        fix(data)
    dst.write_bytes(data)
    return dst


def _limit_as() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def ours_limited(*args: str) -> subprocess.CompletedProcess[str]:
    """Our ``blocklayer-img`` under an address-space limit, bounded in time."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "blocklayer.tools.img", *args],
                          capture_output=True, text=True, env=env, timeout=120,
                          preexec_fn=_limit_as)


def masked_file(path: Path, mask: Callable[[bytearray], None]) -> tuple[int, bytes, bytes]:
    """Size, head and tail of an image (sparse files of any size) after ``mask``."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = bytearray(f.read(min(size, 4 * MIB)))
        f.seek(max(0, size - 64 * KIB))
        tail = bytearray(f.read())
    mask(head)
    mask(tail)
    return size, bytes(head), bytes(tail)


# ---------------------------------------------------------------------------------------
# A random model test: batches of concurrent requests against a bytearray
# ---------------------------------------------------------------------------------------

Batch = list[tuple[str, int, int, int]]


def batches(size: int, block: int) -> Any:
    """A hypothesis strategy: batches of requests with disjoint ranges (they may share
    blocks), near block boundaries and anywhere."""
    from hypothesis import strategies as st

    @st.composite
    def draw_batches(draw: Any) -> list[Batch]:
        out = []
        for _ in range(draw(st.integers(1, 4))):
            near = st.one_of(st.integers(0, size),
                             st.integers(0, size // block).map(lambda b: b * block),
                             st.integers(1, size // block).map(lambda b: b * block - 1))
            cuts = sorted(set(draw(st.lists(near, min_size=2, max_size=9))))
            batch = []
            for start, end in zip(cuts[::2], cuts[1::2]):
                kind = draw(st.sampled_from(["read", "write", "write", "zero"]))
                batch.append((kind, start, min(end - start, 3 * MIB),
                              draw(st.integers(1, 255))))
            out.append(batch)
        return out
    return draw_batches()


def model_settings() -> Any:
    """Hypothesis settings of the short model tests (a few examples, no deadline)."""
    from hypothesis import HealthCheck, settings
    return settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def model_roundtrip(tmp: Path, fmt: str, create_opts: list[str], size: int,
                    plan: list[Batch]) -> Path:
    """A fresh qemu-img image, the plan run on our node, the data as qemu-img sees it."""
    path = tmp / f"m.{fmt}"
    path.unlink(missing_ok=True)
    qemu_img("create", "-q", "-f", fmt, *create_opts, str(path), str(size))
    model = _run(run_batches(path, fmt, size, plan))
    assert qemu_raw(path, fmt, tmp) == model
    return path


async def run_batches(path: Path, fmt: str, size: int, plan: list[Batch]) -> bytearray:
    """Run each batch's requests together on our node; reads must see the model."""
    import asyncio
    model = bytearray(size)
    node = await open_image(str(path), fmt=fmt)
    try:
        for batch in plan:
            async def one(kind: str, off: int, n: int, pat: int) -> None:
                if kind == "read":
                    assert bytes(await node.read(off, n)) == model[off:off + n]
                elif kind == "write":
                    await node.write(off, bytes([pat]) * n)
                else:
                    await node.write_zeroes(off, n)
            await asyncio.gather(*(one(*r) for r in batch))
            apply_model(model, [r for r in batch if r[0] != "read"])
        assert bytes(await node.read(0, size)) == model
    finally:
        await node.close()
    return model


# ---------------------------------------------------------------------------------------
# convert, both ways
# ---------------------------------------------------------------------------------------

def check_convert_from(src: Path, fmt: str, target: str, tmp: Path) -> None:
    """Our convert of a ``fmt`` image to ``target``: qemu-img compare finds them equal."""
    dst = tmp / f"out.{target}"
    assert tool("img", "convert", "-O", target, str(src), str(dst)).returncode == 0
    assert qemu_img("compare", "-f", fmt, "-F", target, str(src), str(dst)).returncode == 0


def check_convert_to(tmp: Path, source: str, fmt: str, opts: list[str], size: int,
                     ops: list[Op], mask: Callable[[bytearray], None]) -> Path:
    """Our convert of a ``source`` image with ``ops`` written to ``fmt``: equal to the
    source, and the same file as qemu-img's convert (after ``mask``)."""
    src, dst, ref = tmp / f"src.{source}", tmp / f"out.{fmt}", tmp / f"ref.{fmt}"
    qemu_img("create", "-q", "-f", source, str(src), str(size))
    qemu_apply(src, source, ops)
    res = tool("img", "convert", "-O", fmt, *opts, str(src), str(dst))
    assert res.returncode == 0, res.stderr
    assert qemu_img("compare", "-f", source, "-F", fmt, str(src), str(dst)).returncode == 0
    qemu_img("convert", "-O", fmt, *opts, str(src), str(ref))
    assert masked_file(dst, mask) == masked_file(ref, mask)
    return dst
