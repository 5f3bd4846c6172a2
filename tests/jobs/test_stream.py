"""block-stream on qcow2 chains made with qemu-img; results checked with qemu-img."""
from __future__ import annotations

import asyncio

import pytest

from blocklayer.core.open import open_image
from blocklayer.jobs import qmp_commands as q
from blocklayer.jobs.state import JobError
from tests.conftest import need
from tests.jobs.jobhelp import (
    Ctx,
    clean,
    flat_copy,
    info,
    make_chain,
    open_top,
    run,
    same,
)


@pytest.mark.parametrize("base", [None, "base", "mid"])
def test_stream(tmp_path, base):
    need("qemu-img")
    paths = make_chain(tmp_path)
    expect = flat_copy(paths[2], tmp_path / "expect.qcow2")

    async def main():
        top, ctx = await open_top(paths[2])
        args = {} if base is None else {"base": str(tmp_path / f"{base}.qcow2")}
        await q.block_stream(ctx, "top", job_id="s0", **args)
        await ctx.wait("s0")
        assert ctx.sequence() == ["created", "running", "waiting", "pending",
                                  "BLOCK_JOB_COMPLETED", "concluded", "null"]
        done = next(d for n, d in ctx.events if n == "BLOCK_JOB_COMPLETED")
        assert done["len"] == done["offset"] == 4 << 20 and "error" not in done
        await top.close()
    run(main())
    got = info(paths[2])
    if base is None:
        assert "backing-filename" not in got
    else:
        assert got["backing-filename"] == str(tmp_path / f"{base}.qcow2")
    assert same(paths[2], expect)
    assert clean(paths[2])


def test_stream_backing_file_and_errors(tmp_path):
    need("qemu-img")
    paths = make_chain(tmp_path)

    async def main():
        top, ctx = await open_top(paths[2])
        with pytest.raises(JobError, match="^Cannot find device='nope' nor node-name='nope'$"):
            await q.block_stream(ctx, "nope", job_id="s")
        with pytest.raises(JobError, match="^'base' and 'base-node' cannot be specified"):
            await q.block_stream(ctx, "top", job_id="s", base="x", base_node="y")
        with pytest.raises(JobError, match="^Can't find 'nope' in the backing chain$"):
            await q.block_stream(ctx, "top", job_id="s", base="nope")
        with pytest.raises(JobError, match="^Node 'top' is not a backing image of 'top'$"):
            await q.block_stream(ctx, "top", job_id="s", base_node="top")
        with pytest.raises(JobError, match="^backing file specified, but streaming the entire"):
            await q.block_stream(ctx, "top", job_id="s", backing_file="x")
        with pytest.raises(JobError, match="^Invalid job ID ''$"):
            await q.block_stream(ctx, "top")
        await q.block_stream(ctx, "top", job_id="s0", base=str(paths[0]),
                             backing_file="base.qcow2", speed=1)
        with pytest.raises(Exception, match="^Node 'top' is busy: block device is in use by "
                                            "block job: stream$"):
            await q.block_stream(ctx, "top", job_id="s1")
        await q.block_job_set_speed(ctx, "s0", 0)
        await ctx.wait("s0")
        await top.close()
    run(main())
    assert info(paths[2])["backing-filename"] == "base.qcow2"
    assert clean(paths[2])


def test_stream_guest_writes_win(tmp_path):
    """Writes to the top while the stream runs stay as written."""
    need("qemu-img")
    paths = make_chain(tmp_path)

    async def main():
        top, ctx = await open_top(paths[2])
        await q.block_stream(ctx, "top", job_id="s0", speed=1 << 20)
        for i in range(8):
            await top.write(i * (512 << 10) + 4096, bytes([0x40 + i]) * 8192)
            await asyncio.sleep(0.01)
        await q.block_job_set_speed(ctx, "s0", 0)
        await ctx.wait("s0")
        for i in range(8):
            data = await top.read(i * (512 << 10) + 4096, 8192)
            assert data == bytes([0x40 + i]) * 8192
        await top.close()
    run(main())
    assert clean(paths[2])


@pytest.mark.parametrize("options", [{}, {"auto-dismiss": False}])
def test_stream_sequence_as_qsd(tmp_path, options):
    """The same block-stream on QSD 7.2 and on our job core: the same events."""
    need("qemu-storage-daemon")
    from tests.jobs.jobhelp import open_top, qsd_events, run
    theirs_dir, ours_dir = tmp_path / "qsd", tmp_path / "ours"
    theirs_dir.mkdir()
    ours_dir.mkdir()
    until = "concluded" if options else "null"
    args = {"job-id": "s0", "device": "top", **options}
    theirs = run(qsd_events(theirs_dir, make_chain(theirs_dir)[2],
                            [("block-stream", args)], until))
    paths = make_chain(ours_dir)

    async def main():
        top, ctx = await open_top(paths[2])
        await q.handler(q.COMMANDS["block-stream"], lambda c: c)(ctx, args)
        await ctx.job_manager.jobs["s0"].gone.wait()
        await top.close()
        return ctx.sequence()
    assert run(main()) == theirs
    assert same(theirs_dir / "top.qcow2", ours_dir / "top.qcow2")


def test_command_errors_as_qsd(tmp_path):
    """Refused job commands: the same error class and text from QSD 7.2 and from ours
    (a stream held at 1 byte/s is the running job)."""
    need("qemu-storage-daemon")
    from tests.jobs.jobhelp import our_replies, qsd_events
    script = [
        ("block-stream", {"device": "nope", "job-id": "x"}),
        ("block-stream", {"device": "top"}),
        ("block-commit", {"device": "nope"}),
        ("block-commit", {"device": "top", "top": "nope"}),
        ("block-commit", {"device": "top", "top-node": "top", "base-node": "top"}),
        ("job-pause", {"id": "x"}),
        ("job-cancel", {"id": "x"}),
        ("block-job-pause", {"device": "x"}),
        ("block-job-set-speed", {"device": "x", "speed": 1}),
        ("block-job-finalize", {"id": "x"}),
        ("block-stream", {"job-id": "j", "device": "top", "speed": 1}),
        ("block-stream", {"job-id": "j", "device": "top"}),
        ("block-stream", {"job-id": "j2", "device": "top"}),
        # "Need a root block node": the stream put a copy-on-read filter above top
        ("block-commit", {"device": "top"}),
        ("block-job-set-speed", {"device": "j", "speed": -1}),
        ("block-job-resume", {"device": "j"}),
        ("job-complete", {"id": "j"}),
        ("job-finalize", {"id": "j"}),
        ("job-dismiss", {"id": "j"}),
        ("job-pause", {"id": "j"}),
        ("job-pause", {"id": "j"}),
        ("block-job-cancel", {"device": "j"}),
        ("job-resume", {"id": "j"}),
        ("job-cancel", {"id": "j"}),
    ]
    d1, d2 = tmp_path / "qsd", tmp_path / "ours"
    d1.mkdir()
    d2.mkdir()
    theirs: list = []
    run(qsd_events(d1, make_chain(d1)[2], script, until=None, replies=theirs))
    paths = make_chain(d2)

    async def main():
        top, ctx = await open_top(paths[2])
        out = await our_replies(ctx, script)
        await ctx.job_manager.shutdown()
        await top.close()
        return out
    ours = run(main())
    for step, a, b in zip(script, ours, theirs):
        assert a == b, step
    assert len(ours) == len(theirs)


@pytest.mark.parametrize("policy", ["report", "ignore", "stop"])
def test_stream_read_errors(tmp_path, policy):
    """blkdebug fails every read of the middle layer's data: on-error decides."""
    need("qemu-img")
    paths = make_chain(tmp_path)

    async def main():
        top = await open_image(None, {
            "driver": "qcow2", "file.driver": "file", "file.filename": str(paths[2]),
            "backing.driver": "qcow2", "backing.file.driver": "blkdebug",
            "backing.file.inject-error.0.event": "read_aio",
            "backing.file.inject-error.0.errno": "5",
            "backing.file.inject-error.0.sector": str(327680 // 512),   # mid's data
            "backing.file.image.driver": "file",
            "backing.file.image.filename": str(paths[1])}, node_name="top")
        ctx = Ctx(top.graph)
        await q.block_stream(ctx, "top", job_id="s0", on_error=policy)
        job = ctx.job_manager.jobs["s0"]
        if policy == "stop":
            while not job.user_paused:
                await asyncio.sleep(0.005)
            assert (await q.query_block_jobs(ctx))[0]["io-status"] == "failed"
            await q.job_cancel(ctx, "s0")
        await job.gone.wait()
        errors = [d for n, d in ctx.events if n == "BLOCK_JOB_ERROR"]
        assert errors and all(e == {"device": "s0", "operation": "read", "action": policy}
                              for e in errors)
        ends = [(n, d.get("error")) for n, d in ctx.events
                if n in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")]
        want = {"report": ("BLOCK_JOB_COMPLETED", "Input/output error"),
                "ignore": ("BLOCK_JOB_COMPLETED", "Input/output error"),   # at the end
                "stop": ("BLOCK_JOB_CANCELLED", None)}[policy]
        assert ends == [want]
        await top.close()
    run(main())
    assert info(paths[2])["backing-filename"] == "mid.qcow2"     # left as it was
    assert clean(paths[2])
