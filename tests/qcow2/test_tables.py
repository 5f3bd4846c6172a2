"""Tables in memory (standard-library arrays, no numpy on the request path): their
on-disk form, run lookups with and without numpy, the refcount helpers and the
overlap check of guest data writes."""
from __future__ import annotations

import asyncio
import importlib
import random
import struct
from pathlib import Path

import pytest

from blocklayer.core.errors import BlockError
from blocklayer.formats.qcow2 import layout as L
from blocklayer.formats.qcow2 import mapping as M
from blocklayer.formats.qcow2.mapping import (L1E_OFFSET_MASK, L2E_OFFSET_MASK,
                                              OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO, SC,
                                              Geometry, Mapping)
from blocklayer.formats.qcow2.overlap import MetadataClusters
from blocklayer.formats.qcow2.refcount import (REFT_OFFSET_MASK, Refcounts, count_used,
                                               first_used, last_used)
from tests.conftest import qemu_img, run

from .helpers import open_qcow2, qemu_ops

CS = 65536


@pytest.mark.parametrize("order,fmt", [(3, ">B"), (4, ">H"), (5, ">I"), (6, ">Q")])
def test_tables_round_trip_their_big_endian_form(order: int, fmt: str) -> None:
    width = struct.calcsize(fmt)
    rng = random.Random(width)
    values = [rng.getrandbits(8 * width) for _ in range(100)]
    raw = b"".join(struct.pack(fmt, v) for v in values)
    table = L.parse_table(raw, L.refcount_typecode(order))
    assert list(table) == values
    assert L.build_table(table) == raw
    assert L.build_table(table, 10, 20) == raw[10 * width:20 * width]
    view = L.as_ndarray(table)
    view[3] = 5                             # a view: the table changes with it
    assert table[3] == 5 and view.dtype.itemsize == width


def test_refcount_table_drops_reserved_bits_only_when_set() -> None:
    rng = random.Random(1)
    clean = [rng.getrandbits(48) << 9 for _ in range(64)]
    raw = b"".join(struct.pack(">Q", v) for v in clean)
    assert list(Refcounts.load_table(raw, 64)) == clean
    for bit in range(9):                    # each reserved bit, in the last entry
        dirty = clean[:-1] + [clean[-1] | 1 << bit]
        raw = b"".join(struct.pack(">Q", v) for v in dirty)
        assert list(Refcounts.load_table(raw, 64)) == [v & REFT_OFFSET_MASK for v in dirty]


def test_refcount_run_helpers() -> None:
    from array import array
    for values in ([0, 0, 3, 0, 1, 0], [0] * 5, [7], [1, 0, 0]):
        counts = array("H", values)
        used = [i for i, v in enumerate(values) if v]
        assert first_used(counts) == (used[0] if used else len(values))
        assert last_used(counts) == (used[-1] if used else -1)
        assert count_used(counts) == len(used)


# ---- run lookups ----------------------------------------------------------------------

def _random_l2(rng: random.Random, entries: int) -> list[int]:
    """Runs of unallocated, zero, contiguous data (COPIED or not), compressed and
    preallocated zero clusters, some of them long."""
    out: list[int] = []
    host = 1 << 30
    while len(out) < entries:
        n = rng.choice([1, 2, 5, 40, 130, 300, 1500])
        kind = rng.choice(["unalloc", "zero", "data", "data", "compressed", "zero-alloc"])
        for _ in range(n):
            if kind == "unalloc":
                out.append(0)
            elif kind == "zero":
                out.append(OFLAG_ZERO)
            elif kind == "compressed":
                out.append(OFLAG_COMPRESSED | rng.getrandbits(40))
            else:
                e = host | (OFLAG_ZERO if kind == "zero-alloc" else 0)
                out.append(e | (OFLAG_COPIED if rng.random() < 0.9 else 0))
                host += CS
        if rng.random() < 0.3:
            host += CS                      # the next run is not contiguous
    return out[:entries]


def _expected_run(geo: Geometry, entries: list[int], index: int, nb: int) -> int:
    """Clusters from ``index`` (at most ``nb``) of one type, contiguous if they have a
    host offset: one by one, as the spec says."""
    kind = geo.standard_type(entries[index])
    if kind is SC.COMPRESSED:
        return 1
    n = 1
    while n < nb:
        e = entries[index + n]
        if geo.standard_type(e) is not kind:
            break
        if kind.has_host and e & L2E_OFFSET_MASK != (entries[index] & L2E_OFFSET_MASK) + n * CS:
            break
        n += 1
    return n


@pytest.mark.parametrize("with_numpy", [False, True])
def test_run_lookup_matches_the_entries(monkeypatch: pytest.MonkeyPatch,
                                        with_numpy: bool) -> None:
    importlib.import_module("numpy")         # loaded, for the numpy variant
    monkeypatch.setattr(M, "numpy_loaded", lambda: with_numpy)
    geo = Geometry(L.Header(cluster_bits=16, size=1 << 40))
    mapping = Mapping(geo, L.empty_table(8), None, None)  # type: ignore[arg-type]
    rng = random.Random(7)
    for _ in range(20):
        entries = _random_l2(rng, geo.l2_entries)
        table = L.parse_table(b"".join(struct.pack(">Q", e) for e in entries))
        for _ in range(50):
            index = rng.randrange(geo.l2_entries)
            nb = rng.randint(1, geo.l2_entries - index)
            run_ = asyncio.run(mapping._run_standard(table, 0, index, index * CS, nb * CS))
            assert run_.length == _expected_run(geo, entries, index, nb) * CS, (index, nb)


# ---- the overlap check of guest data writes -----------------------------------------------

def test_metadata_clusters_follow_table_changes() -> None:
    from array import array
    l1 = array("Q", [OFLAG_COPIED | 5 * CS, 0])
    reftable = array("Q", [3 * CS] + [0] * 7)
    index = MetadataClusters()
    assert index.overlap(l1, reftable, 5 * CS, 6 * CS)
    assert index.overlap(l1, reftable, 2 * CS, 4 * CS)
    assert not index.overlap(l1, reftable, 6 * CS, 9 * CS)
    l1[1] = 7 * CS                          # changed in place: seen at the next check
    assert index.overlap(l1, reftable, 6 * CS, 9 * CS)
    reftable[0] = 0
    assert not index.overlap(l1, reftable, 2 * CS, 4 * CS)


@pytest.mark.parametrize("seed", range(4))
def test_metadata_clusters_patched_or_rebuilt_match_the_tables(seed: int) -> None:
    from array import array
    rng = random.Random(seed)
    l1 = array("Q", [0] * 5000)
    reftable = array("Q", [0] * 1024)
    index = MetadataClusters()
    for _ in range(200):
        table = l1 if rng.random() < 0.7 else reftable
        for _ in range(rng.choice([1, 1, 2, 3, 40])):   # a few entries, or many
            table[rng.randrange(len(table))] = rng.choice(
                [0, rng.randrange(1, 1 << 20) * CS | OFLAG_COPIED, rng.randrange(1, 64) * CS])
        if rng.random() < 0.05:
            l1 = array("Q", l1) + array("Q", [rng.randrange(1 << 20) * CS])   # grown
        start = rng.randrange(1, 1 << 20) * CS
        end = start + rng.choice([CS, 4 * CS, 1 << 30])
        want = sorted([e & L1E_OFFSET_MASK for e in l1 if e & L1E_OFFSET_MASK]
                      + [e for e in reftable if e])
        assert index.overlap(l1, reftable, start, end) == any(start <= o < end for o in want)
        assert index.offsets == want


def _l1_entry(img: Path) -> int:
    h = L.parse_header(img.read_bytes()[:CS])
    return struct.unpack(">Q", img.read_bytes()[h.l1_table_offset:h.l1_table_offset + 8])[0]


@pytest.mark.parametrize("target", ["L2", "refcount block"])
def test_guest_write_aimed_at_an_l2_table_or_refcount_block_refused(tmp_path: Path,
                                                                   target: str) -> None:
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), "1M")
    qemu_ops(img, [("write", 0, 4096, 7)])
    h = L.parse_header(img.read_bytes()[:CS])
    l2 = _l1_entry(img) & L2E_OFFSET_MASK
    raw = img.read_bytes()
    block = struct.unpack(">Q", raw[h.refcount_table_offset:h.refcount_table_offset + 8])[0]
    aim = l2 if target == "L2" else block
    with open(img, "r+b") as f:             # the data of cluster 0 "is" that table
        f.seek(l2)
        f.write(struct.pack(">Q", OFLAG_COPIED | aim))

    async def write() -> None:
        node = await open_qcow2(img)
        try:
            await node.write(512, b"\xff" * 512)
        finally:
            await node.close()
    with pytest.raises(BlockError, match=f"overlaps with active {target} table at "
                                         f"{aim:#x}"):
        run(write())
