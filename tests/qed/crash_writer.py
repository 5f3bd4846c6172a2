"""Crash-test helper: writes a deterministic plan to a QED image, a few requests at a
time, flushing now and then and printing ``F <n>`` once the first n writes are flushed.
The test kills it with SIGKILL at a random point.  Run: crash_writer.py IMAGE SEED"""
from __future__ import annotations

import asyncio
import random
import sys

CLUSTER = 4096
SIZE = 16 << 20
STRIDE = 40 << 10        # one slot per write: writes never overlap
SLOT = 6 << 10           # but a slot spans parts of two clusters
WRITES = 400


def plan(seed: int) -> list[tuple[str, int, int, int]]:
    rng = random.Random(seed)
    slots = list(range(SIZE // STRIDE))
    rng.shuffle(slots)
    out = []
    for i in range(WRITES):
        base = slots[i] * STRIDE + rng.randrange(0, 2 * CLUSTER)
        if rng.random() < 0.15:
            start = -(-base // CLUSTER) * CLUSTER
            out.append(("zero", start, CLUSTER, 0))
        else:
            off = base + rng.randrange(0, SLOT // 2)
            out.append(("write", off, rng.randrange(1, SLOT - (off - base)), i % 254 + 1))
    return out


async def main(path: str, seed: int) -> None:
    from blocklayer.open import open_image
    node = await open_image(path, fmt="qed")
    ops = plan(seed)
    for start in range(0, len(ops), 4):
        batch = ops[start:start + 4]
        await asyncio.gather(*(node.write(o, bytes([p]) * n) if k == "write"
                               else node.write_zeroes(o, n) for k, o, n, p in batch))
        if start % 12 == 8:
            await node.flush()
            print("F", start + len(batch), flush=True)
    print("DONE", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
