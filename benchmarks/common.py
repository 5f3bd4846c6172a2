"""Helpers shared by the benchmarks: timing a command, ratios, a results table."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def ours(tool: str) -> list[str]:
    return [sys.executable, "-m", f"blocklayer.tools.{tool}"]


def timed(argv: list[str], **kw: object) -> float:
    """Seconds one command takes (it must succeed).  Dirty pages left by whatever ran
    before are written back first (not timed), so neither side pays for the other."""
    os.sync()
    start = time.perf_counter()
    res = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, **kw)
    took = time.perf_counter() - start
    if res.returncode not in (0,):
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.decode()[-500:]}")
    return took


def interleaved(ours_argv: list[str], qemu_argv: list[str], rounds: int,
                clean: tuple[str, ...] = ()) -> tuple[float, float, float, float]:
    """Run ours and QEMU's command alternately ``rounds`` times (removing ``clean``
    before each run, untimed) and return (median ours, median QEMU, median of the
    per-round ratios, ratio of the best times).  Single runs that write gigabytes vary
    by 2-5x on this VM (the host's memory and disk: system time of the same copy
    jumps from 0.7 to 2-9 s), so one run of each proves little; the best of several is
    the cost without that noise."""
    mine, theirs, ratios = [], [], []
    for _ in range(rounds):
        pair = []
        for argv in (ours_argv, qemu_argv):
            for path in clean:
                if os.path.exists(path):
                    os.unlink(path)
            pair.append(timed(argv))
        mine.append(pair[0])
        theirs.append(pair[1])
        ratios.append(pair[0] / pair[1])
    return (statistics.median(mine), statistics.median(theirs), statistics.median(ratios),
            min(mine) / min(theirs))


def table(rows: list[tuple]) -> None:
    """Rows of (name, ours, qemu), or (name, ours, qemu, ratio, best ratio) as
    :func:`interleaved` measures them."""
    print(f"| {'benchmark':44} | {'ours s':>8} | {'qemu s':>8} | {'ratio':>6} | {'best':>6} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 8}|")
    for name, mine, theirs, *extra in rows:
        r, best = extra if extra else (mine / theirs, mine / theirs)
        print(f"| {name:44} | {mine:8.2f} | {theirs:8.2f} | {r:6.2f} | {best:6.2f} |")
    sys.stdout.flush()


def half_allocated(path: str, fmt: str, size_gib: int, extra: list[str] | None = None) -> None:
    """An image of ``size_gib`` GiB whose every other 64 MiB is written with data."""
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *(extra or []), path,
                    f"{size_gib}G"], check=True)
    cmds = []
    for i in range(0, size_gib * 16, 2):
        cmds += ["-c", f"write -P {i % 250 + 1} {i * 64}M 64M"]
    subprocess.run(["qemu-io", "-f", fmt, *cmds, path], check=True, stdout=subprocess.DEVNULL)


def timed_cpu(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one command, which must succeed;
    dirty pages are written back first (not timed), as :func:`timed`."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):      # compare: 1 is "images differ"
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode()[-500:]}")
    return took, usage.ru_utime + usage.ru_stime
