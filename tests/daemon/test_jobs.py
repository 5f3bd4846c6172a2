"""Block jobs through the daemon's QMP: the same sessions against qemu-storage-daemon
7.2 and blocklayer-storage-daemon, driven with qemu.qmp, give the same replies, the same
event sequences and the same images."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.jobs.jobhelp import clean, make_chain, qsd_events, run, same

OURS = (sys.executable, "-m", "blocklayer.tools.daemon")

SESSIONS: dict[str, tuple[list[tuple[str, dict[str, Any]]], str | None]] = {
    "stream": ([("block-stream", {"job-id": "s0", "device": "top"})], "null"),
    "stream-no-dismiss": ([("block-stream", {"job-id": "s0", "device": "top",
                                             "auto-dismiss": False})], "concluded"),
    "errors": ([("block-stream", {"device": "nope", "job-id": "x"}),
                ("job-pause", {"id": "nope"}),
                ("block-job-cancel", {"device": "nope"}),
                ("query-jobs", {}), ("query-block-jobs", {})], None),
}


def _session(tmp: Path, name: str, program: tuple[str, ...]) -> tuple[list[str], list[Any]]:
    commands, until = SESSIONS[name]
    replies: list[Any] = []
    seen = run(qsd_events(tmp, make_chain(tmp)[2], commands, until, replies=replies,
                          program=program))
    return seen, replies


@pytest.mark.parametrize("name", ["stream", "stream-no-dismiss", "errors"])
def test_job_session_as_qsd(tmp_path: Path, name: str) -> None:
    need("qemu-storage-daemon")
    theirs_dir, ours_dir = tmp_path / "qsd", tmp_path / "ours"
    theirs_dir.mkdir()
    ours_dir.mkdir()
    theirs = _session(theirs_dir, name, ("qemu-storage-daemon",))
    ours = _session(ours_dir, name, OURS)
    assert ours == theirs
    top = "top.qcow2"
    assert same(theirs_dir / top, ours_dir / top)
    assert clean(ours_dir / top)
