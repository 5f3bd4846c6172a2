"""block-commit (intermediate and active) on qcow2 chains made with qemu-img."""
from __future__ import annotations

import asyncio

import pytest

from blocklayer.core.errors import NodeNotFound
from blocklayer.jobs import qmp_commands as q
from blocklayer.jobs.state import JobError
from tests.conftest import need
from tests.jobs.jobhelp import (
    clean,
    flat_copy,
    info,
    make_chain,
    open_top,
    run,
    same,
)


def test_commit_intermediate(tmp_path):
    need("qemu-img")
    paths = make_chain(tmp_path)
    expect = flat_copy(paths[2], tmp_path / "expect.qcow2")
    expect_mid = flat_copy(paths[1], tmp_path / "expect-mid.qcow2")

    async def main():
        top, ctx = await open_top(paths[2])
        await q.block_commit(ctx, "top", job_id="c0", top=str(paths[1]))
        await ctx.wait("c0")
        assert ctx.sequence() == ["created", "running", "waiting", "pending",
                                  "BLOCK_JOB_COMPLETED", "concluded", "null"]
        assert top.backing.filename == str(paths[0])
        assert await top.read(0, 4 << 20) == await top.read(0, 4 << 20)
        await top.close()
    run(main())
    assert info(paths[2])["backing-filename"] == str(paths[0])
    assert same(paths[2], expect)
    assert same(paths[0], expect_mid)      # the base now holds what mid showed
    assert clean(paths[0]) and clean(paths[2])


def test_commit_errors(tmp_path):
    need("qemu-img")
    paths = make_chain(tmp_path)

    async def main():
        top, ctx = await open_top(paths[2])
        with pytest.raises(NodeNotFound, match="^Device 'nope' not found$") as exc:
            await q.block_commit(ctx, "nope", job_id="c")
        assert exc.value.qmp_class == "DeviceNotFound"
        with pytest.raises(JobError, match="^Top image file nope not found$"):
            await q.block_commit(ctx, "top", job_id="c", top="nope")
        with pytest.raises(JobError, match="^Can't find 'nope' in the backing chain$"):
            await q.block_commit(ctx, "top", job_id="c", base="nope")
        with pytest.raises(JobError, match="^cannot commit an image into itself$"):
            await q.block_commit(ctx, "top", job_id="c", top_node="top", base_node="top")
        with pytest.raises(JobError, match="^'backing-file' specified, but 'top' is the "
                                           "active layer$"):
            await q.block_commit(ctx, "top", job_id="c", backing_file="x")
        await top.close()
    run(main())


@pytest.mark.parametrize("end", ["complete", "cancel"])
def test_active_commit(tmp_path, end):
    need("qemu-img")
    paths = make_chain(tmp_path)
    expect = flat_copy(paths[2], tmp_path / "expect.qcow2")
    async def main():
        top, ctx = await open_top(paths[2])
        await q.block_commit(ctx, "top", job_id="c0", base=str(paths[1]))
        job = ctx.job_manager.jobs["c0"]
        while not job.is_ready:
            await asyncio.sleep(0.01)
        assert ctx.sequence() == ["created", "running", "ready", "BLOCK_JOB_READY"]
        assert [d["type"] for n, d in ctx.events if n == "BLOCK_JOB_READY"] == ["commit"]
        ctx.events.clear()
        if end == "complete":
            await q.job_complete(ctx, "c0")
            await ctx.wait("c0")
            assert ctx.sequence() == ["waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded",
                                      "null"]
        else:
            await q.job_cancel(ctx, "c0")
            await ctx.wait("c0")
            assert ctx.sequence() == ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]
        await top.close()
    run(main())
    if end == "complete":
        assert same(paths[1], expect)           # mid holds the whole top now
    else:
        # cancelled when in sync: the top still reads as before, the base is a full copy
        assert same(paths[2], expect) and same(paths[1], expect)
        assert info(paths[2])["backing-filename"] == "mid.qcow2"
    assert clean(paths[1]) and clean(paths[2])



@pytest.mark.parametrize("active", [False, True])
def test_commit_sequence_as_qsd(tmp_path, active):
    """The same block-commit on QSD 7.2 and on our job core: the same events (active:
    READY, then job-cancel)."""
    need("qemu-storage-daemon")
    from tests.jobs.jobhelp import open_top, qsd_events, run
    theirs_dir, ours_dir = tmp_path / "qsd", tmp_path / "ours"
    theirs_dir.mkdir()
    ours_dir.mkdir()

    def args(d):
        return {"job-id": "c0", "device": "top",
                **({"base": str(d / "base.qcow2")} if active else {"top": str(d / "mid.qcow2")})}
    later = {"BLOCK_JOB_READY": [("job-cancel", {"id": "c0"})]}
    theirs = run(qsd_events(theirs_dir, make_chain(theirs_dir)[2],
                            [("block-commit", args(theirs_dir))], after=later))
    paths = make_chain(ours_dir)

    async def main():
        top, ctx = await open_top(paths[2])
        await q.handler(q.COMMANDS["block-commit"], lambda c: c)(ctx, args(ours_dir))
        job = ctx.job_manager.jobs["c0"]
        if active:
            while not job.is_ready:
                await asyncio.sleep(0.01)
            await q.job_cancel(ctx, "c0")
        await job.gone.wait()
        await top.close()
        return ctx.sequence()
    assert run(main()) == theirs
    for name in ("base", "mid", "top"):
        assert same(theirs_dir / f"{name}.qcow2", ours_dir / f"{name}.qcow2"), name
