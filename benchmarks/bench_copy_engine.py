"""The copy engine against the code before it (issue 10): the same commands run with
this checkout and with another one (``--base DIR``, e.g. ``git archive 84e0250 | tar -x
-C DIR``), alternately, ``--rounds`` times.

    python3 benchmarks/bench_copy_engine.py --base DIR [--gib 1] [--rounds 5]

Rows: convert raw->qcow2, qcow2->raw and -c zstd qcow2->qcow2 of a half-allocated image,
and commit of an overlay holding every other 64 MiB of it into a raw base.  "ours s" is
this checkout's median, "qemu s" the base's (the column names are the table's), "ratio"
the median per-round ratio (this / base), "best" the ratio of the best times; a second
table gives the same for CPU time (user + system of the process), which moves far less
than wall time on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Callable

from common import half_allocated, ours, table, timed


def cpu_timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = timed(argv)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def alternate(rows: list, cpu_rows: list, name: str, argvs: tuple[list[str], list[str]],
              rounds: int, prepare: Callable[[], None]) -> None:
    """Both sides alternately; a wall-clock row and a CPU-time row (CPU time moves far
    less than wall time when other work shares the machine)."""
    times: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for side, argv in enumerate(argvs):
            prepare()
            wall, used = cpu_timed(argv)
            times[side].append(wall)
            cpu[side].append(used)
    for out, t in ((rows, times), (cpu_rows, cpu)):
        ratios = [a / b for a, b in zip(*t)]
        out.append((name, statistics.median(t[0]), statistics.median(t[1]),
                    statistics.median(ratios), min(t[0]) / min(t[1])))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="checkout of the code to compare with")
    ap.add_argument("--gib", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    base = ["env", f"PYTHONPATH={os.path.abspath(args.base)}", sys.executable, "-m",
            "blocklayer.tools.img"]
    rows: list = []
    cpu_rows: list = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        p = lambda name: os.path.join(tmp, name)  # noqa: E731

        def rm(*names: str) -> Callable[[], None]:
            return lambda: [os.unlink(p(n)) for n in names if os.path.exists(p(n))]
        half_allocated(p("half.raw"), "raw", args.gib)
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", p("half.raw"), p("half.qcow2")],
                       check=True)
        g = args.gib
        for name, cmd, out in (
                (f"convert raw->qcow2 ({g} GiB, half)",
                 ["convert", "-f", "raw", "-O", "qcow2", p("half.raw"), p("o.qcow2")], "o.qcow2"),
                (f"convert qcow2->raw ({g} GiB, half)",
                 ["convert", "-f", "qcow2", "-O", "raw", p("half.qcow2"), p("o.raw")], "o.raw"),
                (f"convert -c zstd qcow2->qcow2 ({g} GiB)",
                 ["convert", "-c", "-o", "compression_type=zstd", "-f", "qcow2", "-O", "qcow2",
                  p("half.qcow2"), p("o.qcow2")], "o.qcow2")):
            alternate(rows, cpu_rows, name, ([*ours("img"), *cmd], [*base, *cmd]), args.rounds, rm(out))
        # commit: an overlay with the data over an empty raw base, fresh for each run
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", p("empty.raw"), f"{g}G"],
                       check=True)
        shutil.copyfile(p("empty.raw"), p("b.raw"))
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.raw", "-F", "raw",
                        p("t0.qcow2")], check=True)
        cmds = []
        for i in range(0, g * 16, 2):
            cmds += ["-c", f"write -P {i % 250 + 1} {i * 64}M 64M"]
        subprocess.run(["qemu-io", "-f", "qcow2", *cmds, p("t0.qcow2")], check=True,
                       stdout=subprocess.DEVNULL)

        def fresh() -> None:
            shutil.copyfile(p("empty.raw"), p("b.raw"))
            shutil.copyfile(p("t0.qcow2"), p("t.qcow2"))
        cmd = ["commit", "-q", "-d", p("t.qcow2")]
        alternate(rows, cpu_rows, f"commit qcow2 overlay -> raw ({g} GiB, half)",
                  ([*ours("img"), *cmd], [*base, *cmd]), args.rounds, fresh)
    print("wall clock (ours s = this checkout, qemu s = the base checkout)")
    table(rows)
    print("\nCPU time, user + system (same columns)")
    table(cpu_rows)


if __name__ == "__main__":
    main()
