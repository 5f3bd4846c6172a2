"""SIGKILL test helper: writes a deterministic plan to a qcow2 image a few requests at
a time (allocating writes, zeroes, compressed writes), flushing now and then and
printing ``F <n>`` once the first n requests are flushed.
Run: crash_writer.py IMAGE SEED"""
from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CLUSTER = 4096
SIZE = 32 << 20
STRIDE = 48 << 10        # one slot per request: requests never overlap
SLOT = 10 << 10          # but a slot spans parts of several clusters
WRITES = 480


def plan(seed: int) -> list[tuple[str, int, int, int]]:
    rng = random.Random(seed)
    slots = list(range(SIZE // STRIDE))
    rng.shuffle(slots)
    out = []
    for i in range(WRITES):
        base = slots[i] * STRIDE
        r = rng.random()
        if r < 0.1:
            out.append(("zero", base + CLUSTER, 2 * CLUSTER, 0))
        elif r < 0.2:
            out.append(("compress", base + 3 * CLUSTER, CLUSTER, i % 254 + 1))
        else:
            off = base + rng.randrange(0, SLOT // 2)
            out.append(("write", off, rng.randrange(1, SLOT - (off - base)), i % 254 + 1))
    return out


async def main(path: str, seed: int) -> None:
    from blocklayer.driver import ReqFlag
    from blocklayer.open import open_image
    node = await open_image(path, fmt="qcow2")
    ops = plan(seed)

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
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
