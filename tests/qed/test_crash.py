"""A writer killed with SIGKILL: the image opens with need-check set, is repaired on a
read-write open, and every write flushed before the kill reads back."""
from __future__ import annotations

from pathlib import Path

import pytest

from blocklayer.formats.qed import layout
from tests.conftest import run

from ..crash_writer import kill_at_random, plan
from .helpers import create, open_qed, our_check, qemu_check

SIZE = 16 << 20


def _need_check(path: Path) -> bool:
    return layout.Header.parse(path.read_bytes()[:64]).has(layout.F_NEED_CHECK)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_sigkill_then_repair(tmp_path: Path, seed: int) -> None:
    img = tmp_path / "img.qed"
    model = bytearray(SIZE)
    backing = seed % 2 == 0
    if backing:
        base = tmp_path / "base.raw"
        model[:] = bytes(range(256)) * (SIZE // 256)
        base.write_bytes(model)
        run(create(img, SIZE, cluster_size=4096, table_size=2,
                   backing_file=base.name, backing_fmt="raw"))
    else:
        run(create(img, SIZE, cluster_size=4096, table_size=2))
    flushed = kill_at_random(img, "qed", seed)
    assert flushed > 0
    assert _need_check(img)                      # killed within the 5 s quiet period
    run(_reopen_and_verify(img, model, plan(seed, SIZE)[:flushed]))
    assert not _need_check(img)                  # repaired on the read-write open
    theirs = qemu_check(img)
    assert theirs["corruptions"] == theirs["check-errors"] == 0
    assert run(our_check(img)) == theirs


async def _reopen_and_verify(img: Path, model: bytearray, done: list) -> None:
    node = await open_qed(img)
    try:
        for kind, off, n, pat in done:
            expect = bytes([pat]) * n if kind == "write" else bytes(n)
            assert await node.read(off, n) == expect, (kind, off, n)
    finally:
        await node.close()
