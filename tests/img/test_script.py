"""A shell script written for qemu-img / qemu-io gives the same output with
blocklayer-img / blocklayer-io substituted (issue 5)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from ..conftest import ROOT, need

SCRIPT = Path(__file__).parent / "scripts" / "chain.sh"


def _wrapper(bindir: Path, name: str, module: str) -> str:
    path = bindir / name
    path.write_text(f"#!/bin/sh\nexec {sys.executable} -m {module} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def _run(work: Path, qemu_img: str, qemu_io: str) -> str:
    work.mkdir()
    env = {**os.environ, "WORK": str(work), "QEMU_IMG": qemu_img, "QEMU_IO": qemu_io,
           "PYTHONPATH": str(ROOT)}
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env,
                         timeout=300)
    return _normalise(res.stdout + "\n--stderr--\n" + res.stderr, work)


def _normalise(text: str, work: Path) -> str:
    text = text.replace(str(work), "WORK")
    text = re.sub(r"\b(qemu-img|qemu-io|blocklayer-img|blocklayer-io)\b", "TOOL", text)
    text = re.sub(r"/\S*/TOOL", "TOOL", text)
    text = re.sub(r"^.*ops/sec\)$", "RATE", text, flags=re.M)               # qemu-io timing
    text = re.sub(r"^disk size: .*$", "disk size: X", text, flags=re.M)
    text = re.sub(r'"actual-size": \d+', '"actual-size": X', text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "DATE", text)          # snapshot dates
    text = re.sub(r'"date-(sec|nsec)": \d+', r'"date-\1": X', text)
    return text


def test_qemu_script_runs_unchanged_with_blocklayer(tmp_path: Path) -> None:
    need("qemu-img")
    need("qemu-io")
    theirs = _run(tmp_path / "qemu", "qemu-img", "qemu-io")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ours = _run(tmp_path / "ours", _wrapper(bindir, "blocklayer-img", "blocklayer.tools.img"),
                _wrapper(bindir, "blocklayer-io", "blocklayer.tools.io"))
    assert "Traceback" not in ours
    assert ours == theirs
