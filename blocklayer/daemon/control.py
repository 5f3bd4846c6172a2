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


HANDLERS = {
    "qmp_capabilities": qmp_capabilities,
    "query-version": query_version,
    "query-commands": query_commands,
    "query-qmp-schema": query_qmp_schema,
    "quit": quit_,
    "query-jobs": query_jobs,
    "job-dismiss": job_dismiss,
}
