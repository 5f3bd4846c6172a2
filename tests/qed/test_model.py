"""Random batches of concurrent requests on QED images, checked against a bytearray;
at the end the image passes our check and qemu-img's, and compares equal to the model."""
from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocklayer.core.driver import CheckMode
from blocklayer.formats.qed import table
from tests.conftest import qemu_img, run

from .helpers import create, open_qed, our_check_dict, qemu_check

CS = 4096
SIZE = 9 * 1024 * 1024 + 512          # three L2 tables at table_size=2, a partial last cluster


@st.composite
def batches(draw: st.DrawFn) -> list[list[tuple[str, int, int, int]]]:
    """Batches of requests with disjoint ranges (they may share clusters)."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        near = st.one_of(st.integers(0, SIZE), st.integers(0, 40).map(lambda c: c * CS),
                         st.integers(0, 40).map(lambda c: c * CS + 4 * 1024 * 1024))
        cuts = sorted(set(draw(st.lists(near, min_size=2, max_size=17))))
        batch = []
        for start, end in list(zip(cuts[::2], cuts[1::2])):
            kind = draw(st.sampled_from(["read", "write", "write", "zero"]))
            batch.append((kind, start, min(end - start, 3 << 20), draw(st.integers(1, 255))))
        out.append(batch)
    return out


async def _one(node, model: bytearray, kind: str, off: int, n: int, pat: int) -> None:
    if kind == "read":
        assert await node.read(off, n) == model[off:off + n]
    elif kind == "write":
        await node.write(off, bytes([pat]) * n)
    else:
        await node.write_zeroes(off, n)


def _apply_model(model: bytearray, batch: list[tuple[str, int, int, int]]) -> None:
    for kind, off, n, pat in batch:
        if kind != "read":
            model[off:off + n] = bytes([pat if kind == "write" else 0]) * n


async def _scenario(tmp: Path, backing: bool, plan: list) -> bytearray:
    img = tmp / "img.qed"
    model = bytearray(SIZE)
    if backing:
        base = tmp / "base.raw"
        model[:] = bytes((i * 7 + 3) % 256 for i in range(256)) * (SIZE // 256) + bytes(SIZE % 256)
        base.write_bytes(model[:SIZE - 8192])     # shorter than the image: zeroes beyond
        model[SIZE - 8192:] = bytes(8192)
        await create(img, SIZE, cluster_size=CS, table_size=2, backing_file=base.name,
                     backing_fmt="raw")
    else:
        await create(img, SIZE, cluster_size=CS, table_size=2)
    node = await open_qed(img)
    try:
        for batch in plan:
            await asyncio.gather(*(_one(node, model, *req) for req in batch
                                   if req[0] != "read"),
                                 *(_one(node, model, *req) for req in batch
                                   if req[0] == "read"))
            _apply_model(model, batch)
        assert await node.read(0, SIZE) == model
    finally:
        await node.close()
    node = await open_qed(img, read_only=True)
    try:
        assert await node.read(0, SIZE) == model
        result = await node.driver.check(CheckMode.NONE)
        assert result.corruptions == result.leaks == result.check_errors == 0
        ours = our_check_dict(result)
    finally:
        await node.close()
    assert qemu_check(img) == ours
    return model


def _run_checked(tmp: Path, backing: bool, plan: list) -> None:
    model = run(_scenario(tmp, backing, plan))
    expected = tmp / "expected.raw"
    expected.write_bytes(model)
    qemu_img("compare", "-f", "qed", "-F", "raw", str(tmp / "img.qed"), str(expected))
    for p in tmp.iterdir():
        p.unlink()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=batches(), backing=st.booleans())
def test_model(tmp_path: Path, plan: list, backing: bool) -> None:
    _run_checked(tmp_path, backing, plan)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=batches())
def test_model_tiny_cache(tmp_path: Path, plan: list) -> None:
    """Two cached L2 tables for three: entries are evicted and reloaded under load."""
    saved = table.CACHE_MAX_TABLES
    table.CACHE_MAX_TABLES = 2
    try:
        _run_checked(tmp_path, False, plan)
    finally:
        table.CACHE_MAX_TABLES = saved
