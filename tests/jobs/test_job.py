"""The job core in memory: a trivial job type driven through every verb in every
status, checking the events against the sequences QSD 7.2 shows (qemu-facts 5.5)."""
from __future__ import annotations

import asyncio
import errno

import pytest

from blocklayer.core.errors import BlockError, HostIOError, PermissionConflict
from blocklayer.core.node import BlockGraph
from blocklayer.jobs.job import BlockJob, JobTxn
from blocklayer.jobs.manager import JobManager
from blocklayer.jobs.state import VERBS, JobError, JobStatus, JobVerb

S = JobStatus


class Toy(BlockJob):
    """``chunks`` steps of 1 MiB with a pause point between; optionally READY at the end
    (then waits for job-complete); ``fail_at``: that step fails with ``fail_errno``
    under ``on_error``; ``gate``: each step waits for it."""

    job_type = "mirror"
    can_complete = True

    def __init__(self, manager, job_id, chunks=3, ready=False, fail_at=None,
                 fail_errno=errno.EIO, on_error="report", gate=None, **kw):
        super().__init__(manager, job_id, **kw)
        self.chunks, self.ready_at_end = chunks, ready
        self.fail_at, self.fail_errno, self.on_error = fail_at, fail_errno, on_error
        self.gate = gate
        self.hooks: list[str] = []
        self.progress_set_remaining(chunks << 20)

    async def run(self):
        step = 0
        while step < self.chunks:
            await self.pause_point()
            if self.is_cancelled:
                return
            if self.gate is not None:
                await self.gate.wait()
            if step == self.fail_at:
                action = self.error_action(self.on_error, False, self.fail_errno)
                if action == "report":
                    raise HostIOError(f"step {step}: {__import__('os').strerror(self.fail_errno)}",
                                      self.fail_errno)
                if action == "stop":
                    self.fail_at = None
                    continue            # retried after the user resumes
            self.progress_update(1 << 20)
            await self.throttle(1 << 20)
            step += 1
        if self.ready_at_end:
            self.set_ready()
            await self.wait_for_complete()

    async def prepare(self):
        self.hooks.append("prepare")

    async def commit(self):
        self.hooks.append("commit")

    async def abort(self):
        self.hooks.append("abort")

    async def clean(self):
        self.hooks.append("clean")


class Env:
    def __init__(self):
        self.graph = BlockGraph()
        self.manager = JobManager(self.graph)
        self.events: list[tuple] = []
        self.graph.event_handlers.append(self._record)

    def _record(self, name, data):
        if name == "JOB_STATUS_CHANGE":
            self.events.append(data["status"])
        elif name == "BLOCK_JOB_ERROR":
            self.events.append((name, data["action"]))
        else:
            self.events.append(name)

    def take(self):
        out, self.events = self.events, []
        return out

    def job(self, job_id="job0", start=True, **kw):
        return self.manager.add(Toy(self.manager, job_id, **kw), start=start)


async def settle(n=50):
    for _ in range(n):
        await asyncio.sleep(0)


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 10))


def test_stream_like_sequence():
    async def main():
        env = Env()
        job = env.job()
        await job.gone.wait()
        assert env.take() == ["created", "running", "waiting", "pending",
                              "BLOCK_JOB_COMPLETED", "concluded", "null"]
        assert job.hooks == ["prepare", "commit", "clean"]
        assert env.manager.jobs == {}
    run(main())


def test_manual_finalize_and_dismiss():
    async def main():
        env = Env()
        job = env.job(auto_finalize=False, auto_dismiss=False)
        await settle()
        assert env.take() == ["created", "running", "waiting", "pending", "BLOCK_JOB_PENDING"]
        assert env.manager.query_jobs() == [{"id": "job0", "type": "mirror", "status": "pending",
                                             "current-progress": 3 << 20,
                                             "total-progress": 3 << 20}]
        await job.finalize()
        assert env.take() == ["BLOCK_JOB_COMPLETED", "concluded"]
        job.dismiss()
        assert env.take() == ["null"]
    run(main())


def test_ready_then_complete():
    async def main():
        env = Env()
        job = env.job(ready=True)
        await settle()
        assert env.take() == ["created", "running", "ready", "BLOCK_JOB_READY"]
        assert env.manager.query_block_jobs()[0]["ready"] is True
        await job.complete()
        await job.gone.wait()
        assert env.take() == ["waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"]
    run(main())


def test_ready_cancel_is_cancelled():
    async def main():
        env = Env()
        job = env.job(ready=True)
        await settle()
        env.take()
        await job.cancel(True)
        await job.gone.wait()
        assert env.take() == ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]
        assert job.hooks == ["abort", "clean"]
    run(main())


def test_pause_resume_counted():
    async def main():
        env = Env()
        gate = asyncio.Event()
        job = env.job(gate=gate)
        await settle()
        job.user_pause()
        with pytest.raises(JobError, match="^Job is already paused$"):
            job.user_pause()
        job._drain(True)                # an internal pause on top
        gate.set()
        await settle()
        assert job.status is S.PAUSED
        info = env.manager.query_block_jobs()[0]
        assert (info["paused"], info["status"], info["busy"]) == (True, "paused", False)
        job.user_resume()
        await settle()
        assert job.status is S.PAUSED   # the internal pause still holds it
        with pytest.raises(JobError, match="^Can't resume a job that was not paused$"):
            job.user_resume()
        job._drain(False)
        await job.gone.wait()
        assert env.take() == ["created", "running", "paused", "running", "waiting", "pending",
                              "BLOCK_JOB_COMPLETED", "concluded", "null"]
    run(main())


def test_pause_ready_is_standby():
    async def main():
        env = Env()
        job = env.job(ready=True)
        await settle()
        job.user_pause()
        await settle()
        assert job.status is S.STANDBY
        job.user_resume()
        await settle()
        assert job.status is S.READY
        assert env.take()[-2:] == ["standby", "ready"]
        await job.cancel(True)
        await job.gone.wait()
    run(main())


def test_failure_is_completed_with_error():
    async def main():
        env = Env()
        job = env.job(fail_at=1)
        await job.gone.wait()
        assert env.take() == ["created", "running", ("BLOCK_JOB_ERROR", "report"), "aborting",
                              "BLOCK_JOB_COMPLETED", "concluded", "null"]
        assert job.err == "Input/output error"
        assert job.hooks == ["abort", "clean"]
    run(main())


def test_failure_query_shows_error():
    async def main():
        env = Env()
        data = []
        env.graph.event_handlers.append(lambda n, d: data.append(d) if n == "BLOCK_JOB_COMPLETED" else None)
        job = env.job(fail_at=0, auto_dismiss=False)
        await job.gone.wait()
        assert data == [{"type": "mirror", "device": "job0", "len": 3 << 20, "offset": 0,
                         "speed": 0, "error": "Input/output error"}]
        assert env.manager.query_jobs()[0]["error"] == "Input/output error"
        assert list(env.manager.query_block_jobs()[0]) == [
            "type", "device", "len", "offset", "busy", "paused", "speed", "io-status", "ready",
            "status", "auto-finalize", "auto-dismiss", "error"]
    run(main())


@pytest.mark.parametrize("policy,err,action,io_status", [
    ("stop", errno.EIO, "stop", "failed"),
    ("enospc", errno.ENOSPC, "stop", "nospace"),
    ("auto", errno.ENOSPC, "stop", "nospace"),
])
def test_error_stop_pauses_until_resumed(policy, err, action, io_status):
    async def main():
        env = Env()
        job = env.job(fail_at=1, on_error=policy, fail_errno=err)
        await settle()
        assert job.status is S.PAUSED and job.user_paused
        info = env.manager.query_block_jobs()[0]
        assert (info["io-status"], info["paused"]) == (io_status, True)
        job.user_resume()
        await job.gone.wait()
        assert env.take() == ["created", "running", ("BLOCK_JOB_ERROR", action), "paused",
                              "running", "waiting", "pending", "BLOCK_JOB_COMPLETED",
                              "concluded", "null"]
    run(main())


def test_error_stop_then_cancel():
    async def main():
        env = Env()
        job = env.job(fail_at=1, on_error="stop")
        await settle()
        await job.cancel(True)
        await job.gone.wait()
        assert env.take() == ["created", "running", ("BLOCK_JOB_ERROR", "stop"), "paused",
                              "running", "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]
    run(main())


def test_error_ignore_goes_on():
    async def main():
        env = Env()
        job = env.job(fail_at=1, on_error="ignore")
        await job.gone.wait()
        assert ("BLOCK_JOB_ERROR", "ignore") in env.take()
        assert job.ret == 0
    run(main())


def test_cancel_created_job_sends_no_block_event():
    async def main():
        env = Env()
        job = env.job(start=False)
        await job.cancel(True)
        assert env.take() == ["created", "aborting", "concluded", "null"]
    run(main())


def test_cancel_paused_job():
    async def main():
        env = Env()
        gate = asyncio.Event()
        job = env.job(gate=gate)
        job.user_pause()
        gate.set()
        await settle()
        await job.cancel(False)
        await job.gone.wait()
        assert env.take() == ["created", "running", "paused", "running", "aborting",
                              "BLOCK_JOB_CANCELLED", "concluded", "null"]
    run(main())


def test_transaction_failure_aborts_all():
    async def main():
        env = Env()
        txn = JobTxn()
        gate = asyncio.Event()
        ok = env.job("a", txn=txn, gate=gate)
        bad = env.job("b", txn=txn, fail_at=0)
        await settle()
        gate.set()
        await ok.gone.wait()
        await bad.gone.wait()
        assert ok.hooks == ["abort", "clean"] and bad.hooks == ["abort", "clean"]
        assert ok.is_cancelled and not bad.is_cancelled
    run(main())


def test_transaction_success_waits_for_all():
    async def main():
        env = Env()
        txn = JobTxn()
        gate = asyncio.Event()
        a = env.job("a", txn=txn, chunks=1)
        b = env.job("b", txn=txn, gate=gate)
        await settle()
        assert a.status is S.WAITING and b.status is S.RUNNING
        gate.set()
        await a.gone.wait()
        await b.gone.wait()
        assert a.hooks == b.hooks == ["prepare", "commit", "clean"]
    run(main())


def test_speed():
    async def main():
        env = Env()
        job = env.job(speed=1 << 20, chunks=4)     # 1 MiB/s: a slice holds 100 KiB
        await settle()
        assert job.status is S.RUNNING and job.current_progress < 4 << 20
        with pytest.raises(BlockError, match="^Parameter 'speed' expects a non-negative value$"):
            job.set_speed(-1)
        job.set_speed(0)                            # no limit: woken, runs to the end
        await job.gone.wait()
        assert job.speed == 0
    run(main())


def test_ids_and_lookups():
    async def main():
        env = Env()
        env.job(ready=True)
        with pytest.raises(JobError, match="^Job ID 'job0' already in use$"):
            env.job()
        with pytest.raises(JobError, match="^Invalid job ID '0x'$"):
            env.job("0x")
        with pytest.raises(JobError, match="^Job not found$"):
            env.manager.find("nope")
        with pytest.raises(JobError, match="^Block job 'nope' not found$") as exc:
            env.manager.find_block_job("nope")
        assert exc.value.qmp_class == "DeviceNotActive"
        await env.manager.shutdown()
    run(main())


def test_complete_refused():
    async def main():
        env = Env()
        job = env.job(ready=True)
        await settle()
        job.cancel_async(False)
        with pytest.raises(JobError, match="^The active block job 'job0' cannot be completed$"):
            await job.complete()
        await env.manager.shutdown()
    run(main())


async def _job_on_a_node(env):
    """A READY job working on a null-co node."""
    from blocklayer.core.open import open_image
    node = await open_image(None, {"driver": "null-co", "size": "1M"})
    job = Toy(env.manager, "job0", ready=True)
    job.add_node(node)
    env.manager.add(job)
    return node, job


def test_op_blockers():
    async def main():
        env = Env()
        node, job = await _job_on_a_node(env)
        with pytest.raises(PermissionConflict,
                           match=f"^Node '{node.name}' is busy: block device is in use by "
                                 "block job: mirror$"):
            node.check_op("stream")
        await job.cancel(True)
        await job.gone.wait()
        node.check_op("stream")
        await node.close()
    run(main())


async def _job_in(env: Env, status: JobStatus):
    """A job held in ``status``."""
    if status is S.CREATED:
        return env.job(start=False)
    if status in (S.RUNNING, S.PAUSED):
        job = env.job(gate=asyncio.Event())
        if status is S.PAUSED:
            job.user_pause()
            job.gate.set()
    elif status in (S.READY, S.STANDBY):
        job = env.job(ready=True)
        if status is S.STANDBY:
            await settle()
            job.user_pause()
    elif status is S.WAITING:
        txn = JobTxn()
        job = env.job(txn=txn, chunks=1)
        env.job("other", txn=txn, gate=asyncio.Event())
    elif status is S.PENDING:
        job = env.job(auto_finalize=False)
    else:
        job = env.job(auto_dismiss=False)
    await settle()
    assert job.status is status
    return job


LIVE = [S.CREATED, S.RUNNING, S.PAUSED, S.READY, S.STANDBY, S.WAITING, S.PENDING, S.CONCLUDED]


@pytest.mark.parametrize("verb", [v for v in JobVerb if v is not JobVerb.CHANGE])
@pytest.mark.parametrize("status", LIVE)
def test_every_verb_in_every_status(status, verb):
    async def main():
        env = Env()
        job = await _job_in(env, status)
        env.take()
        allowed = status in VERBS[verb]
        calls = {
            JobVerb.CANCEL: lambda: job.cancel(True),
            JobVerb.PAUSE: job.user_pause,
            JobVerb.RESUME: job.user_resume,
            JobVerb.SET_SPEED: lambda: job.set_speed(1 << 30),
            JobVerb.COMPLETE: job.complete,
            JobVerb.FINALIZE: job.finalize,
            JobVerb.DISMISS: job.dismiss,
        }
        def open_gates():
            for j in list(env.manager.jobs.values()):
                if j.gate is not None:
                    j.gate.set()
        try:
            result = calls[verb]()
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                await settle()
                open_gates()          # a transaction abort waits for the others to stop
                await task
        except JobError as exc:
            msg = str(exc)
            if allowed:     # the verb is accepted; only pause/resume have more checks
                assert (verb, msg) in [(JobVerb.PAUSE, "Job is already paused"),
                                       (JobVerb.RESUME, "Can't resume a job that was not paused")]
            else:
                refused = (f"Job 'job0' in state '{status.value}' cannot accept command "
                           f"verb '{verb.value}'")
                assert msg in (refused, "Can't resume a job that was not paused")
            assert env.take() == []
        else:
            assert allowed
        open_gates()
        await env.manager.shutdown()
        for j in list(env.manager.jobs.values()):
            if j.status is S.PENDING:
                await j.finalize()
    run(main())


def test_drained_node_pauses_its_job():
    async def main():
        env = Env()
        node, job = await _job_on_a_node(env)
        await settle()
        async with node.drained():
            await settle()
            assert job.status is S.STANDBY and not job.user_paused
        await settle()
        assert job.status is S.READY
        assert env.take()[-2:] == ["standby", "ready"]
        await job.cancel(True)
        await job.gone.wait()
        assert node.drain_handlers == []
        await node.close()
    run(main())
