"""What a buffered copy costs the kernel, with and without allocating ahead.

    python3 benchmarks/bench_write_alloc.py [--gib 4] [--rounds 6]

A plain Python loop (no blocklayer) copies the data of a half-allocated raw image in
2 MiB requests (pread + pwrite) into a new file, at the same offsets or appended (as
the qcow2 driver places new clusters), with and without ``fallocate(KEEP_SIZE)`` of
each request's range before its write; and into the existing copy (overwrite).
``qemu-img convert -f raw -O raw`` of the same image is measured in the same rounds.
Each variant runs in its own process, alternating, after an ``os.sync()``; the table
gives each variant's best and median seconds (the copy loop's own time, start-up
excluded; qemu-img's whole run).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import half_allocated

CHUNK = 2 << 20

_LOOP = r'''
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
src_path, dst_path, gib, place, alloc = sys.argv[1:6]
gib, chunk = int(gib), 2 << 20
src = os.open(src_path, os.O_RDONLY)
flags = os.O_RDWR if place == "overwrite" else os.O_RDWR | os.O_CREAT | os.O_TRUNC
dst = os.open(dst_path, flags, 0o644)
if place == "same":
    os.ftruncate(dst, gib << 30)
buf = bytearray(chunk)
t = time.perf_counter()
pos = 0
for run in range(0, gib * 16, 2):                 # the data: every other 64 MiB
    for off in range(run * (64 << 20), (run + 1) * (64 << 20), chunk):
        os.preadv(src, [buf], off)
        at = pos if place == "append" else off
        if alloc == "fallocate":
            libc.fallocate(dst, 1, at, chunk)     # FALLOC_FL_KEEP_SIZE
        os.pwrite(dst, buf, at)
        pos += chunk
print(time.perf_counter() - t)
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        src, out, existing = (os.path.join(tmp, n) for n in ("half.raw", "out.raw", "old.raw"))
        half_allocated(src, "raw", args.gib)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", src, existing],
                       check=True)
        variants = {
            "same offsets, pwrite": [out, "same", "none"],
            "same offsets, fallocate + pwrite": [out, "same", "fallocate"],
            "appended, pwrite": [out, "append", "none"],
            "appended, fallocate + pwrite": [out, "append", "fallocate"],
            "overwrite, pwrite": [existing, "overwrite", "none"],
            "overwrite, fallocate + pwrite": [existing, "overwrite", "fallocate"],
        }
        times: dict[str, list[float]] = {name: [] for name in [*variants, "qemu-img convert"]}
        for _ in range(args.rounds):
            for name, (dst, place, alloc) in variants.items():
                os.sync()
                if place != "overwrite" and os.path.exists(dst):
                    os.unlink(dst)
                res = subprocess.run([sys.executable, "-c", _LOOP, src, dst, str(args.gib),
                                      place, alloc], check=True, capture_output=True,
                                     text=True)
                times[name].append(float(res.stdout))
            os.sync()
            if os.path.exists(out):
                os.unlink(out)
            t0 = time.perf_counter()
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", src, out],
                           check=True)
            times["qemu-img convert"].append(time.perf_counter() - t0)
    print(f"| {'copy of the data (2 MiB requests)':36} | {'best s':>7} | {'median s':>8} |")
    print(f"|{'-' * 38}|{'-' * 9}|{'-' * 10}|")
    for name, ts in times.items():
        print(f"| {name:36} | {min(ts):7.3f} | {statistics.median(ts):8.3f} |")


if __name__ == "__main__":
    main()
