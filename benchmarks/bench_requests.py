"""Per-request cost of the qcow2 driver, in process (no tool start-up, no QEMU).

    python3 benchmarks/bench_requests.py [--count 20000] [--repeat 3]

On a 1 GiB image whose every other 64 MiB is allocated: random 4 KiB reads, random
4 KiB rewrites of allocated clusters, random 4 KiB writes that allocate (with
copy-on-write of the rest of the cluster), 64 KiB write-zeroes and discards, and block
status of small (64 KiB) and long (whole L2 table) ranges.  Each line is the best of
``--repeat`` runs, in microseconds per request.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

from common import half_allocated

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from blocklayer.core.open import open_image  # noqa: E402

GIB = 1 << 30
HALF = 64 << 20


def _offsets(count: int, allocated: bool, align: int) -> list[int]:
    """Random ``align``-aligned offsets in the allocated (or the unallocated) halves."""
    rng = random.Random(3)
    out = []
    while len(out) < count:
        off = rng.randrange(GIB // align) * align
        if ((off // HALF) % 2 == 0) == allocated:
            out.append(off)
    return out


async def _timed(path: str, count: int, read_only: bool,
                 op: Callable[..., Awaitable[object]], offsets: list[int]) -> float:
    node = await open_image(path, fmt="qcow2", read_only=read_only,
                            options={"discard": "unmap"})
    start = time.perf_counter()
    for off in offsets:
        await op(node, off)
    took = time.perf_counter() - start
    await node.close()
    return took / count * 1e6


def _cases(count: int) -> list[tuple[str, bool, Callable[..., Awaitable[object]], list[int]]]:
    buf = b"\x5a" * 4096
    return [
        ("read 4 KiB, allocated", True, lambda n, o: n.read(o, 4096),
         _offsets(count, True, 4096)),
        ("read 4 KiB, unallocated", True, lambda n, o: n.read(o, 4096),
         _offsets(count, False, 4096)),
        ("write 4 KiB, allocated (in place)", False, lambda n, o: n.write(o, buf),
         _offsets(count, True, 4096)),
        ("write 4 KiB, allocating (COW)", False, lambda n, o: n.write(o, buf),
         _offsets(count, False, 4096)),
        ("write zeroes 64 KiB, allocated", False, lambda n, o: n.write_zeroes(o, 65536),
         _offsets(count, True, 65536)),
        ("discard 64 KiB, allocated", False, lambda n, o: n.discard(o, 65536),
         _offsets(count, True, 65536)),
        ("block status 64 KiB", True, lambda n, o: n.block_status(o, 65536),
         _offsets(count, True, 65536)),
        ("block status 512 MiB (one L2 table)", True,
         lambda n, o: n.block_status(o, (512 << 20) - o % (512 << 20)),
         _offsets(count // 10, True, 65536)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        half = os.path.join(tmp, "half.qcow2")
        work = os.path.join(tmp, "work.qcow2")
        half_allocated(half, "qcow2", 1)
        for name, read_only, op, offsets in _cases(args.count):
            best = float("inf")
            for _ in range(args.repeat):
                shutil.copy(half, work)
                best = min(best, asyncio.run(_timed(work, len(offsets), read_only, op,
                                                    offsets)))
            print(f"{name:40} {best:8.1f} us")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
