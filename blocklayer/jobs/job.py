"""The generic job lifecycle (QEMU's ``job.c`` and ``blockjob.c``).

A :class:`Job` runs its :meth:`Job.run` coroutine in an asyncio task, moving through the
statuses of :mod:`blocklayer.jobs.state`; every move emits JOB_STATUS_CHANGE.  A job
type overrides only what it has: ``run`` (the work, with :meth:`Job.pause_point`
between chunks), ``prepare`` / ``commit`` / ``abort`` / ``clean`` (what happens at
finalization), ``on_complete`` (jobs that reach READY), ``on_cancel`` (a soft cancel a
ready mirror accepts).  A :class:`BlockJob` adds the nodes it works on (op blockers,
drain pauses) and the legacy BLOCK_JOB_* events.

Completion is per transaction (:class:`JobTxn`): a job alone is its own transaction;
grouped jobs all finalize or all abort.
"""
from __future__ import annotations

import asyncio
import errno as _errno
import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar

from blocklayer.core import chain, graph
from blocklayer.core.driver import Perm
from blocklayer.core.errors import BlockError, InvalidArgument
from blocklayer.core.reopen import reopen_set_read_only

from .ratelimit import SLICE_NS, RateLimit
from .state import JobError, JobStatus, JobVerb, check_transition, check_verb

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

    from .manager import JobManager

S = JobStatus
_COMPLETED = frozenset({S.WAITING, S.PENDING, S.ABORTING, S.CONCLUDED, S.NULL})

#: QEMU's BlockOpType names: what a node busy with a job refuses
BLOCK_OPS = ("backup-source", "backup-target", "change", "commit-source", "commit-target",
             "dataplane", "drive-del", "eject", "external-snapshot", "internal-snapshot",
             "internal-snapshot-delete", "mirror-source", "mirror-target", "resize",
             "stream", "replace")

ERROR_POLICIES = ("report", "ignore", "enospc", "stop", "auto")


class JobTxn:
    """Jobs that complete together: all finalize, or all abort."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.aborting = False

    def add(self, job: Job) -> None:
        self.jobs.insert(0, job)         # newest first, as QEMU's list (its order of work)
        job.txn = self

    def remove(self, job: Job) -> None:
        if job in self.jobs:
            self.jobs.remove(job)

    async def success(self, job: Job) -> None:
        job.transition(S.WAITING)
        if any(not other.is_completed for other in self.jobs):
            return
        for other in list(self.jobs):
            other.transition(S.PENDING)
            if not other.auto_finalize:
                other.event_pending()
        if all(other.auto_finalize for other in self.jobs):
            await self.finalize(job)

    async def finalize(self, job: Job) -> None:
        for other in list(self.jobs):
            await other.do_prepare()
            if other.ret:
                await self.abort(other)
                return
        for other in list(self.jobs):
            await other.finalize_single()

    async def abort(self, job: Job) -> None:
        if self.aborting:
            return
        self.aborting = True
        for other in self.jobs:
            if other is not job:
                other.cancel_async(True)
                other.wake()
        while self.jobs:
            other = self.jobs[0]
            if not other.is_completed:
                await other.run_ended.wait()
            await other.finalize_single()


class Job:
    """One job; subclasses set ``job_type`` and override :meth:`run` (and the hooks)."""

    job_type: ClassVar[str] = ""
    #: it has a complete step (reaches READY and waits for job-complete)
    can_complete: ClassVar[bool] = False

    def __init__(self, manager: JobManager, job_id: str, *, auto_finalize: bool = True,
                 auto_dismiss: bool = True, speed: int = 0, txn: JobTxn | None = None) -> None:
        self.manager = manager
        self.id = job_id
        self.status = S.UNDEFINED
        self.auto_finalize = auto_finalize
        self.auto_dismiss = auto_dismiss
        self.pause_count = 1            # a created job counts as paused until started
        self.user_paused = False
        self.paused = False
        self.busy = False
        self.started = False
        self.deferred = False           # run has ended: completion is in progress
        self.cancelled = False
        self.force_cancel = False
        self.should_complete = False
        self.ret = 0                    # errno of the failure (0: none)
        self.err: str | None = None
        self.speed = 0
        self.rate = RateLimit(0, SLICE_NS)
        self.current_progress = 0
        self.total_progress = 0
        self.task: asyncio.Task[None] | None = None
        self.run_ended = asyncio.Event()
        self.gone = asyncio.Event()     # concluded (and maybe dismissed): for waiters
        self._wake = asyncio.Event()
        self.txn = txn if txn is not None else JobTxn()
        self.txn.add(self)
        if speed:
            self._set_speed(speed)

    # ---- status and events -----------------------------------------------------------------
    def transition(self, new: JobStatus) -> None:
        check_transition(self.id, self.status, new)
        old, self.status = self.status, new
        if new is not old:
            self.manager.emit("JOB_STATUS_CHANGE", {"id": self.id, "status": new.value})

    def check(self, verb: JobVerb) -> None:
        check_verb(self.id, self.status, verb)

    @property
    def is_cancelled(self) -> bool:
        """Cancelled for real (a soft cancel of a ready mirror is a completion)."""
        return self.cancelled and self.force_cancel

    @property
    def is_completed(self) -> bool:
        return self.status in _COMPLETED

    @property
    def is_ready(self) -> bool:
        return self.status in (S.READY, S.STANDBY)

    def event_pending(self) -> None: ...
    def event_ready(self) -> None: ...
    def event_finished(self) -> None: ...

    # ---- running ----------------------------------------------------------------------------
    def start(self) -> None:
        self.started = True
        self.busy = True
        self.pause_count -= 1
        self.transition(S.RUNNING)
        self.task = asyncio.get_running_loop().create_task(self._entry())

    async def _entry(self) -> None:
        try:
            await self.pause_point()
            await self.run()
        except BlockError as exc:
            self.ret = exc.errno or _errno.EIO
            self.err = self.error_text(exc)
        except asyncio.CancelledError:
            self.ret, self.err = _errno.ECANCELED, os.strerror(_errno.ECANCELED)
            self.cancelled = self.force_cancel = True
        except Exception as exc:  # noqa: BLE001 -- a bug in a job fails the job, not the daemon
            self.ret, self.err = _errno.EIO, str(exc) or type(exc).__name__
        self.busy = False
        self.deferred = True
        self.run_ended.set()
        await self._completed()

    async def run(self) -> None:
        """The work.  Raise a :class:`BlockError` to fail; return when cancelled."""

    def error_text(self, exc: BlockError) -> str:
        """What query-jobs and BLOCK_JOB_COMPLETED say of a failure."""
        return exc.message

    async def _completed(self) -> None:
        if self._update_rc():
            await self.txn.abort(self)
        else:
            await self.txn.success(self)

    def _update_rc(self) -> int:
        if not self.ret and self.is_cancelled:
            self.ret = _errno.ECANCELED
        if self.ret:
            if self.err is None:
                self.err = os.strerror(self.ret)
            self.transition(S.ABORTING)
        return self.ret

    # ---- finalization -----------------------------------------------------------------------
    async def prepare(self) -> None:
        """Before commit/abort, for all jobs of the transaction (may fail)."""

    async def commit(self) -> None:
        """The job succeeded (and the whole transaction did)."""

    async def abort(self) -> None:
        """The job failed or was cancelled (or another of its transaction was)."""

    async def clean(self) -> None:
        """Always, after commit or abort."""

    async def do_prepare(self) -> None:
        if self.ret == 0:
            try:
                await self.prepare()
            except BlockError as exc:
                self.ret, self.err = exc.errno or _errno.EIO, exc.message
            self._update_rc()

    async def finalize_single(self) -> None:
        self._update_rc()
        try:
            if not self.ret:
                await self.commit()
            else:
                await self.abort()
        finally:
            await self.clean()
            await self.release()
        if self.started:
            self.event_finished()
        self.txn.remove(self)
        self.transition(S.CONCLUDED)
        if self.auto_dismiss or not self.started:
            self.do_dismiss()
        self.gone.set()

    async def release(self) -> None:
        """Let go of what the job held (nodes, blockers, frozen chains)."""

    def do_dismiss(self) -> None:
        self.busy = False
        self.deferred = False
        self.txn.remove(self)
        self.transition(S.NULL)
        self.manager.remove(self)
        self.gone.set()

    # ---- pausing and sleeping ----------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def _yield(self, timeout_ns: int | None = None) -> None:
        self.busy = False
        self._wake.clear()
        try:
            if timeout_ns is None:
                await self._wake.wait()
            else:
                await asyncio.wait_for(self._wake.wait(), timeout_ns / 1e9)
        except TimeoutError:
            pass
        finally:
            self.busy = True

    async def pause_point(self) -> None:
        """Between chunks: stop here while the job is paused (and not cancelled)."""
        if self.pause_count == 0 or self.is_cancelled:
            return
        was = self.status
        self.transition(S.STANDBY if was is S.READY else S.PAUSED)
        self.paused = True
        while self.pause_count > 0 and not self.is_cancelled:
            await self._yield()
        self.paused = False
        self.transition(was)

    async def sleep(self, ns: int) -> None:
        """Sleep ``ns`` (woken early by pause, cancel, a faster speed), then a pause point."""
        if self.pause_count == 0:
            await self._yield(ns)
        await self.pause_point()

    async def throttle(self, n: int) -> None:
        """Account ``n`` bytes done and wait as the speed limit says."""
        delay = self.rate.calculate_delay(n)
        while delay > 0 and not self.is_cancelled:
            await self.sleep(delay)
            delay = self.rate.calculate_delay(0)

    async def wait_for_complete(self) -> None:
        """A ready job's idle loop: until job-complete or a cancel."""
        while not self.should_complete and not self.cancelled:
            await self._yield()
            await self.pause_point()

    def pause(self) -> None:
        self.pause_count += 1
        if not self.paused:
            self.wake()

    def resume(self) -> None:
        if self.pause_count == 0:
            return
        self.pause_count -= 1
        if self.pause_count == 0:
            self.wake()

    # ---- progress, ready --------------------------------------------------------------------
    def progress_update(self, done: int) -> None:
        self.current_progress += done

    def progress_set_remaining(self, remaining: int) -> None:
        self.total_progress = self.current_progress + remaining

    def progress_increase_remaining(self, delta: int) -> None:
        self.total_progress += delta

    def set_ready(self) -> None:
        self.transition(S.READY)
        self.event_ready()

    # ---- the verbs ---------------------------------------------------------------------------
    def user_pause(self) -> None:
        self.check(JobVerb.PAUSE)
        if self.user_paused:
            raise JobError("Job is already paused")
        self.user_paused = True
        self.pause()

    def user_resume(self) -> None:
        if not self.user_paused:
            raise JobError("Can't resume a job that was not paused")
        self.check(JobVerb.RESUME)
        self.on_user_resume()
        self.user_paused = False
        self.resume()

    def on_user_resume(self) -> None: ...

    def set_speed(self, speed: int) -> None:
        self.check(JobVerb.SET_SPEED)
        if speed < 0:
            raise InvalidArgument("Parameter 'speed' expects a non-negative value")
        old = self.speed
        self._set_speed(speed)
        if not speed or speed > old:
            self.wake()

    def _set_speed(self, speed: int) -> None:
        self.speed = speed
        self.rate.set_speed(speed, SLICE_NS)

    def on_cancel(self, force: bool) -> bool:
        """Whether a cancel is a real one (a ready mirror takes a soft one as a
        completion without pivot)."""
        return True

    def cancel_async(self, force: bool) -> None:
        force = self.on_cancel(force)
        if self.user_paused:
            self.on_user_resume()
            self.user_paused = False
            self.pause_count -= 1
        if not self.deferred or force:
            self.cancelled = True
            self.force_cancel |= force

    async def cancel(self, force: bool) -> None:
        self.check(JobVerb.CANCEL)
        if self.status is S.CONCLUDED:
            self.do_dismiss()
            return
        self.cancel_async(force)
        if not self.started:
            await self._completed()
        elif self.deferred:
            if self.is_cancelled:
                await self.txn.abort(self)
        else:
            self.wake()

    async def complete(self) -> None:
        self.check(JobVerb.COMPLETE)
        if self.cancelled or not self.can_complete:
            raise JobError(f"The active block job '{self.id}' cannot be completed")
        self.on_complete()

    def on_complete(self) -> None:
        self.should_complete = True
        self.wake()

    async def finalize(self) -> None:
        self.check(JobVerb.FINALIZE)
        await self.txn.finalize(self)

    def dismiss(self) -> None:
        self.check(JobVerb.DISMISS)
        self.do_dismiss()

    # ---- queries ------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """``query-jobs``'s JobInfo, keys in QEMU's order."""
        out: dict[str, Any] = {"id": self.id, "type": self.job_type,
                               "status": self.status.value,
                               "current-progress": self.current_progress,
                               "total-progress": self.total_progress}
        if self.ret:
            out["error"] = self.err
        return out


class BlockJob(Job):
    """A job on block nodes: the nodes refuse other jobs meanwhile, a drained node pauses
    the job, and the legacy BLOCK_JOB_* events are sent (``device`` is the job id)."""

    def __init__(self, manager: JobManager, job_id: str, **kw: Any) -> None:
        self.nodes: list[BlockNode] = []
        #: the filter the job put above the node it works on (stream's copy-on-read,
        #: mirror's mirror_top), held as the job's main node until it is dropped
        self.filter_node: BlockNode | None = None
        self.used: list[BlockNode] = []
        self.frozen: list[tuple[BlockNode, BlockNode | None]] = []
        self.reopened: list[BlockNode] = []
        self.io_status = "ok"
        super().__init__(manager, job_id, **kw)

    def add_node(self, node: BlockNode, block_ops: bool = True) -> None:
        self.nodes.append(node)
        if block_ops:
            node.block_all_ops(self, f"block device is in use by block job: {self.job_type}",
                               BLOCK_OPS)
        node.drain_handlers.append(self._drain)

    def use_node(self, node: BlockNode) -> None:
        """The job reads or writes ``node`` itself (QEMU gives it a BlockBackend there:
        ``blockdev-del`` says "Node ... is in use")."""
        node.add_user(self, Perm.NONE, Perm.ALL)
        self.used.append(node)

    def hold_filter(self, node: BlockNode, in_use: bool = True) -> None:
        """``node`` (inserted above the job's node) is the job's main node: blocked,
        and (``in_use``) used by the job.  QSD 7.2 refuses to delete stream's filter
        with "Node ... is in use" and mirror's as busy (blocked): ``in_use`` False."""
        self.filter_node = node
        self.add_node(node)
        if in_use:
            self.use_node(node)

    async def drop_filter(self) -> None:
        """Let go of the held filter and take it out of the graph (its parents use the
        node below it again)."""
        node, self.filter_node = self.filter_node, None
        if node is None:
            return
        if node in self.nodes:
            self.nodes.remove(node)
        node.unblock_all_ops(self)
        node.remove_user(self)
        if node in self.used:
            self.used.remove(node)
        if self._drain in node.drain_handlers:
            node.drain_handlers.remove(self._drain)
        if not node.closed:
            await graph.drop_filter(node)

    def _drain(self, begin: bool) -> None:
        if begin:
            self.pause()
        else:
            self.resume()

    def freeze_chain(self, top: BlockNode, base: BlockNode | None) -> None:
        """Freeze the chain from ``top`` down to ``base`` until the job lets go."""
        chain.freeze(top, base)
        self.frozen.append((top, base))

    def unfreeze_chains(self) -> None:
        for top, base in self.frozen:
            chain.unfreeze(top, base)
        self.frozen = []

    async def make_writable(self, node: BlockNode) -> None:
        """Reopen ``node`` read-write for the job; read-only again when it lets go."""
        if node.read_only:
            await reopen_set_read_only(node, False)
            self.reopened.append(node)

    async def on_target(self, request: Awaitable[Any]) -> Any:
        """Await a request to the job's target: a failure there is a write error."""
        try:
            return await request
        except BlockError as exc:
            exc.job_target = True  # type: ignore[attr-defined]
            raise

    @staticmethod
    def is_read_error(exc: BlockError) -> bool:
        return not getattr(exc, "job_target", False)

    async def release(self) -> None:
        self.unfreeze_chains()
        for node in self.reopened:
            if not node.closed:
                try:
                    await reopen_set_read_only(node, True)
                except BlockError:
                    pass            # left writable: QEMU only warns as well
        self.reopened = []
        for node in self.nodes:
            node.unblock_all_ops(self)
            if self._drain in node.drain_handlers:
                node.drain_handlers.remove(self._drain)
        self.nodes = []
        for node in self.used:
            node.remove_user(self)
        self.used = []

    def error_text(self, exc: BlockError) -> str:
        """Block jobs fail with an errno only: QEMU says its strerror."""
        return os.strerror(exc.errno or _errno.EIO)

    def _legacy(self) -> dict[str, Any]:
        return {"type": self.job_type, "device": self.id, "len": self.total_progress,
                "offset": self.current_progress, "speed": self.speed}

    def event_pending(self) -> None:
        self.manager.emit("BLOCK_JOB_PENDING", {"type": self.job_type, "id": self.id})

    def event_ready(self) -> None:
        self.manager.emit("BLOCK_JOB_READY", self._legacy())

    def event_finished(self) -> None:
        if self.is_cancelled:
            self.manager.emit("BLOCK_JOB_CANCELLED", self._legacy())
            return
        data = self._legacy()
        if self.ret:
            data["error"] = self.err
        self.manager.emit("BLOCK_JOB_COMPLETED", data)

    def on_user_resume(self) -> None:
        self.io_status = "ok"

    def change(self, **options: Any) -> None:
        """``block-job-change`` (QEMU 8.2): the options a job type lets change."""
        raise JobError(f"Job type '{self.job_type}' has no options to change")

    def error_action(self, policy: str, is_read: bool, errno: int) -> str:
        """What a failed request does under ``policy`` (on-error and its kin):
        ``report`` (fail the job), ``ignore`` (go on), ``stop`` (pause; the user resumes).
        Sends BLOCK_JOB_ERROR unless the job is being cancelled."""
        if policy in ("enospc", "auto"):
            action = "stop" if errno == _errno.ENOSPC else "report"
        else:
            action = policy
        if not self.is_cancelled:
            self.manager.emit("BLOCK_JOB_ERROR", {"device": self.id,
                                                  "operation": "read" if is_read else "write",
                                                  "action": action})
        if action == "stop":
            if not self.user_paused:
                self.pause()
                self.user_paused = True
            self.io_status = "nospace" if errno == _errno.ENOSPC else "failed"
        return action

    def block_info(self) -> dict[str, Any]:
        """``query-block-jobs``'s BlockJobInfo, keys in QEMU's order."""
        out: dict[str, Any] = {"type": self.job_type, "device": self.id,
                               "len": self.total_progress, "offset": self.current_progress,
                               "busy": self.busy, "paused": self.pause_count > 0,
                               "speed": self.speed, "io-status": self.io_status,
                               "ready": self.is_ready, "status": self.status.value,
                               "auto-finalize": self.auto_finalize,
                               "auto-dismiss": self.auto_dismiss}
        if self.ret:
            out["error"] = self.err
        return out
