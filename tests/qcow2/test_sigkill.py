"""A qcow2 writer killed with SIGKILL at random points (issue 3): afterwards check
repairs the image (a lazy-refcount image is repaired by the next read-write open), and
every request flushed before the kill reads back."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import qemu_img, run, tool

from ..crash_writer import kill_at_random, plan
from .helpers import create, open_qcow2

SIZE = 32 << 20


async def _verify(img: Path, done: list) -> None:
    node = await open_qcow2(img)           # read-write: repairs a dirty lazy image
    try:
        for kind, off, n, pat in done:
            expect = bytes(n) if kind == "zero" else bytes([pat]) * n
            assert bytes(await node.read(off, n)) == expect, (kind, off, n)
    finally:
        await node.close()


@pytest.mark.parametrize("seed,lazy", [(1, False), (2, False), (3, False), (4, True),
                                       (5, True), (6, True)])
def test_sigkill_then_repair(tmp_path: Path, seed: int, lazy: bool) -> None:
    img = tmp_path / "img.qcow2"
    run(create(img, SIZE, cluster_size="4096", lazy_refcounts="on" if lazy else None))
    flushed = kill_at_random(img, "qcow2", seed, compress=True)
    assert flushed > 0
    before = json.loads(qemu_img("check", "--output=json", str(img), check=False).stdout
                        or "{}")
    if not lazy:   # allocation metadata is ordered: a crash leaves leaks at most
        assert not before.get("corruptions"), before
        res = tool("img", "check", "-r", "all", str(img))
        assert res.returncode == 0, res.stdout + res.stderr
    run(_verify(img, plan(seed, SIZE, compress=True)[:flushed]))
    after = json.loads(qemu_img("check", "--output=json", str(img), check=False).stdout)
    assert not after.get("corruptions") and not after.get("leaks"), after
    assert not after.get("check-errors"), after
