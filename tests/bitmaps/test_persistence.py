"""Persistent bitmaps across daemon restarts, as QSD 7.2 keeps them: stored at a
clean exit, in use (and so inconsistent when opened again) after a SIGKILL; qemu-img
info and check agree."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.bitmaps.test_transaction import _show
from tests.conftest import qemu_img, qemu_io
from tests.daemon.harness import Normaliser, Step, _session, diff
from tests.qmp.qsd import daemon


def cmd(name: str, args: dict[str, Any] | None = None) -> Step:
    return ("cmd", name, args or {})


ADD = cmd("blockdev-add", {"driver": "qcow2", "node-name": "a",
                           "file": {"driver": "file", "filename": "a.qcow2"}})
QUERY = cmd("query-named-block-nodes", {"flat": True})
SHA = cmd("x-debug-block-dirty-bitmap-sha256", {"node": "a", "name": "p"})

SESSIONS = [
    ([ADD, cmd("block-dirty-bitmap-add", {"node": "a", "name": "p", "persistent": True,
                                          "granularity": 4096}),
      cmd("block-dirty-bitmap-add", {"node": "a", "name": "gone"}),
      cmd("block-dirty-bitmap-merge", {"node": "a", "target": "p", "bitmaps": ["src"]}),
      cmd("block-dirty-bitmap-remove", {"node": "a", "name": "src"}), SHA], "term"),
    ([ADD, QUERY, SHA], "kill"),
    ([ADD, QUERY, cmd("block-dirty-bitmap-clear", {"node": "a", "name": "p"}), SHA,
      cmd("block-dirty-bitmap-remove", {"node": "a", "name": "p"}), QUERY], "term"),
]


def _prepare(work: Path) -> None:
    img = str(work / "a.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "16M")
    qemu_img("bitmap", "--add", "-g", "4096", img, "src")
    qemu_io("-f", "qcow2", "-c", "write 0 12k", "-c", "write 5M 1M", img)


def _info(work: Path) -> Any:
    out = qemu_img("info", "--output=json", str(work / "a.qcow2")).stdout
    return json.loads(out)["format-specific"]["data"].get("bitmaps")


def _run(which: str, work: Path) -> list[Any]:
    out: list[Any] = []
    for steps, end in SESSIONS:
        pidfile = work / f"{which}.pid"
        with daemon(which, work, "--pidfile", str(pidfile)) as sock:
            out.append(asyncio.run(_session(sock, steps, Normaliser(work))))
            if end == "kill":
                pid = int(pidfile.read_text())
                os.kill(pid, signal.SIGKILL)
                for _ in range(200):          # until it is gone (bounded)
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.05)
        check = qemu_img("check", "--output=json", str(work / "a.qcow2"), check=False)
        out.append((_info(work), check.returncode))
    return out


def test_restart_and_sigkill(tmp_path: Path) -> None:
    results = []
    for which in ("qsd", "ours"):
        work = tmp_path / which
        work.mkdir()
        _prepare(work)
        results.append(_run(which, work))
    _show(results[0], results[1])
    assert diff(results[0], results[1]) == []
