"""blockdev-mirror on real images, and random guest writes racing a mirror."""
from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocklayer.core.open import open_image
from blocklayer.jobs import qmp_commands as q
from blocklayer.jobs.state import JobStatus
from tests.conftest import need, qemu_img
from tests.jobs.jobhelp import (
    Ctx,
    MiB,
    clean,
    flat_copy,
    job_ops,
    new_pair,
    open_pair,
    make_chain,
    open_top,
    run,
    same,
)


async def _until_ready(ctx, job_id):
    job = ctx.job_manager.jobs[job_id]
    # READY itself: a job resumed in standby takes a moment to be ready again
    while job.status is not JobStatus.READY:
        await asyncio.sleep(0.005)
    return job


@pytest.mark.parametrize("end", ["complete", "soft-cancel", "cancel"])
def test_mirror_full(tmp_path, end):
    need("qemu-img")
    paths = make_chain(tmp_path)
    expect = flat_copy(paths[2], tmp_path / "expect.qcow2")
    target = tmp_path / "target.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(target), str(4 * MiB))

    async def main():
        top = await open_image(str(paths[2]), node_name="top")
        tgt = await open_image(str(target), graph=top.graph, node_name="tgt")
        ctx = Ctx(top.graph)
        await q.blockdev_mirror(ctx, "top", "tgt", "full", job_id="m0")
        await _until_ready(ctx, "m0")
        assert ctx.sequence() == ["created", "running", "ready", "BLOCK_JOB_READY"]
        ctx.events.clear()
        if end == "complete":
            await q.job_complete(ctx, "m0")
            await ctx.wait("m0")
            assert ctx.sequence() == ["waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded",
                                      "null"]
            assert [u[0] for u in tgt.users] == ["user", "user"]   # both users moved
        elif end == "soft-cancel":
            await q.block_job_cancel(ctx, "m0")
            await ctx.wait("m0")
            assert ctx.sequence() == ["waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded",
                                      "null"]
        else:
            await q.job_cancel(ctx, "m0")
            await ctx.wait("m0")
            assert ctx.sequence() == ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]
        await tgt.close()
        await top.close()
    run(main())
    assert same(target, expect)
    assert clean(target)


def test_mirror_errors(tmp_path):
    need("qemu-img")
    paths = make_chain(tmp_path)

    async def main():
        top, ctx = await open_top(paths[2])
        with pytest.raises(Exception, match="^Parameter 'granularity' expects a value in range"):
            await q.blockdev_mirror(ctx, "top", "top", "full", job_id="m", granularity=256)
        with pytest.raises(Exception, match="^Granularity must be a power of 2$"):
            await q.blockdev_mirror(ctx, "top", "top", "full", job_id="m", granularity=3 << 10)
        await top.close()
    run(main())


OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 4 * MiB - 1), st.integers(1, 256 << 10),
              st.integers(1, 255)),
    st.tuples(st.just("pause")), st.tuples(st.just("resume")),
    st.tuples(st.just("speed"), st.sampled_from([0, 4 * MiB, 64 * MiB])),
    st.tuples(st.just("yield"), st.integers(1, 5))), max_size=25)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=OPS)
def test_random_writes_during_mirror(tmp_path_factory, ops):
    need("qemu-img")
    size = 4 * MiB
    source, target = new_pair(tmp_path_factory.mktemp("m"), size)
    model = bytearray(size)

    async def main():
        src, dst, ctx = await open_pair(source, target)
        await src.write(0, b"\x07" * MiB)
        model[:MiB] = b"\x07" * MiB
        await q.blockdev_mirror(ctx, "src", "dst", "full", job_id="m0", speed=8 * MiB,
                                granularity=64 << 10, buf_size=256 << 10)
        job = ctx.job_manager.jobs["m0"]

        async def write(off: int, n: int, byte: int) -> None:
            n = min(n, size - off)
            await src.write(off, bytes([byte]) * n)
            model[off:off + n] = bytes([byte]) * n
        await job_ops(ctx, "m0", ops, write)
        if job.user_paused:
            await q.job_resume(ctx, "m0")
        await q.block_job_set_speed(ctx, "m0", 0)
        await _until_ready(ctx, "m0")
        await q.job_complete(ctx, "m0")
        await ctx.wait("m0")
        assert job.status is JobStatus.NULL and not job.ret
        assert await dst.read(0, size) == model
        await dst.close()
        await src.close()
    run(main())
    assert clean(target)


def _collapse(seq):
    """One BLOCK_JOB_ERROR for a run of them (QEMU sends one per request in flight)."""
    out = []
    for item in seq:
        if not (out and item == out[-1] and item.startswith("BLOCK_JOB_ERROR")):
            out.append(item)
    return out


@pytest.mark.parametrize("policy", ["report", "stop"])
def test_target_errors_as_qsd(tmp_path, policy):
    """blkdebug fails every write to the target: the same events on QSD 7.2 and here
    (runs of BLOCK_JOB_ERROR collapsed), and query-block-jobs when stopped."""
    need("qemu-storage-daemon")
    from tests.jobs.jobhelp import qsd_events, run
    dirs = {}
    for side in ("qsd", "ours"):
        d = dirs[side] = tmp_path / side
        d.mkdir()
        make_chain(d)
        qemu_img("create", "-q", "-f", "raw", str(d / "t.raw"), str(4 * MiB))

    def target(d):
        return {"driver": "raw", "node-name": "tgt",
                "file": {"driver": "blkdebug",
                         "inject-error": [{"event": "write_aio", "errno": 5}],
                         "image": {"driver": "file", "filename": str(d / "t.raw")}}}
    mirror = {"job-id": "m0", "device": "top", "target": "tgt", "sync": "full",
              "on-target-error": policy}
    later = {"paused": [("job-cancel", {"id": "m0"})]}
    theirs = run(qsd_events(dirs["qsd"], dirs["qsd"] / "top.qcow2",
                            [("blockdev-add", target(dirs["qsd"])),
                             ("blockdev-mirror", mirror)], after=later))

    async def main():
        top = await open_image(str(dirs["ours"] / "top.qcow2"), node_name="top")
        opts = {"driver": "raw", "file.driver": "blkdebug",
                "file.inject-error.0.event": "write_aio", "file.inject-error.0.errno": "5",
                "file.image.driver": "file",
                "file.image.filename": str(dirs["ours"] / "t.raw")}
        tgt = await open_image(None, opts, graph=top.graph, node_name="tgt")
        ctx = Ctx(top.graph)
        await q.handler(q.COMMANDS["blockdev-mirror"], lambda c: c)(ctx, mirror)
        job = ctx.job_manager.jobs["m0"]
        if policy == "stop":
            while job.status is not JobStatus.PAUSED:
                await asyncio.sleep(0.005)
            info = (await q.query_block_jobs(ctx))[0]
            assert (info["io-status"], info["paused"], info["status"]) == ("failed", True,
                                                                           "paused")
            await q.job_cancel(ctx, "m0")
        await job.gone.wait()
        done = [d for n, d in ctx.events if n == "BLOCK_JOB_COMPLETED"]
        if policy == "report":
            assert done[0]["error"] == "Input/output error"
        await tgt.close()
        await top.close()
        return ctx.sequence()

    assert _collapse(run(main())) == _collapse(theirs)
