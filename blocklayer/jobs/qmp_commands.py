"""The job commands of QSD 7.2 as plain async functions.

Each takes the daemon context (anything with ``graph`` and ``job_manager``) and the
command's validated arguments as keywords (QMP's names with ``_`` for ``-``).
:data:`COMMANDS` maps the QMP name to the function; :func:`handler` adapts one to the
dispatcher's ``(ctx, args)`` form.  Texts are QSD 7.2's.
"""
from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from blocklayer.core import chain
from blocklayer.core.driver import Cap
from blocklayer.core import graph as graph_ops
from blocklayer.filters import job_tops
from blocklayer.core.errors import BlockError, NodeNotFound
from blocklayer.core.node import BlockGraph, BlockNode

from .job import ERROR_POLICIES, BlockJob
from .manager import JobManager
from .state import JobError, JobStatus


class JobsContext(Protocol):
    graph: BlockGraph
    job_manager: JobManager


class DeviceNotFound(NodeNotFound):
    qmp_class = "DeviceNotFound"


def _lookup(graph: BlockGraph, device: str | None, node_name: str | None) -> BlockNode:
    node = graph.nodes.get(device or node_name or "")
    if node is None:
        raise JobError(f"Cannot find device='{device or ''}' nor node-name='{node_name or ''}'")
    return node


def _job_kw(job_id: str | None, speed: int | None, auto_finalize: bool | None,
            auto_dismiss: bool | None) -> dict[str, Any]:
    if job_id is None:
        job_id = ""      # QSD's nodes have no device name: QEMU's default id is ''
    return {"job_id": job_id, "speed": speed or 0,
            "auto_finalize": True if auto_finalize is None else auto_finalize,
            "auto_dismiss": True if auto_dismiss is None else auto_dismiss}


def _start(ctx: JobsContext, make: Callable[..., Any], kw: dict[str, Any],
           **args: Any) -> None:
    ctx.job_manager.check_id(kw["job_id"])
    job = make(ctx.job_manager, kw.pop("job_id"), **kw, **args)
    ctx.job_manager.add(job)


# ---- job-* ---------------------------------------------------------------------------------
async def job_pause(ctx: JobsContext, id: str) -> None:
    ctx.job_manager.find(id).user_pause()


async def job_resume(ctx: JobsContext, id: str) -> None:
    ctx.job_manager.find(id).user_resume()


async def job_cancel(ctx: JobsContext, id: str) -> None:
    await ctx.job_manager.find(id).cancel(True)


async def job_complete(ctx: JobsContext, id: str) -> None:
    await ctx.job_manager.find(id).complete()


async def job_finalize(ctx: JobsContext, id: str) -> None:
    await ctx.job_manager.find(id).finalize()


async def job_dismiss(ctx: JobsContext, id: str) -> None:
    ctx.job_manager.find(id).dismiss()


async def query_jobs(ctx: JobsContext) -> list[dict[str, Any]]:
    return ctx.job_manager.query_jobs()


# ---- block-job-* ---------------------------------------------------------------------------
async def block_job_set_speed(ctx: JobsContext, device: str, speed: int) -> None:
    ctx.job_manager.find_block_job(device).set_speed(speed)


async def block_job_cancel(ctx: JobsContext, device: str, force: bool | None = None) -> None:
    job = ctx.job_manager.find_block_job(device)
    if job.user_paused and not force:
        raise JobError(f"The block job for device '{device}' is currently paused")
    await job.cancel(bool(force))


async def block_job_pause(ctx: JobsContext, device: str) -> None:
    ctx.job_manager.find_block_job(device).user_pause()


async def block_job_resume(ctx: JobsContext, device: str) -> None:
    ctx.job_manager.find_block_job(device).user_resume()


async def block_job_complete(ctx: JobsContext, device: str) -> None:
    await ctx.job_manager.find_block_job(device).complete()


async def block_job_finalize(ctx: JobsContext, id: str) -> None:
    await ctx.job_manager.find_block_job(id).finalize()


async def block_job_dismiss(ctx: JobsContext, id: str) -> None:
    ctx.job_manager.find_block_job(id).dismiss()


async def block_job_change(ctx: JobsContext, id: str, type: str, **options: Any) -> None:
    """QEMU 8.2's command (not in 7.2's schema, so not in :data:`COMMANDS`)."""
    from .state import JobVerb
    job = ctx.job_manager.find_block_job(id)
    job.check(JobVerb.CHANGE)
    if type != job.job_type:
        raise JobError(f"Job type does not match specified type ({type})")
    job.change(**options)


async def query_block_jobs(ctx: JobsContext) -> list[dict[str, Any]]:
    return ctx.job_manager.query_block_jobs()


# ---- starting jobs ------------------------------------------------------------------------
def _need_root(ctx: JobsContext, node: BlockNode) -> None:
    """QEMU's qmp_get_root_bs: a job's device has no parent but users (no node above
    it, and no block job holding it: QEMU's jobs hold their nodes as children)."""
    if any(edge.parent is not None for edge in node.parents) or \
            _jobs_holding(ctx, {id(node)}):
        raise JobError("Need a root block node")


def _jobs_holding(ctx: JobsContext, node_ids: set[int], running: bool = False
                  ) -> list[BlockJob]:
    """The block jobs (``running``: started and not completed) that hold any of the
    nodes (by ``id``)."""
    return [j for j in ctx.job_manager.jobs.values()
            if isinstance(j, BlockJob) and (not running or j.started and not j.is_completed)
            and any(id(n) in node_ids for n in j.nodes)]


def _policy(value: str | None) -> str:
    value = value or "report"
    if value not in ERROR_POLICIES:
        raise JobError(f"Parameter 'on-error' does not accept value '{value}'")
    return value


async def block_stream(ctx: JobsContext, device: str, job_id: str | None = None,
                       base: str | None = None, base_node: str | None = None,
                       backing_file: str | None = None, bottom: str | None = None,
                       speed: int | None = None, on_error: str | None = None,
                       filter_node_name: str | None = None, auto_finalize: bool | None = None,
                       auto_dismiss: bool | None = None) -> None:
    from .stream import StreamJob, insert_cor_filter
    if base is not None and base_node is not None:
        raise JobError("'base' and 'base-node' cannot be specified at the same time")
    if base is not None and bottom is not None:
        raise JobError("'base' and 'bottom' cannot be specified at the same time")
    if bottom is not None and base_node is not None:
        raise JobError("'bottom' and 'base-node' cannot be specified at the same time")
    top = _lookup(ctx.graph, device, device)
    base_bs: BlockNode | None = None
    if base is not None:
        base_bs = chain.find_backing_image(top, base)
        if base_bs is None:
            raise JobError(f"Can't find '{base}' in the backing chain")
    if base_node is not None:
        base_bs = _lookup(ctx.graph, None, base_node)
        if base_bs is top or not chain.chain_contains(top, base_bs):
            raise JobError(f"Node '{base_node}' is not a backing image of '{device}'")
    if bottom is not None:
        bottom_bs = _lookup(ctx.graph, None, bottom)
        if bottom_bs is top or not chain.chain_contains(top, bottom_bs):
            raise JobError(f"Node '{bottom}' is not a backing image of '{device}'")
        base_bs = bottom_bs.filtered_backing()
    top.check_op("stream")
    if base_bs is None and backing_file is not None:
        raise JobError("backing file specified, but streaming the entire chain")
    below = top.filtered_backing()
    for layer in chain.layers(below, base_bs) if below is not None else ():
        layer.check_op("stream")
    kw = _job_kw(job_id, speed, auto_finalize, auto_dismiss)
    make_filter = None
    if below is not None and not top.read_only:
        base_overlay = below
        for layer in chain.layers(below, base_bs):
            base_overlay = layer
        make_filter = lambda: insert_cor_filter(top, base_overlay,  # noqa: E731
                                                filter_node_name)
    await _start_with_filter(ctx, StreamJob, kw, make_filter, top=top, base=base_bs,
                             backing_file=backing_file, on_error=_policy(on_error))


async def block_commit(ctx: JobsContext, device: str, job_id: str | None = None,
                       base_node: str | None = None, base: str | None = None,
                       top_node: str | None = None, top: str | None = None,
                       backing_file: str | None = None, speed: int | None = None,
                       on_error: str | None = None, filter_node_name: str | None = None,
                       auto_finalize: bool | None = None,
                       auto_dismiss: bool | None = None) -> None:
    from .commit import CommitJob
    active = ctx.graph.nodes.get(device)
    if active is None:
        raise DeviceNotFound(f"Device '{device}' not found")
    _need_root(ctx, active)
    active.check_op("commit-source")
    if top is not None and top_node is not None:
        raise JobError("'top-node' and 'top' are mutually exclusive")
    top_bs = active
    if top_node is not None:
        top_bs = _lookup(ctx.graph, None, top_node)
        if not chain.chain_contains(active, top_bs):
            raise JobError(f"'{top_node}' is not in this backing file chain")
    elif top is not None:
        found = active if top == active.filename else chain.find_backing_image(active, top)
        if found is None:
            raise JobError(f"Top image file {top} not found")
        top_bs = found
    if base is not None and base_node is not None:
        raise JobError("'base-node' and 'base' are mutually exclusive")
    if base_node is not None:
        base_bs = _lookup(ctx.graph, None, base_node)
        if not chain.chain_contains(top_bs, base_bs):
            raise JobError(f"'{base_node}' is not in this backing file chain")
    elif base is not None:
        found = chain.find_backing_image(top_bs, base)
        if found is None:
            raise JobError(f"Can't find '{base}' in the backing chain")
        base_bs = found
    else:
        base_bs = chain.find_base(top_bs)
    if top_bs is base_bs:
        raise JobError("cannot commit an image into itself")
    for layer in chain.layers(top_bs, base_bs):
        layer.check_op("commit-target")
    base_bs.check_op("commit-target")
    kw = _job_kw(job_id, speed, auto_finalize, auto_dismiss)
    if top_bs is active:
        if backing_file is not None:
            raise JobError("'backing-file' specified, but 'top' is the active layer")
        from .mirror import ActiveCommitJob
        policy = _policy(on_error)
        await _start_with_filter(ctx, ActiveCommitJob, kw,
                                 _mirror_top(active, filter_node_name), source=active,
                                 target=base_bs, on_source_error=policy,
                                 on_target_error=policy)
        return
    await _start_with_filter(
        ctx, CommitJob, kw,
        lambda: job_tops.insert(job_tops.CommitTopDriver, top_bs, filter_node_name),
        active=active, top=top_bs, base=base_bs, backing_file=backing_file,
        on_error=_policy(on_error))


async def blockdev_mirror(ctx: JobsContext, device: str, target: str, sync: str,
                          job_id: str | None = None, replaces: str | None = None,
                          speed: int | None = None, granularity: int | None = None,
                          buf_size: int | None = None, on_source_error: str | None = None,
                          on_target_error: str | None = None,
                          filter_node_name: str | None = None, copy_mode: str | None = None,
                          auto_finalize: bool | None = None,
                          auto_dismiss: bool | None = None) -> None:
    from .mirror import MirrorJob, check_mirror_args
    source = _lookup(ctx.graph, device, device)
    _need_root(ctx, source)
    target_bs = _lookup(ctx.graph, target, target)
    options = check_mirror_args(source, target_bs, sync, granularity, buf_size, copy_mode)
    if replaces is not None:
        to_replace = ctx.graph.nodes.get(replaces)
        if to_replace is None:
            raise JobError(f"Node name '{replaces}' not found")
        options["replaces"] = to_replace
    kw = _job_kw(job_id, speed, auto_finalize, auto_dismiss)
    await _start_with_filter(ctx, MirrorJob, kw, _mirror_top(source, filter_node_name),
                             source=source, target=target_bs,
                             on_source_error=_policy(on_source_error),
                             on_target_error=_policy(on_target_error), **options)


FilterMaker = Callable[[], Awaitable[BlockNode]]


def _mirror_top(source: BlockNode, name: str | None) -> FilterMaker:
    return lambda: job_tops.insert(job_tops.MirrorTopDriver, source, name)


async def _start_with_filter(ctx: JobsContext, make: Callable[..., Any], kw: dict[str, Any],
                             make_filter: FilterMaker | None, **args: Any) -> None:
    """Start a job with the filter QEMU inserts for it (``make_filter()`` puts it in the
    graph, after the job id is checked); taken out again if the job cannot start."""
    ctx.job_manager.check_id(kw["job_id"])
    node = await make_filter() if make_filter is not None else None
    try:
        _start(ctx, make, kw, filter_node=node, **args)
    except BaseException:
        if node is not None:
            await graph_ops.drop_filter(node)
        raise


async def blockdev_backup(ctx: JobsContext, **args: Any) -> None:
    """QEMU's blockdev_backup_prepare, do_backup_common and backup_job_create, in
    their order of checks, then the job starts."""
    await start_backup(ctx, await prepare_backup(ctx, **args))


async def prepare_backup(ctx: JobsContext, device: str, target: str, sync: str,
                         job_id: str | None = None, speed: int | None = None,
                         bitmap: str | None = None, bitmap_mode: str | None = None,
                         compress: bool | None = None, on_source_error: str | None = None,
                         on_target_error: str | None = None,
                         auto_finalize: bool | None = None,
                         auto_dismiss: bool | None = None,
                         filter_node_name: str | None = None,
                         x_perf: dict[str, Any] | None = None, txn: Any = None) -> Any:
    """Everything but the start: the filter is in, the bitmap frozen (a transaction's
    prepare; :func:`abort_backup` undoes it)."""
    from .backup import BackupJob
    from blocklayer.core import dirty
    source = _lookup(ctx.graph, device, device)
    target_bs = _lookup(ctx.graph, target, target)
    await _drain_jobs(ctx, source)
    try:
        _backup_checks(source, target_bs, sync, bitmap, bitmap_mode, bool(compress))
    except BlockError:
        await _drain_jobs(ctx, target_bs)
        raise
    if sync == "incremental":
        sync, bitmap_mode = "bitmap", "on-success"
    bm = dirty.find(source, bitmap) if bitmap is not None else None
    kw = _job_kw(job_id, speed, auto_finalize, auto_dismiss)
    ctx.job_manager.check_id(kw["job_id"])
    if txn is not None:            # completion-mode grouped: one fate for all
        kw["txn"] = txn
    options: dict[str, Any] = {"driver": "copy-before-write", "target": target_bs.name}
    if filter_node_name is not None:
        options["node-name"] = filter_node_name
    cbw = await graph_ops.open_filter_above(source, options)
    try:
        job = BackupJob(ctx.job_manager, kw.pop("job_id"), source=source,
                        target=target_bs, filter_node=cbw, sync=sync, bitmap=bm,
                        bitmap_mode=bitmap_mode, on_source_error=_policy(on_source_error),
                        on_target_error=_policy(on_target_error), **kw)
    except BaseException:
        await graph_ops.drop_filter(cbw)
        raise
    return ctx.job_manager.add(job, start=False)         # CREATED


async def start_backup(ctx: JobsContext, job: Any, hold: bool = False) -> None:
    """Start a prepared backup.  QEMU starts it inside a drained section: it pauses at
    once and runs on when the section ends -- here, or (``hold``) when the transaction
    that started it calls :func:`release_backup`."""
    job.pause()
    job.start()
    await _until_paused(job)
    if not hold:
        await release_backups([job])


async def release_backups(jobs: list[Any]) -> None:
    """The drained section ends: every held job runs on (all resumed, then waited for:
    QEMU's drained_end resumes them at once)."""
    for job in jobs:
        job.resume()
    for job in jobs:
        await _until_paused(job, False)


async def abort_backup(job: Any) -> None:
    """A prepared backup that is not to start (QEMU's job_early_fail): aborting,
    concluded, gone; the bitmap thaws as after a failure, the filter goes."""
    job.ret = job.ret or errno.ECANCELED     # the bitmap takes its bits back
    job.transition(JobStatus.ABORTING)
    await job.clean()
    await job.release()
    job.transition(JobStatus.CONCLUDED)
    job.do_dismiss()


def _backup_checks(source: BlockNode, target: BlockNode, sync: str, bitmap: str | None,
                   bitmap_mode: str | None, compress: bool) -> None:
    from blocklayer.core import dirty
    if sync in ("bitmap", "incremental") and bitmap is None:
        raise JobError(f"must provide a valid bitmap name for '{sync}' sync mode")
    if sync == "incremental":
        if bitmap_mode is not None and bitmap_mode != "on-success":
            raise JobError("Bitmap sync mode must be 'on-success' when using sync mode "
                           "'incremental'")
        sync, bitmap_mode = "bitmap", "on-success"
    bm = None
    if bitmap is not None:
        try:
            bm = dirty.find(source, bitmap)
        except NodeNotFound:
            raise JobError(f"Bitmap '{bitmap}' could not be found") from None
        if bitmap_mode is None:
            raise JobError("Bitmap sync mode must be given when providing a bitmap")
        dirty.check(bm, dirty.ALLOW_RO)
        if sync == "none":
            raise JobError(f"sync mode '{sync}' does not produce meaningful bitmap outputs")
        if bitmap_mode == "never" and sync != "bitmap":
            raise JobError(f"Bitmap sync mode '{bitmap_mode}' has no meaningful effect when "
                           f"combined with sync mode '{sync}'")
    elif bitmap_mode is not None:
        raise JobError("Cannot specify bitmap sync mode without a bitmap")
    if source is target:
        raise JobError("Source and target cannot be the same")
    if compress and not target.caps & Cap.COMPRESSED_WRITE:
        raise JobError(f"Compression is not supported for this drive {target.name}")
    source.check_op("backup-source")
    target.check_op("backup-target")
    if bm is not None and bitmap_mode != "never":
        dirty.check(bm, dirty.DEFAULT)


async def _drain_jobs(ctx: JobsContext, node: BlockNode) -> None:
    """A drained section over ``node`` as QEMU's: the jobs on it, its parents or its
    children pause (and say so) and run on when it ends."""
    jobs = _jobs_holding(ctx, {id(n) for n in [node, *node.ancestors(), *node.descendants()]},
                         running=True)
    for job in jobs:
        job.pause()
    for job in jobs:
        await _until_paused(job)
    for job in jobs:
        job.resume()
    for job in jobs:
        await _until_paused(job, False)


async def _until_paused(job: Any, paused: bool = True) -> None:
    """Let the job reach (or leave) its pause point: QEMU's drain polls until it has."""
    for _ in range(1000):
        if job.paused is paused or job.is_completed:
            return
        await asyncio.sleep(0.001)


Command = Callable[..., Awaitable[Any]]

COMMANDS: dict[str, Command] = {
    "job-pause": job_pause,
    "job-resume": job_resume,
    "job-cancel": job_cancel,
    "job-complete": job_complete,
    "job-finalize": job_finalize,
    "job-dismiss": job_dismiss,
    "query-jobs": query_jobs,
    "block-job-set-speed": block_job_set_speed,
    "block-job-cancel": block_job_cancel,
    "block-job-pause": block_job_pause,
    "block-job-resume": block_job_resume,
    "block-job-complete": block_job_complete,
    "block-job-finalize": block_job_finalize,
    "block-job-dismiss": block_job_dismiss,
    "query-block-jobs": query_block_jobs,
    "block-stream": block_stream,
    "block-commit": block_commit,
    "blockdev-mirror": blockdev_mirror,
    "blockdev-backup": blockdev_backup,
}

#: commands of later QEMUs (not in 7.2's schema)
LATER_COMMANDS: dict[str, Command] = {"block-job-change": block_job_change}


def handler(fn: Command, get_ctx: Callable[[Any], JobsContext]) -> Callable[[Any, dict[str, Any]],
                                                                            Awaitable[Any]]:
    """``fn`` in the dispatcher's ``(ctx, args)`` form; ``get_ctx`` finds the jobs
    context in the dispatcher's context (e.g. ``lambda c: c.app``)."""
    async def call(qctx: Any, args: dict[str, Any]) -> Any:
        return await fn(get_ctx(qctx), **{k.replace("-", "_"): v for k, v in args.items()})
    return call


__all__ = ["COMMANDS", "LATER_COMMANDS", "BlockError", "JobsContext", "abort_backup", "handler",
           "prepare_backup", "release_backups", "start_backup"]
