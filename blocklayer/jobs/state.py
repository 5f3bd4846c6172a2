"""QEMU's job state machine as data (``job.c``'s JobSTT and JobVerbTable).

One table says which status may follow which, one says which verbs a job accepts in
which status; :func:`check_verb` and :func:`check_transition` are the only checks.
"""
from __future__ import annotations

import enum

from blocklayer.core.errors import BlockError


class JobStatus(enum.Enum):
    UNDEFINED = "undefined"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    READY = "ready"
    STANDBY = "standby"
    WAITING = "waiting"
    PENDING = "pending"
    ABORTING = "aborting"
    CONCLUDED = "concluded"
    NULL = "null"


class JobVerb(enum.Enum):
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    SET_SPEED = "set-speed"
    COMPLETE = "complete"
    FINALIZE = "finalize"
    DISMISS = "dismiss"
    CHANGE = "change"          # QEMU 8.2's block-job-change; not in 7.2's schema


S = JobStatus

#: status -> the statuses it may move to
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.UNDEFINED: frozenset({S.CREATED}),
    S.CREATED: frozenset({S.RUNNING, S.ABORTING, S.NULL}),
    S.RUNNING: frozenset({S.PAUSED, S.READY, S.WAITING, S.ABORTING}),
    S.PAUSED: frozenset({S.RUNNING}),
    S.READY: frozenset({S.STANDBY, S.WAITING, S.ABORTING}),
    S.STANDBY: frozenset({S.READY}),
    S.WAITING: frozenset({S.PENDING, S.ABORTING}),
    S.PENDING: frozenset({S.ABORTING, S.CONCLUDED}),
    S.ABORTING: frozenset({S.ABORTING, S.CONCLUDED}),
    S.CONCLUDED: frozenset({S.NULL}),
    S.NULL: frozenset(),
}

_LIVE = frozenset({S.CREATED, S.RUNNING, S.PAUSED, S.READY, S.STANDBY})

#: verb -> the statuses in which a job accepts it
VERBS: dict[JobVerb, frozenset[JobStatus]] = {
    JobVerb.CANCEL: _LIVE | {S.WAITING, S.PENDING},
    JobVerb.PAUSE: _LIVE,
    JobVerb.RESUME: _LIVE,
    JobVerb.SET_SPEED: _LIVE,
    JobVerb.COMPLETE: frozenset({S.READY}),
    JobVerb.FINALIZE: frozenset({S.PENDING}),
    JobVerb.DISMISS: frozenset({S.CONCLUDED}),
    JobVerb.CHANGE: frozenset({S.RUNNING, S.PAUSED, S.READY, S.STANDBY}),
}

#: what pausing and resuming a job in a status turns it into
PAUSED_FORM = {S.RUNNING: S.PAUSED, S.READY: S.STANDBY}
RESUMED_FORM = {S.PAUSED: S.RUNNING, S.STANDBY: S.READY}


class JobError(BlockError):
    """A job command that the job refuses (QMP GenericError)."""


class VerbRefused(JobError):
    """The job's status does not accept the verb."""


class BadTransition(JobError):
    """A status change the table does not allow: a bug in a job, never user input."""


def check_verb(job_id: str, status: JobStatus, verb: JobVerb) -> None:
    """Raise :class:`VerbRefused` with QEMU's text unless ``status`` accepts ``verb``."""
    if status not in VERBS[verb]:
        raise VerbRefused(f"Job '{job_id}' in state '{status.value}' cannot accept "
                          f"command verb '{verb.value}'")


def check_transition(job_id: str, old: JobStatus, new: JobStatus) -> None:
    if new not in TRANSITIONS[old]:
        raise BadTransition(f"Job '{job_id}' cannot go from state '{old.value}' "
                            f"to '{new.value}'")
