"""Commands about QMP and the daemon itself."""
from __future__ import annotations

from typing import Any

from blocklayer.qmp.dispatch import Context
from blocklayer.qmp.protocol import CommandError, State


async def qmp_capabilities(ctx: Context, args: dict[str, Any]) -> None:
    if ctx.monitor.state is State.COMMAND:
        raise CommandError("Capabilities negotiation is already complete, command ignored",
                           "CommandNotFound")
    ctx.monitor.negotiate(list(args.get("enable", [])))


async def query_version(ctx: Context, args: dict[str, Any]) -> Any:
    return ctx.app.version


async def query_commands(ctx: Context, args: dict[str, Any]) -> Any:
    return [{"name": name} for name in ctx.app.schema.commands()]


async def query_qmp_schema(ctx: Context, args: dict[str, Any]) -> Any:
    return ctx.app.schema.introspection()


async def quit_(ctx: Context, args: dict[str, Any]) -> None:
    ctx.app.quit_requested.set()


async def query_jobs(ctx: Context, args: dict[str, Any]) -> Any:
    return [{"id": j.id, "type": j.type, "status": j.status, "current-progress": 1,
             "total-progress": 1, **({"error": j.error} if j.error else {})}
            for j in ctx.app.jobs.values()]


async def job_dismiss(ctx: Context, args: dict[str, Any]) -> None:
    job = ctx.app.jobs.get(args["id"])
    if job is None:
        raise CommandError("Job not found")
    del ctx.app.jobs[job.id]
    ctx.app.emit("JOB_STATUS_CHANGE", {"id": job.id, "status": "null"})


def _job_verb(verb: str) -> Any:
    """job-<verb>: only finished create jobs exist until the job engine lands."""
    async def handler(ctx: Context, args: dict[str, Any]) -> None:
        job = ctx.app.jobs.get(args["id"])
        if job is None:
            raise CommandError("Job not found")
        raise CommandError(f"Job '{job.id}' in state '{job.status}' cannot accept command "
                           f"verb '{verb}'")
    return handler


def _block_job_verb(key: str) -> Any:
    """block-job-<verb>: no block jobs run yet."""
    async def handler(ctx: Context, args: dict[str, Any]) -> None:
        raise CommandError(f"Block job '{args[key]}' not found", "DeviceNotActive")
    return handler


async def query_block_jobs(ctx: Context, args: dict[str, Any]) -> Any:
    return []


async def query_chardev(ctx: Context, args: dict[str, Any]) -> Any:
    out = []
    for dev in ctx.app.chardevs.values():
        where = f"unix:{dev.path}" if dev.path else f"tcp:{dev.host or ''}:{dev.port}"
        out.append({"label": dev.id, "filename": f"{where},server=on",
                    "frontend-open": dev.monitor is not None})
    return out


async def query_chardev_backends(ctx: Context, args: dict[str, Any]) -> Any:
    return [{"name": "socket"}]      # the one backend blocklayer offers


async def x_blockdev_set_iothread(ctx: Context, args: dict[str, Any]) -> None:
    """Accepted as QSD accepts it; blocklayer runs every node in one event loop."""
    from .lookup import node_by_name
    node_by_name(ctx.app, args["node-name"], "Cannot find node {}")


HANDLERS = {
    "qmp_capabilities": qmp_capabilities,
    "query-version": query_version,
    "query-commands": query_commands,
    "query-qmp-schema": query_qmp_schema,
    "quit": quit_,
    "query-jobs": query_jobs,
    "job-dismiss": job_dismiss,
    **{f"job-{verb}": _job_verb(verb) for verb in ("cancel", "pause", "resume", "complete",
                                                   "finalize")},
    **{f"block-job-{verb}": _block_job_verb("device") for verb in ("cancel", "pause", "resume",
                                                                   "complete", "set-speed")},
    "block-job-dismiss": _block_job_verb("id"),
    "block-job-finalize": _block_job_verb("id"),
    "query-block-jobs": query_block_jobs,
    "query-chardev": query_chardev,
    "query-chardev-backends": query_chardev_backends,
    "x-blockdev-set-iothread": x_blockdev_set_iothread,
}
