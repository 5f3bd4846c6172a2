"""Start-up cost of tool invocations that do little (the lean start-up of issue 5).

    python3 benchmarks/bench_startup.py [--runs 20]

Each command runs ``--runs`` times in a row; the median and the mean wall time are
printed, with ``python -c pass`` as the floor, and whether the command imported numpy
(checked in a separate run that reports ``sys.modules`` at exit).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import ENV, ours

#: runs a tool as ``python -m`` would and says at exit whether numpy was imported
PROBE = ("import atexit, runpy, sys\n"
         "tool = sys.argv[1]\n"
         "sys.argv = [tool] + sys.argv[2:]\n"
         "atexit.register(lambda: sys.stderr.write(f\"numpy={'numpy' in sys.modules}\\n\"))\n"
         "runpy.run_module(f'blocklayer.tools.{tool}', run_name='__main__')\n")


def _images(tmp: str) -> None:
    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, cwd=tmp, stdout=subprocess.DEVNULL)
    run("qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "64M")
    run("qemu-io", "-c", "write -P 1 0 1M", "-c", "write -P 2 10M 64k", "a.qcow2")
    run("qemu-img", "create", "-q", "-f", "qed", "b.qed", "64M")
    run("qemu-io", "-c", "write -P 1 0 1M", "b.qed")
    run("qemu-img", "create", "-q", "-f", "raw", "s.raw", "4M")
    run("qemu-io", "-f", "raw", "-c", "write -P 3 0 1M", "s.raw")


COMMANDS: list[tuple[str, list[str]]] = [
    ("img info a.qcow2", ["img", "info", "a.qcow2"]),
    ("img info b.qed", ["img", "info", "b.qed"]),
    ("io -c 'read 0 4k' a.qcow2", ["io", "-c", "read 0 4k", "a.qcow2"]),
    ("io -c 'write 0 4k' a.qcow2", ["io", "-c", "write 0 4k", "a.qcow2"]),
    ("img convert -O qcow2 (4 MiB raw)", ["img", "convert", "-O", "qcow2", "s.raw", "o.qcow2"]),
    ("img convert -O qcow2 (64 MiB qcow2)", ["img", "convert", "-O", "qcow2", "a.qcow2",
                                             "o2.qcow2"]),
    ("img check a.qcow2", ["img", "check", "a.qcow2"]),
]


def _wall(argv: list[str], cwd: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=ENV, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out


def _imports_numpy(args: list[str], cwd: str) -> bool:
    res = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=ENV,
                         capture_output=True, text=True, check=True)
    return "numpy=True" in res.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        _images(tmp)
        print(f"| {'command':38} | {'median s':>8} | {'mean s':>8} | numpy |")
        print(f"|{'-' * 40}|{'-' * 10}|{'-' * 10}|-------|")
        floor = _wall([sys.executable, "-c", "pass"], tmp, args.runs)
        print(f"| {'python -c pass':38} | {statistics.median(floor):8.3f} | "
              f"{statistics.mean(floor):8.3f} |       |")
        for name, cmd in COMMANDS:
            took = _wall([*ours(cmd[0]), *cmd[1:]], tmp, args.runs)
            np_used = _imports_numpy(cmd, tmp)
            print(f"| {name:38} | {statistics.median(took):8.3f} | "
                  f"{statistics.mean(took):8.3f} | {'yes' if np_used else 'no':5} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
