"""Random writes, zeroes, discards and compressed writes, some concurrent, against a
bytearray model; then qemu-img check must find nothing."""
from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import run

from .helpers import assert_clean, create, open_qcow2, qemu_raw

CS = 4096
SIZE = 64 * CS

op = st.tuples(st.sampled_from(["write", "write", "zero", "zero-unmap", "discard", "compress"]),
               st.integers(0, SIZE - 1), st.integers(1, 5 * CS), st.integers(1, 255))
configs = st.sampled_from([{"cluster_size": CS}, {"extended_l2": True, "cluster_size": 16384},
                           {"refcount_bits": 1, "cluster_size": 512},
                           {"compat": "0.10", "cluster_size": CS},
                           {"lazy_refcounts": True, "compression_type": "zstd",
                            "cluster_size": CS},
                           {"cluster_size": CS, "backing": True},
                           {"cluster_size": 16384, "extended_l2": True, "backing": True}])


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
# a compressed cluster freed while later ones were still being packed after it
@example(cfg={"cluster_size": CS}, batches=[[("compress", 0, 1, 1), ("write", 0, 1, 1),
                                             ("write", 0, 4097, 1), ("compress", 8192, 1, 1)]])
@given(cfg=configs, batches=st.lists(st.lists(op, min_size=1, max_size=4), min_size=1,
                                     max_size=6))
def test_random_ops_against_model(cfg: dict, batches: list) -> None:
    from blocklayer.core.driver import ReqFlag
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "img.qcow2"
        cfg = dict(cfg)
        cs = cfg["cluster_size"]
        model = bytearray(SIZE)
        if cfg.pop("backing", False):
            base = Path(tmp) / "base.raw"
            model[:] = bytes((i * 7 + i // 4096) % 251 + 1 for i in range(SIZE))
            base.write_bytes(bytes(model))
            cfg.update(backing_file=base.name, backing_fmt="raw")

        async def one(node, kind: str, off: int, n: int, pat: int) -> None:   # type: ignore[no-untyped-def]
            n = min(n, SIZE - off)
            if kind == "write":
                await node.write(off, bytes([pat]) * n)
                model[off:off + n] = bytes([pat]) * n
            elif kind.startswith("zero"):
                flags = ReqFlag.MAY_UNMAP if kind == "zero-unmap" else ReqFlag.NONE
                await node.write_zeroes(off, n, flags)
                model[off:off + n] = bytes(n)
            elif kind == "discard":
                await node.discard(off, n)
                # only whole clusters are dropped (and read as zeroes: no backing)
                a, b = -(-off // cs) * cs, (off + n) // cs * cs
                if b > a:
                    model[a:b] = bytes(b - a)
            else:
                off = off // cs * cs
                n = cs
                drv = node.driver
                async with drv.lock:
                    run_ = await drv.mapping.lookup(off, cs)
                if run_.entry & 0x00FFFFFFFFFFFE00:
                    return                     # compression overwrites nothing
                await node.write(off, bytes([pat]) * n, ReqFlag.COMPRESSED)
                model[off:off + n] = bytes([pat]) * n

        def overlapping(batch: list) -> bool:
            spans = [(o // cs, (o + n - 1) // cs + 1) for _, o, n, _ in batch]
            return any(a < d and c < b for i, (a, b) in enumerate(spans)
                       for (c, d) in spans[i + 1:])

        async def go() -> None:
            await create(img, None if "backing_file" in cfg else SIZE, **cfg)
            node = await open_qcow2(img, discard="unmap")
            try:
                for batch in batches:
                    if overlapping(batch) or any(k == "compress" for k, *_ in batch):
                        for o in batch:
                            await one(node, *o)
                    else:
                        await asyncio.gather(*(one(node, *o) for o in batch))
                assert await node.read(0, SIZE) == bytes(model)
            finally:
                await node.close()
        run(go())
        assert_clean(img)
        assert qemu_raw(img, Path(tmp) / "out.raw") == bytes(model)
