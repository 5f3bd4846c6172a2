"""SIGKILL test helper shared by the formats: writes a deterministic plan to an image a
few requests at a time, flushing now and then and printing ``F <n>`` once the first n
requests are flushed; the test kills it with SIGKILL at a random point (``kill_at_random``).

Run: crash_writer.py IMAGE FORMAT SEED [--compress]"""
from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLUSTER = 4096
STRIDE = 48 << 10        # one slot per request: requests never overlap
SLOT = 10 << 10          # but a slot spans parts of several clusters
WRITES = 400


def plan(seed: int, size: int, compress: bool = False) -> list[tuple[str, int, int, int]]:
    rng = random.Random(seed)
    slots = list(range(size // STRIDE))
    rng.shuffle(slots)
    out = []
    for i in range(min(WRITES, len(slots))):
        base = slots[i] * STRIDE
        r = rng.random()
        if r < 0.12:
            out.append(("zero", base + CLUSTER, 2 * CLUSTER, 0))
        elif compress and r < 0.22:
            out.append(("compress", base + 3 * CLUSTER, CLUSTER, i % 254 + 1))
        else:
            off = base + rng.randrange(0, SLOT // 2)
            out.append(("write", off, rng.randrange(1, SLOT - (off - base)), i % 254 + 1))
    return out


def kill_at_random(img: Path, fmt: str, seed: int, compress: bool = False) -> int:
    """Run the writer and SIGKILL it after a random number of flushes (and a random
    moment inside the next batch); the number of requests flushed before the kill."""
    rng = random.Random(seed)
    stop_after = rng.randrange(1, 25)
    argv = [sys.executable, __file__, str(img), fmt, str(seed)] + (["--compress"] if compress else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    flushed = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("F"):
                flushed = int(line.split()[1])
                if flushed // 12 >= stop_after:
                    break
            elif line.startswith("DONE"):
                break
        time.sleep(rng.random() * 0.03)
    finally:
        proc.kill()
        proc.wait()
    return flushed


async def main(path: str, fmt: str, seed: int, compress: bool) -> None:
    from blocklayer.core.driver import ReqFlag
    from blocklayer.core.open import open_image
    node = await open_image(path, fmt=fmt)
    ops = plan(seed, node.total_bytes, compress)

    def one(kind: str, off: int, n: int, pat: int):  # type: ignore[no-untyped-def]
        if kind == "zero":
            return node.write_zeroes(off, n)
        flags = ReqFlag.COMPRESSED if kind == "compress" else ReqFlag.NONE
        return node.write(off, bytes([pat]) * n, flags)

    for start in range(0, len(ops), 4):
        batch = ops[start:start + 4]
        await asyncio.gather(*(one(*op) for op in batch))
        if start % 12 == 8:
            await node.flush()
            print("F", start + len(batch), flush=True)
    print("DONE", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), "--compress" in sys.argv))
