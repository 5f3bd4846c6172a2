"""Random sequences of writes, zeroes, discards, compressed writes, internal snapshot
create / apply / delete and resizes against a bytearray model; then ``qemu-img check``
finds nothing (issue 3)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocklayer.core.driver import ReqFlag, SnapshotInfo
from blocklayer.core.errors import BlockError
from tests.conftest import qemu_img

from .helpers import create, open_qcow2

CLUSTER = 4096
STEP = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 400_000), st.integers(1, 70_000),
              st.integers(1, 255)),
    st.tuples(st.just("zero"), st.integers(0, 400_000), st.integers(1, 70_000), st.just(0)),
    st.tuples(st.just("discard"), st.integers(0, 400_000), st.integers(1, 70_000), st.just(0)),
    st.tuples(st.just("compress"), st.integers(0, 100), st.just(CLUSTER), st.integers(1, 255)),
    st.tuples(st.just("snap"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("apply"), st.integers(0, 9), st.just(0), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 9), st.just(0), st.just(0)),
    st.tuples(st.just("resize"), st.integers(16, 160), st.just(0), st.just(0)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, min_size=1, max_size=25))
def test_snapshots_and_resizes_against_model(tmp_path: Path, steps: list) -> None:
    path = tmp_path / "m.qcow2"
    for old in tmp_path.glob("m.qcow2"):
        old.unlink()

    async def main() -> None:
        size = 64 * CLUSTER
        await create(path, size, cluster_size=str(CLUSTER))
        node = await open_qcow2(path, discard="unmap")
        model = bytearray(size)
        snaps: list[tuple[str, bytes]] = []
        counter = 0
        try:
            for kind, a, n, pat in steps:
                size = len(model)
                if kind in ("write", "zero", "discard"):
                    off = a % size
                    n = min(n, size - off)
                    if kind == "write":
                        await node.write(off, bytes([pat]) * n)
                        model[off:off + n] = bytes([pat]) * n
                    elif kind == "zero":
                        await node.write_zeroes(off, n)
                        model[off:off + n] = bytes(n)
                    else:
                        await node.discard(off, n)
                        start, end = -(-off // CLUSTER) * CLUSTER, (off + n) // CLUSTER * CLUSTER
                        if end > start:
                            model[start:end] = bytes(end - start)
                elif kind == "compress":
                    off = (a % (size // CLUSTER)) * CLUSTER
                    try:
                        await node.write(off, bytes([pat]) * CLUSTER, ReqFlag.COMPRESSED)
                    except BlockError:
                        pass            # QEMU refuses to overwrite with compression too
                    else:
                        model[off:off + CLUSTER] = bytes([pat]) * CLUSTER
                elif kind == "snap":
                    counter += 1
                    name = f"s{counter}"
                    await node.driver.snapshot_create(SnapshotInfo(id="", name=name,
                                                                   date_sec=counter))
                    snaps.append((name, bytes(model)))
                elif kind == "apply" and snaps:
                    name, data = snaps[a % len(snaps)]
                    await node.driver.snapshot_goto(name)
                    await node.refresh_total_bytes()
                    model = bytearray(data)
                elif kind == "delete" and snaps:
                    name, _ = snaps.pop(a % len(snaps))
                    await node.driver.snapshot_delete(None, name)
                elif kind == "resize":
                    new = a * CLUSTER
                    await node.truncate(new)
                    model = model[:new] + bytearray(max(0, new - len(model)))
                assert node.total_bytes == len(model)
            assert bytes(await node.read(0, len(model))) == bytes(model)
        finally:
            await node.close()
        res = qemu_img("check", str(path), check=False)
        assert res.returncode == 0 and "No errors were found" in res.stdout, res.stdout + res.stderr
        cur = len(model)
        for name, data in snaps:        # every snapshot still holds what it held
            out = tmp_path / "snap.raw"
            qemu_img("convert", "-l", f"snapshot.name={name}", "-O", "raw", str(path), str(out))
            # QEMU's convert -l reads a snapshot through the image's current size
            expected = data[:cur] + bytes(max(0, cur - len(data)))
            assert out.read_bytes() == expected, name
    asyncio.run(main())
