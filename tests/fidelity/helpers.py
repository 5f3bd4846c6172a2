"""Our tools under QEMU's names, for differential tests against qemu-img / qemu-io.

``bindir(tmp)`` makes ``qemu-img`` and ``qemu-io`` symlinks to two small wrapper scripts
that run this checkout's ``blocklayer.tools.img`` / ``.io``.  The program must see the
symlink's name as ``argv[0]`` (QEMU's tools name themselves after ``basename(argv[0])``):
a ``#!/bin/sh`` wrapper started through a symlink gets the symlink's path as ``$0``, and
hands it on to ``python3 -c '...'``, which puts it back in ``sys.argv[0]`` before calling
the tool's ``main()``.  (``python3 -m`` would set ``argv[0]`` to the module's path.)
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from ..conftest import ROOT, need
from ..img.helpers import Result

MODULES = {"qemu-img": "blocklayer.tools.img.main", "qemu-io": "blocklayer.tools.io.main"}


def bindir(tmp: Path) -> Path:
    """A directory holding ``qemu-img`` and ``qemu-io`` that run our tools."""
    path = tmp / "bin"
    path.mkdir(exist_ok=True)
    for name, module in MODULES.items():
        wrapper = path / f".wrap-{name}"
        code = f"import sys; sys.argv[0] = sys.argv.pop(1); from {module} import main; main()"
        wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))}"
                           f"${{PYTHONPATH:+:$PYTHONPATH}} exec {shlex.quote(sys.executable)}"
                           f" -c {shlex.quote(code)} \"$0\" \"$@\"\n")
        wrapper.chmod(0o755)
        link = path / name
        if not link.exists():
            link.symlink_to(wrapper.name)
    return path


def run_both(tmp: Path, tool: str, *args: str, setup: list[list[str]] | None = None,
             timeout: int = 120) -> tuple[Result, Result]:
    """Run QEMU's ``tool`` and ours (as ``tool``) with ``args`` in two fresh directories
    (each first running the ``setup`` commands with QEMU's qemu-img); return
    ``(ours, theirs)`` with the directories replaced by ``WORK``."""
    need(tool)
    ours_bin = bindir(tmp)
    results = []
    for side, exe in (("ours", str(ours_bin / tool)), ("qemu", tool)):
        work = tmp / side
        work.mkdir()
        for cmd in setup or []:
            subprocess.run(cmd, cwd=work, check=True, capture_output=True, timeout=timeout)
        res = subprocess.run([exe, *args], cwd=work, capture_output=True, text=True,
                             timeout=timeout)
        results.append(Result(res.returncode, res.stdout.replace(str(work), "WORK"),
                              res.stderr.replace(str(work), "WORK")))
    return results[0], results[1]


def normalise(text: str, work: Path) -> str:
    """Filter only paths and timings (and the dates QEMU prints)."""
    text = text.replace(str(work), "WORK")
    text = re.sub(r"\b\d\d\.\d\d sec\b", "T sec", text)
    text = re.sub(r"\([\d.]+ [KMGTPE]?i?B/sec and [\d.]+ ops/sec\)", "(RATE)", text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "DATE", text)
    text = re.sub(r"(?<=\s)\d\d:\d\d:\d\d\.\d{3}(?=\s)", "CLOCK", text)
    text = re.sub(r'"date-(sec|nsec)": \d+', r'"date-\1": X', text)
    text = re.sub(r'"vm-clock-(sec|nsec)": \d+', r'"vm-clock-\1": X', text)
    return text


def environ(path_first: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    return env
