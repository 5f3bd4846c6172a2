"""qcow2 through blocklayer vs QEMU in the same run (issue 3's benchmarks).

    python3 benchmarks/bench_qcow2.py [--gib 4]

1. sequential write then read of the whole image through blocklayer-io vs qemu-io
   (64 MiB commands);
2. random 4 KiB reads and writes on a half-allocated image: our API vs ``qemu-img bench``
   (which has no random mode: it steps with a wide odd stride);
3. ``check`` of that image: blocklayer-img vs qemu-img.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time

from common import ENV, half_allocated, ours, table, timed  # noqa: F401

import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from blocklayer.core.open import open_image  # noqa: E402


async def api_random(path: str, count: int, write: bool) -> float:
    rng = random.Random(3)
    start = time.perf_counter()
    node = await open_image(path, fmt="qcow2", read_only=not write)
    blocks = node.total_bytes // 4096
    buf = b"\x5a" * 4096
    for _ in range(count):
        off = rng.randrange(blocks) * 4096
        if write:
            await node.write(off, buf)
        else:
            await node.read(off, 4096)
    await node.close()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=int, default=4)
    ap.add_argument("--random-count", type=int, default=20000)
    args = ap.parse_args()
    size = args.gib << 30
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        cmds_w = []
        cmds_r = []
        for off in range(0, size, 64 << 20):
            cmds_w += ["-c", f"write -P 0x5a {off} 64M"]
            cmds_r += ["-c", f"read {off} 64M"]
        for who, argv in (("qemu", ["qemu-io"]), ("ours", ours("io"))):
            img = os.path.join(tmp, f"{who}.qcow2")
            timed(["qemu-img", "create", "-q", "-f", "qcow2", img, str(size)])
            w = timed([*argv, "-f", "qcow2", *cmds_w, img])
            r = timed([*argv, "-f", "qcow2", *cmds_r, img])
            if who == "qemu":
                qw, qr = w, r
            else:
                rows.append((f"seq write {args.gib} GiB (io)", w, qw))
                rows.append((f"seq read {args.gib} GiB (io)", r, qr))
            os.unlink(img)
        half = os.path.join(tmp, "half.qcow2")
        half_allocated(half, "qcow2", args.gib)
        work = os.path.join(tmp, "work.qcow2")
        n = str(args.random_count)
        stride = str(7 * 4096 * 1021)
        shutil.copy(half, work)
        ours_r = asyncio.run(api_random(work, args.random_count, False))
        qemu_r = timed(["qemu-img", "bench", "-f", "qcow2", "-c", n, "-d", "1", "-s", "4k",
                        "-S", stride, work])
        rows.append(("random read 4 KiB qd1 (half allocated)", ours_r, qemu_r))
        shutil.copy(half, work)
        ours_w = asyncio.run(api_random(work, args.random_count, True))
        shutil.copy(half, work)
        qemu_w = timed(["qemu-img", "bench", "-w", "-f", "qcow2", "-c", n, "-d", "1", "-s", "4k",
                        "-S", stride, work])
        rows.append(("random write 4 KiB qd1 (half allocated)", ours_w, qemu_w))
        rows.append(("check (half allocated)", timed([*ours("img"), "check", half]),
                     timed(["qemu-img", "check", half])))
    table(rows)


if __name__ == "__main__":
    main()
