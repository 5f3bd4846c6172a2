"""The backup job through the Python API: random guest writes, pauses, speed changes
and cancels interleaved with a backup; the target always holds the source as it was
when the backup started (a bytearray model), and a bitmap given to it ends as QEMU's
bitmap-modes say."""
from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from blocklayer.core import dirty
from blocklayer.jobs import qmp_commands as q
from blocklayer.jobs.state import JobStatus
from tests.conftest import need
from tests.jobs.jobhelp import clean, job_ops, new_pair, open_pair, run

MiB = 1 << 20
SIZE = 4 * MiB

OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, SIZE - 1), st.integers(1, 200 << 10),
              st.integers(1, 255)),
    st.tuples(st.just("pause")), st.tuples(st.just("resume")),
    st.tuples(st.just("speed"), st.sampled_from([0, 1 * MiB, 16 * MiB])),
    st.tuples(st.just("yield"), st.integers(1, 5))), max_size=25)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=OPS, sync=st.sampled_from(["full", "bitmap"]), cancel=st.booleans())
@example(ops=[("write", 3 * MiB, 4096, 9), ("yield", 1), ("write", 2 * MiB + 100, 100000, 3),
              ("pause",), ("write", 3 * MiB - 100, 300, 4), ("resume",)],
         sync="full", cancel=False)
@example(ops=[("write", 3 * MiB, 4096, 9), ("speed", 1 * MiB),
              ("write", 3 * MiB - 10, 20, 5)], sync="bitmap", cancel=False)
def test_backup_is_point_in_time(tmp_path_factory, ops, sync, cancel):
    need("qemu-img")
    source, target = new_pair(tmp_path_factory.mktemp("b"), SIZE)
    model = bytearray(SIZE)

    async def main():
        src, dst, ctx = await open_pair(source, target)
        bm = await dirty.add(src, "b", 65536)
        for off, n, byte in ((0, MiB, 7), (3 * MiB - 5, 70000, 9)):
            await src.write(off, bytes([byte]) * n)
            model[off:off + n] = bytes([byte]) * n
        at_start = bytes(model)
        dirty_at_start = dirty.snapshot(bm)
        await q.blockdev_backup(ctx, device="src", target="dst", sync=sync, job_id="b0",
                                speed=4 * MiB, bitmap="b",
                                bitmap_mode="on-success")
        job = ctx.job_manager.jobs["b0"]
        written = dirty.DirtyBitmap("", 16, SIZE)     # what the guest wrote since
        def live() -> bool:
            return "b0" in ctx.job_manager.jobs and not job.is_completed

        async def write(off: int, n: int, byte: int) -> None:
            n = min(n, SIZE - off)
            guest = job.filter_node or src        # the guest's writes pass the filter
            await guest.write(off, bytes([byte]) * n)
            model[off:off + n] = bytes([byte]) * n
            written.set_range(off, n)
        await job_ops(ctx, "b0", ops, write)
        if live() and job.user_paused:
            await q.job_resume(ctx, "b0")
        if live():
            if cancel:
                await q.job_cancel(ctx, "b0")
            else:
                await q.block_job_set_speed(ctx, "b0", 0)
        while job.status is not JobStatus.NULL:
            await asyncio.sleep(0.005)
        ok = not job.ret
        assert await src.read(0, SIZE) == model
        got = await dst.read(0, SIZE)
        if ok:          # the point in time, where the backup was to copy
            if sync == "full":
                assert got == at_start
            else:
                for a, b in dirty.dirty_runs(bm_from(dirty_at_start), 0, SIZE >> 16):
                    assert got[a << 16:b << 16] == at_start[a << 16:b << 16]
            expect = written            # on-success: the bitmap is what was written since
        else:
            expect = bm_from(dirty_at_start)
            dirty.merge_into(expect, written)
        assert bm.packed() == expect.packed()
        assert not bm.busy and bm.enabled
        assert [h.name for h in dirty.listed(src)] == ["b"]   # no successor, copy bitmap
        assert all(e.parent is None for e in src.parents)     # the filter is gone
        await dst.close()
        await src.close()
    run(main())
    assert clean(target)


def bm_from(saved: bytes) -> dirty.DirtyBitmap:
    bm = dirty.DirtyBitmap("", 16, SIZE)
    dirty.restore(bm, saved)
    return bm
