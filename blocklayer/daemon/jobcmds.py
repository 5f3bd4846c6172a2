"""The job commands in the daemon: :mod:`blocklayer.jobs.qmp_commands` on the daemon's
:class:`~blocklayer.jobs.manager.JobManager`.

``blockdev-create`` still runs synchronously and leaves a finished job in
``Daemon.jobs`` (see :mod:`.snapshots`); the ``job-*`` verbs and ``query-jobs`` answer
for those too, so a client sees one list of jobs.
"""
from __future__ import annotations

from typing import Any

from blocklayer.jobs import qmp_commands as jobs
from blocklayer.qmp.dispatch import Context

from . import control


def _app(ctx: Context) -> Any:
    return ctx.app


def _create_job_or(name: str) -> Any:
    """job-<verb>: a finished create job answers as before, any other id goes to the
    job manager."""
    new = jobs.handler(jobs.COMMANDS[name], _app)
    old = control.HANDLERS[name]

    async def call(ctx: Context, args: dict[str, Any]) -> Any:
        if args.get("id") in ctx.app.jobs:
            return await old(ctx, args)
        return await new(ctx, args)
    return call


async def query_jobs(ctx: Context, args: dict[str, Any]) -> Any:
    return [*await control.query_jobs(ctx, args), *ctx.app.job_manager.query_jobs()]


HANDLERS: dict[str, Any] = {
    **{name: jobs.handler(fn, _app) for name, fn in jobs.COMMANDS.items()},
    **{name: _create_job_or(name) for name in jobs.COMMANDS
       if name.startswith("job-") and name in control.HANDLERS},
    "query-jobs": query_jobs,
}
