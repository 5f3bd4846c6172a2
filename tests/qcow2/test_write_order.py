"""``allocates_in_order``: writes started one after another, each once the last has
taken its first step (as convert keeps them in flight), leave the same file as writes
that each wait for the last; across L2 tables and refcount blocks, over existing data."""
from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from .helpers import KIB, create, open_qcow2

CLUSTER = 512                       # L2 tables of 32 KiB of guest data
SIZE = 4 << 20


async def _write(path: Path, writes: list[tuple[int, int, int]], overlapped: bool,
                 extra: list[tuple[int, int, int]]) -> bytes:
    await create(path, SIZE, cluster_size=CLUSTER)
    node = await open_qcow2(path)
    try:
        assert node.driver.allocates_in_order
        for off, n, pat in extra:                    # data already there
            await node.write(off, bytes([pat]) * n)
        if overlapped:
            tasks = []
            for off, n, pat in writes:
                tasks.append(asyncio.ensure_future(node.write(off, bytes([pat]) * n)))
                await asyncio.sleep(0)               # its first step runs, then the next
            await asyncio.gather(*tasks)
        else:
            for off, n, pat in writes:
                await node.write(off, bytes([pat]) * n)
    finally:
        await node.close()
    return path.read_bytes()


def _runs(draw_sizes: list[int]) -> list[tuple[int, int, int]]:
    out, pos = [], 0
    for i, clusters in enumerate(draw_sizes):
        n = clusters * CLUSTER
        if pos + n > SIZE:
            break
        out.append((pos, n, i % 250 + 1))
        pos += n
    return out


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 200), min_size=2, max_size=25),
       extra=st.lists(st.tuples(st.integers(0, SIZE // CLUSTER - 64),
                                st.integers(1, 64)), max_size=4))
def test_overlapped_writes_lay_out_as_sequential(tmp_path_factory, sizes: list[int],
                                                 extra: list[tuple[int, int]]) -> None:
    tmp = tmp_path_factory.mktemp("order")
    writes = _runs(sizes)
    old = [(c * CLUSTER, n * CLUSTER, 251) for c, n in extra]

    async def both() -> tuple[bytes, bytes]:
        return (await _write(tmp / "seq.qcow2", writes, False, old),
                await _write(tmp / "ovl.qcow2", writes, True, old))
    seq, ovl = asyncio.run(both())
    assert seq == ovl


def test_long_write_spans_many_l2_tables(tmp_path: Path) -> None:
    # one request over 40 L2 tables and a partial cluster at each end
    async def go() -> tuple[bytes, bytes]:
        w = [(100, 1300 * KIB, 7), (100 + 1300 * KIB, 64 * KIB, 8)]
        return (await _write(tmp_path / "a.qcow2", w, False, []),
                await _write(tmp_path / "b.qcow2", w, True, []))
    a, b = asyncio.run(go())
    assert a == b
