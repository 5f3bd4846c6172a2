"""Hostile images: corrupted metadata makes opens and reads fail with a BlockError,
never with another exception, a hang or a huge allocation."""
from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocklayer.core.errors import BlockError
from tests.conftest import qemu_img, run

from .helpers import KIB, open_qcow2, qemu_ops

CS = 4096


@pytest.fixture(scope="module")
def pristine() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "img.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={CS}", str(img), "1M")
        qemu_ops(img, [("write", 0, 20 * KIB, 1), ("compress", 64 * KIB, 8 * KIB, 2),
                       ("zero", 128 * KIB, 8 * KIB, 0), ("write", 900 * KIB, 5000, 3)])
        return img.read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(flips=st.lists(st.tuples(st.one_of(st.integers(0, 120), st.integers(0, 8 * CS - 1)),
                                st.integers(0, 255)),
                      min_size=1, max_size=8))
def test_corrupted_metadata_fails_cleanly(pristine: bytes, flips: list) -> None:
    data = bytearray(pristine)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "img.qcow2"
        img.write_bytes(bytes(data))

        async def go() -> None:
            node = await open_qcow2(img, read_only=True)
            try:
                size = min(node.total_bytes, 4 << 20)
                await node.read(0, size)
                pos = 0
                while pos < size:
                    st_ = await node.block_status(pos, size - pos)
                    pos += max(st_.length, 1)
            finally:
                await node.close()

        async def bounded() -> None:
            await asyncio.wait_for(go(), 20)
        try:
            run(bounded())
        except BlockError:
            pass
