"""The jobs of one program: ids, look-ups (with QEMU's two flavours of "not found"),
queries, and shutting them all down.  The daemon owns one and passes it around."""
from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from .job import BlockJob, Job
from .state import JobError

if TYPE_CHECKING:
    from blocklayer.core.node import BlockGraph

_WELLFORMED = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")


class JobNotActive(JobError):
    """``block-job-*`` on a job id that names no block job."""

    qmp_class = "DeviceNotActive"


class JobManager:
    """Owns the jobs by id; events go out through the graph's event channel."""

    def __init__(self, graph: BlockGraph) -> None:
        self.graph = graph
        self.jobs: dict[str, Job] = {}

    def emit(self, event: str, data: dict[str, Any]) -> None:
        self.graph.emit(event, data)

    def check_id(self, job_id: str) -> None:
        if not _WELLFORMED.match(job_id):
            raise JobError(f"Invalid job ID '{job_id}'")
        if job_id in self.jobs:
            raise JobError(f"Job ID '{job_id}' already in use")

    def add(self, job: Job, start: bool = True) -> Job:
        """Register a new job (CREATED) and start it (RUNNING)."""
        self.check_id(job.id)
        self.jobs[job.id] = job
        job.transition(job.status.CREATED)
        if start:
            job.start()
        return job

    def remove(self, job: Job) -> None:
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]

    def find(self, job_id: str) -> Job:
        """For ``job-*``."""
        job = self.jobs.get(job_id)
        if job is None:
            raise JobError("Job not found")
        return job

    def find_block_job(self, job_id: str) -> BlockJob:
        """For ``block-job-*``."""
        job = self.jobs.get(job_id)
        if not isinstance(job, BlockJob):
            raise JobNotActive(f"Block job '{job_id}' not found")
        return job

    def query_jobs(self) -> list[dict[str, Any]]:
        """Newest first, as QEMU lists them."""
        return [job.info() for job in reversed(self.jobs.values())]

    def query_block_jobs(self) -> list[dict[str, Any]]:
        return [job.block_info() for job in reversed(self.jobs.values())
                if isinstance(job, BlockJob)]

    async def shutdown(self) -> None:
        """Cancel every job (force) and wait until each has concluded."""
        for job in list(self.jobs.values()):
            if not job.is_completed and job.started:
                job.cancel_async(True)
                job.wake()
        for job in list(self.jobs.values()):
            if job.task is not None:
                await asyncio.gather(job.task, return_exceptions=True)
