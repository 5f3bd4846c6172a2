"""Raw-file I/O through the blocklayer API against ``qemu-img bench`` in the same run.

    python3 benchmarks/bench_raw.py [--size-mib 1024] [--count 2000]

Prints seconds for each side and the ratio ours/qemu (lower is better; 1.0 = same).
The image lives in the page cache (it is read once before timing); each figure is the
best of two runs, so neither side pays for a cold cache or a cold heap.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blocklayer.core.open import open_image  # noqa: E402


def best_of_two(fn, *args):  # type: ignore[no-untyped-def]
    return min(fn(*args) for _ in range(2))


def qemu_bench(path: str, *args: str) -> float:
    os.sync()
    start = time.perf_counter()
    subprocess.run(["qemu-img", "bench", "-f", "raw", "-t", "writeback", *args, path],
                   check=True, capture_output=True)
    return time.perf_counter() - start


async def ours_sequential(path: str, count: int, size: int, write: bool, depth: int) -> float:
    os.sync()
    start = time.perf_counter()
    node = await open_image(path, fmt="raw")
    total = node.total_bytes
    buf = b"\xa5" * size
    sem = asyncio.Semaphore(depth)

    async def one(i: int) -> None:
        async with sem:
            off = (i * size) % total
            if write:
                await node.write(off, buf)
            else:
                await node.read(off, size)
    await asyncio.gather(*(one(i) for i in range(count)))
    if write:
        await node.flush()
    await node.close()
    return time.perf_counter() - start


async def ours_random(path: str, count: int, depth: int) -> float:
    rng = random.Random(1)
    os.sync()
    start = time.perf_counter()
    node = await open_image(path, fmt="raw", read_only=True)
    blocks = node.total_bytes // 4096
    offsets = [rng.randrange(blocks) * 4096 for _ in range(count)]
    it = iter(offsets)

    async def worker() -> None:
        for off in it:
            await node.read(off, 4096)
    await asyncio.gather(*(worker() for _ in range(depth)))
    await node.close()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--count", type=int, default=4000)
    ap.add_argument("--random-count", type=int, default=100000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        path = os.path.join(tmp, "bench.raw")
        with open(path, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(args.size_mib):
                f.write(chunk)
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
        rows = []
        n, mib = args.count, 1 << 20
        rows.append(("seq read 1 MiB, qd1", best_of_two(lambda: asyncio.run(ours_sequential(path, n, mib, False, 1))),
                     best_of_two(qemu_bench, path, "-c", str(n), "-d", "1", "-s", "1M")))
        rows.append(("seq write 1 MiB, qd1", best_of_two(lambda: asyncio.run(ours_sequential(path, n, mib, True, 1))),
                     best_of_two(qemu_bench, path, "-w", "-c", str(n), "-d", "1", "-s", "1M")))
        rows.append(("seq read 1 MiB, qd8", best_of_two(lambda: asyncio.run(ours_sequential(path, n, mib, False, 8))),
                     best_of_two(qemu_bench, path, "-c", str(n), "-d", "8", "-s", "1M")))
        rc = args.random_count
        step = str(7 * 4096 * 1021)      # qemu-img bench has no random mode: a wide odd stride
        for depth in (1, 32):
            rows.append((f"random read 4 KiB, qd{depth}", best_of_two(lambda: asyncio.run(ours_random(path, rc, depth))),
                         best_of_two(qemu_bench, path, "-c", str(rc), "-d", str(depth), "-s", "4k",
                                     "-S", step)))
    print(f"{'benchmark':28} {'ours s':>9} {'qemu s':>9} {'ratio':>7}")
    for name, ours, qemu in rows:
        print(f"{name:28} {ours:9.3f} {qemu:9.3f} {ours / qemu:7.2f}")


if __name__ == "__main__":
    main()
