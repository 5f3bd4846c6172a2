"""The throttle filter in process: a group's members are served in turn, and a bps
limit holds over a short run (the rate is printed; only the upper bound, which load
cannot break, is asserted)."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from blocklayer.core.node import BlockGraph
from blocklayer.core.open import open_image
from blocklayer.core.throttle import config_from_limits
from blocklayer.filters.throttle import GROUPS, ThrottleGroup


async def _node(graph: BlockGraph, group: str, name: str) -> Any:
    return await open_image(options={"driver": "throttle", "throttle-group": group,
                                     "file.driver": "null-co", "file.size": 1 << 30},
                            graph=graph, node_name=name)


def test_round_robin() -> None:
    async def main() -> list[str]:
        GROUPS["rr"] = ThrottleGroup("rr", config_from_limits({"iops-total": 40}))
        graph = BlockGraph()
        a, b = await _node(graph, "rr", "a"), await _node(graph, "rr", "b")
        order: list[str] = []

        async def io(node: Any, tag: str) -> None:
            await node.write(0, b"x" * 512)
            order.append(tag)
        try:
            await asyncio.gather(*[io(a, "a") for _ in range(8)],
                                 *[io(b, "b") for _ in range(8)])
        finally:
            await a.close()
            await b.close()
            del GROUPS["rr"]
        return order
    order = asyncio.run(main())
    # the first of a go at once (the bucket); from b's first on, the nodes take
    # turns while both wait
    served = "".join(order)
    after = served[served.index("b"):]
    assert served.index("b") < served.rindex("a"), served       # not first come first served
    assert "aa" not in after and after.rstrip("b").count("b") == after.count("a"), served


def test_bps_limit_holds() -> None:
    limit, size, seconds = 4 << 20, 65536, 1.5

    async def main() -> tuple[int, float]:
        GROUPS["bw"] = ThrottleGroup("bw", config_from_limits({"bps-write": limit}))
        node = await _node(BlockGraph(), "bw", "t")
        sent, start = 0, time.monotonic()
        try:
            while time.monotonic() - start < seconds:
                await node.write(0, b"\0" * size)
                sent += size
        finally:
            await node.close()
            del GROUPS["bw"]
        return sent, time.monotonic() - start
    sent, elapsed = asyncio.run(main())
    rate = sent / elapsed
    print(f"bps-write {limit}: {rate:.0f} B/s over {elapsed:.2f} s ({rate / limit:.3f}x)")
    assert sent <= limit * elapsed + limit / 10 + size      # never faster than the limit
    assert sent >= size                                     # and it moves
