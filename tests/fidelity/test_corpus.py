"""Item 8 of issue 11: a corpus of short qemu-img / qemu-io scripts, each run with QEMU's
tools and with ours as ``qemu-img`` / ``qemu-io`` first on PATH; the outputs (stdout and
stderr together, then the exit status) must be the same after filtering only paths and
timings.  A script that shows a gap not yet closed is in ``GAPS`` with the behaviour and
its item of issue 11: strict xfail, so a fix flips it."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ..conftest import need
from .helpers import bindir, environ, normalise

SCRIPTS = sorted((Path(__file__).parent / "scripts").glob("*.sh"))

GAPS: dict[str, str] = {
    "blkdebug-config": "blkdebug events fired by formats (read_aio for guest data only), "
                       "issue 11 item 3",
    "convert-progress": "convert's sizing pass and QEMU's progress steps, issue 11 item 8",
    "convert-progress-sparse": "convert's sizing pass and QEMU's progress steps, "
                               "issue 11 item 8",
    "img-trace-opt": "-T trace event patterns and their warning, not in issue 11",
    "io-reopen-o": "reopen -o applying qcow2's run-time options, issue 11 item 12",
    "resize-backing-longer-v2": "growing over a longer backing file: v2 images cannot "
                                "zero ('Failed to zero out new clusters'), issue 11 item 14",
    "corrupt-twice": "after a fatal corruption QEMU drops the driver (ENOMEDIUM), "
                     "issue 11 item 16",
}


def run_script(script: Path, work: Path, path_first: Path | None) -> str:
    work.mkdir()
    res = subprocess.run(["bash", str(script)], cwd=work, env=environ(path_first),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=300)
    return normalise(f"{res.stdout}--exit {res.returncode}\n", work)


def _param(script: Path) -> object:
    reason = GAPS.get(script.stem)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(script, id=script.stem, marks=marks)


@pytest.mark.parametrize("script", [_param(s) for s in SCRIPTS])
def test_script_as_qemu(tmp_path: Path, script: Path) -> None:
    need("qemu-img")
    need("qemu-io")
    theirs = run_script(script, tmp_path / "qemu", None)
    ours = run_script(script, tmp_path / "ours", bindir(tmp_path))
    assert "Traceback" not in ours
    assert ours == theirs


def test_corpus_is_large_enough() -> None:
    assert len(SCRIPTS) >= 100
