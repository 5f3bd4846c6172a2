"""Images that look like real ones (issue 13): half of the clusters allocated at random.

    python3 benchmarks/bench_fragmented.py [--gib 4] [--rounds 3] [--runs 64k,4k]
                                           [--only convert-raw-qcow2,...]

``64k``: a raw image of ``--gib`` GiB with half of its 64 KiB clusters written at random
(fixed seed, incompressible data); ``4k``: the same with 4 KiB runs (what a guest on a
512-byte-cluster-like file system leaves).  From each, a qcow2 (made by qemu-img,
untimed) is the source of the qcow2 rows.  Each operation runs ours and qemu-img's
alternately ``--rounds`` times; the table gives the median wall time of each, the
median of the per-round wall ratios, the ratio of the best walls, and the median CPU
(user + system) of each with its ratio.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile

from common import ours, timed_cpu

SEED = 13


def fragmented(path: str, gib: int, run: int) -> None:
    """Write half of the ``run``-byte pieces of a sparse ``gib`` GiB file at random."""
    rng = random.Random(SEED)
    noise = rng.randbytes(8 << 20)
    size = gib << 30
    count = size // run
    chosen = sorted(rng.sample(range(count), count // 2))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        view = memoryview(noise)
        for k, i in enumerate(chosen):
            at = (k * 7919 * 512) % (len(noise) - run)
            os.pwrite(fd, view[at:at + run], i * run)
    finally:
        os.close(fd)


def operations(d: str, name: str) -> list[tuple[str, list[str], list[str], str | None]]:
    """(row, our argv after the tool, qemu-img argv after qemu-img, output to remove)."""
    raw, q2 = f"{d}/{name}.raw", f"{d}/{name}.qcow2"
    out = f"{d}/out"
    return [
        ("convert raw->qcow2", ["convert", "-f", "raw", "-O", "qcow2", raw, out],
         ["convert", "-f", "raw", "-O", "qcow2", raw, out], out),
        ("convert qcow2->raw", ["convert", "-f", "qcow2", "-O", "raw", q2, out],
         ["convert", "-f", "qcow2", "-O", "raw", q2, out], out),
        ("convert qcow2->qcow2", ["convert", "-f", "qcow2", "-O", "qcow2", q2, out],
         ["convert", "-f", "qcow2", "-O", "qcow2", q2, out], out),
        ("convert raw->qed", ["convert", "-f", "raw", "-O", "qed", raw, out],
         ["convert", "-f", "raw", "-O", "qed", raw, out], out),
        ("map qcow2", ["map", "--output=json", "-f", "qcow2", q2],
         ["map", "--output=json", "-f", "qcow2", q2], None),
        ("map raw", ["map", "--output=json", "-f", "raw", raw],
         ["map", "--output=json", "-f", "raw", raw], None),
        ("check qcow2", ["check", "-f", "qcow2", q2], ["check", "-f", "qcow2", q2], None),
        ("compare raw qcow2", ["compare", "-f", "raw", "-F", "qcow2", raw, q2],
         ["compare", "-f", "raw", "-F", "qcow2", raw, q2], None),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", default="64k,4k")
    ap.add_argument("--only", default="", help="comma list of row-name prefixes")
    args = ap.parse_args()
    only = [o for o in args.only.split(",") if o]
    print(f"| {'benchmark':40} | {'ours s':>6} | {'qemu s':>6} | {'ratio':>5} | {'best':>5} "
          f"| {'ours cpu':>8} | {'qemu cpu':>8} | {'cpu x':>5} |")
    print(f"|{'-' * 42}|{'-' * 8}|{'-' * 8}|{'-' * 7}|{'-' * 7}|{'-' * 10}|{'-' * 10}|{'-' * 7}|")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        for run in args.runs.split(","):
            nbytes = int(run.rstrip("k")) << 10
            fragmented(f"{d}/{run}.raw", args.gib, nbytes)
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                            f"{d}/{run}.raw", f"{d}/{run}.qcow2"], check=True)
            for row, mine, theirs, out in operations(d, run):
                if only and not any(row.startswith(o) for o in only):
                    continue
                walls: tuple[list[float], list[float]] = ([], [])
                cpus: tuple[list[float], list[float]] = ([], [])
                for _ in range(args.rounds):
                    for side, argv in enumerate(([*ours("img"), *mine], ["qemu-img", *theirs])):
                        if out and os.path.exists(out):
                            os.unlink(out)
                        wall, cpu = timed_cpu(argv)
                        walls[side].append(wall)
                        cpus[side].append(cpu)
                ratio = statistics.median(a / b for a, b in zip(*walls))
                best = min(walls[0]) / min(walls[1])
                oc, qc = statistics.median(cpus[0]), statistics.median(cpus[1])
                name = f"{row} ({args.gib} GiB, {run} runs)"
                print(f"| {name:40} | {statistics.median(walls[0]):6.2f} | "
                      f"{statistics.median(walls[1]):6.2f} | {ratio:5.2f} | {best:5.2f} | "
                      f"{oc:8.2f} | {qc:8.2f} | {oc / max(qc, 1e-3):5.2f} |")
                sys.stdout.flush()
            for f in (f"{d}/{run}.raw", f"{d}/{run}.qcow2", f"{d}/out"):
                if os.path.exists(f):
                    os.unlink(f)


if __name__ == "__main__":
    main()
