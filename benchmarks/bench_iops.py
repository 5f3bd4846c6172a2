"""4 KiB requests per second through the request path, in process, beside
``qemu-img bench`` on the same files in the same run (issue 13).

    python3 benchmarks/bench_iops.py [--count 40000] [--write-count 10000] [--rounds 3]
                                     [--mib 256] [--only raw,qcow2]

Both files (raw and qcow2, fully allocated, ``--mib`` MiB) sit in the page cache.  For
each of read/write at queue depth 1 and 32 our side opens the image with
``open_image`` and runs ``--count`` requests from ``depth`` tasks, at the offsets
``qemu-img bench`` uses (request i at i * 4 KiB: it has no random mode); QEMU's side
runs ``qemu-img bench -c count -d depth -s 4k -t writeback -i threads``.  Rounds alternate; the median and the best requests/s of each
side are printed.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from blocklayer.core.open import open_image

BS = 4096


async def _ours(path: str, fmt: str, write: bool, depth: int, count: int,
                size: int) -> float:
    node = await open_image(path, fmt=fmt, read_only=not write)
    # as ``qemu-img bench`` issues them: request i at i * 4 KiB (wrapping at the end)
    offsets = [i * BS % size for i in range(count)]
    buf = os.urandom(BS)
    per = count // depth

    async def worker(i: int) -> None:
        mine = offsets[i::depth][:per]      # interleaved, as one queue of ``depth``
        if write:
            w = node.write
            for off in mine:
                await w(off, buf)
        else:
            r = node.read
            for off in mine:
                await r(off, BS)

    start = time.perf_counter()
    if depth == 1:
        await worker(0)
    else:
        await asyncio.gather(*(worker(i) for i in range(depth)))
    took = time.perf_counter() - start
    await node.close()
    return per * depth / took


def _qemu(path: str, fmt: str, write: bool, depth: int, count: int) -> float:
    argv = ["qemu-img", "bench", "-f", fmt, "-c", str(count), "-d", str(depth), "-s", "4k",
            "-t", "writeback", "-i", "threads", *(["-w"] if write else []), path]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    m = re.search(r"Run completed in ([0-9.]+) seconds", out)
    assert m, out
    return count / float(m.group(1))


def _image(tmp: str, fmt: str, mib: int) -> str:
    path = os.path.join(tmp, f"img.{fmt}")
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, path, f"{mib}M"], check=True)
    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P 7 0 {mib}M", path], check=True,
                   stdout=subprocess.DEVNULL)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=40000)
    ap.add_argument("--write-count", type=int, default=10000,
                    help="requests per write run (writes cost the kernel ~100 us here)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--only", default="", help="comma list of fmt names to run")
    args = ap.parse_args()
    size = args.mib << 20
    fmts = [f for f in ("raw", "qcow2") if not args.only or f in args.only.split(",")]
    print(f"| {'4 KiB requests/s':28} | {'ours med':>9} | {'ours best':>9} | "
          f"{'qemu med':>9} | {'qemu best':>9} | {'ratio':>5} |")
    print(f"|{'-' * 30}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 7}|")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        for fmt in fmts:
            path = _image(tmp, fmt, args.mib)
            for write in (False, True):
                for depth in (1, 32):
                    mine, theirs = [], []
                    count = args.write_count if write else args.count
                    for _ in range(args.rounds):
                        mine.append(asyncio.run(_ours(path, fmt, write, depth, count, size)))
                        theirs.append(_qemu(path, fmt, write, depth, count))
                    name = f"{fmt} {'write' if write else 'read'} QD{depth}"
                    om, qm = statistics.median(mine), statistics.median(theirs)
                    print(f"| {name:28} | {om:9.0f} | {max(mine):9.0f} | {qm:9.0f} | "
                          f"{max(theirs):9.0f} | {om / qm:5.2f} |")
                    sys.stdout.flush()


if __name__ == "__main__":
    main()
