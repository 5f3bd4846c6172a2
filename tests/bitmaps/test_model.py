"""Random writes, write-zeroes, discards and bitmap operations on a qcow2 node (the
driver's bitmaps) and a raw node (core/dirty.py's) against a model: the set of dirty
granules of each bitmap.  The two kinds must also hash alike."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocklayer.core import dirty
from blocklayer.core.open import open_image
from tests.conftest import qemu_img

SIZE = 4 << 20
CLUSTER = 65536

offsets = st.integers(0, SIZE - 1)
io_op = st.tuples(st.sampled_from(["write", "zero"]), offsets, st.integers(1, 300_000))
discard_op = st.tuples(st.just("discard"), st.integers(0, SIZE // CLUSTER - 1),
                       st.integers(1, 4))
bitmap_op = st.tuples(st.sampled_from(["clear", "enable", "disable", "merge"]),
                      st.integers(0, 2), st.integers(0, 2))
ops = st.lists(st.one_of(io_op, discard_op, bitmap_op), max_size=25)
GRANS = (512, 4096, 65536)


class Model:
    def __init__(self) -> None:
        self.bits: list[set[int]] = [set() for _ in GRANS]
        self.on = [True] * len(GRANS)

    def mark(self, offset: int, length: int) -> None:
        for i, g in enumerate(GRANS):
            if self.on[i] and length > 0:
                self.bits[i] |= set(range(offset // g, (offset + length - 1) // g + 1))

    def merge(self, dst: int, src: int) -> None:
        g, h = GRANS[dst], GRANS[src]
        for b in self.bits[src]:
            self.bits[dst] |= set(range(b * h // g, ((b + 1) * h - 1) // g + 1))


async def _apply(node: Any, bms: list[Any], model: Model, op: tuple[Any, ...]) -> None:
    kind, a, b = op
    if kind == "write":
        length = min(b, SIZE - a)
        await node.write(a, b"\x01" * length)
        model.mark(a, length)
    elif kind == "zero":
        length = min(b, SIZE - a)
        await node.write_zeroes(a, length)
        model.mark(a, length)
    elif kind == "discard":
        length = min(b, SIZE // CLUSTER - a) * CLUSTER
        await node.discard(a * CLUSTER, length)
        model.mark(a * CLUSTER, length)
    elif kind == "clear":
        dirty.clear(bms[a])
        model.bits[a] = set()
    elif kind in ("enable", "disable"):
        dirty.set_enabled(bms[a], kind == "enable")
        model.on[a] = kind == "enable"
    else:
        dirty.merge_into(bms[a], bms[b])
        model.merge(a, b)


def _granules(bm: Any) -> set[int]:
    return {i for start, stop in dirty.dirty_runs(bm, 0, 1 << 40) for i in range(start, stop)}


async def _run(path: Path, fmt: str, steps: list[tuple[Any, ...]]) -> list[str]:
    node = await open_image(str(path), {"discard": "unmap"}, fmt=fmt)
    try:
        bms = [await dirty.add(node, f"b{g}", g) for g in GRANS]
        model = Model()
        for op in steps:
            await _apply(node, bms, model, op)
        for bm, want, g in zip(bms, model.bits, GRANS):
            assert _granules(bm) == want
            assert bm.count() == len(want)
            extents = dirty.extents(bm, 0, SIZE)
            assert sum(n for _, n, _ in extents) == SIZE
            assert sum(n for _, n, d in extents if d) == \
                sum(min(g, SIZE - i * g) for i in want)
        return [dirty.sha256(bm) for bm in bms]
    finally:
        await node.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=ops)
def test_bits_follow_the_model(tmp_path: Path, steps: list[tuple[Any, ...]]) -> None:
    qcow2, raw = tmp_path / "m.qcow2", tmp_path / "m.raw"
    qemu_img("create", "-q", "-f", "qcow2", str(qcow2), str(SIZE))
    qemu_img("create", "-q", "-f", "raw", str(raw), str(SIZE))
    assert asyncio.run(_run(qcow2, "qcow2", steps)) == asyncio.run(_run(raw, "raw", steps))
