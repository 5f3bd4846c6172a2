"""Random unaligned requests, many in flight, through the request path on a raw image
over a driver with 4 KiB alignment, checked against a bytearray model."""
from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocklayer.core.open import open_image

SIZE = 256 * 1024
ALIGN = 4096


def _options(path: Path) -> dict[str, object]:
    return {"driver": "raw", "discard": "unmap", "file.driver": "blkdebug",
            "file.align": ALIGN, "file.max-transfer": 16384, "file.opt-write-zero": 8192,
            "file.max-write-zero": 32768, "file.image.driver": "file",
            "file.image.filename": str(path), "file.image.x-inline-io": "off"}


@st.composite
def batches(draw: st.DrawFn) -> list[list[tuple[str, int, int, int]]]:
    """Batches of up to 16 requests whose byte ranges are disjoint within a batch
    (they may share alignment blocks, which is what read-modify-write must survive)."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        cuts = sorted(set(draw(st.lists(st.integers(0, SIZE), min_size=2, max_size=33))))
        ranges = list(zip(cuts[::2], cuts[1::2]))[:16]
        batch = []
        for start, end in ranges:
            kind = draw(st.sampled_from(["read", "write", "write", "zero", "discard"]))
            batch.append((kind, start, end - start, draw(st.integers(1, 255))))
        out.append(batch)
    return out


async def _apply(node, model: bytearray, kind: str, off: int, n: int, pat: int) -> None:
    if kind == "read":
        got = await node.read(off, n)
        assert got == bytes(model[off:off + n]), f"read {off}+{n} differs"
    elif kind == "write":
        await node.write(off, bytes([pat]) * n)
    elif kind == "zero":
        await node.write_zeroes(off, n)
    else:
        await node.discard(off, n)


def _model_update(model: bytearray, kind: str, off: int, n: int, pat: int) -> None:
    if kind == "write":
        model[off:off + n] = bytes([pat]) * n
    elif kind == "zero":
        model[off:off + n] = bytes(n)
    elif kind == "discard":
        start = -(-off // ALIGN) * ALIGN
        end = (off + n) // ALIGN * ALIGN
        if end > start:
            model[start:end] = bytes(end - start)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(ops=batches())
def test_random_requests_match_model(tmp_path: Path, ops) -> None:
    path = tmp_path / "model.raw"
    seed = bytes((i * 7 + 3) % 251 for i in range(SIZE))
    path.write_bytes(seed)
    model = bytearray(seed)

    async def main() -> None:
        node = await open_image(None, _options(path))
        try:
            for batch in ops:
                await asyncio.gather(*(_apply(node, model, *op) for op in batch))
                for op in batch:
                    _model_update(model, *op)
            assert await node.read(0, SIZE) == bytes(model)
            await node.flush()
        finally:
            await node.close()

    asyncio.run(main())
    assert path.read_bytes() == bytes(model)
