"""``commit``: write the data of an overlay (and the layers between) into its base, with
the copy engine and the plan of what is allocated above the base."""
from __future__ import annotations

import asyncio

from blocklayer.core.errors import BlockError, NotSupported
from blocklayer.jobs.copy import CopyEngine
from blocklayer.jobs.plans import allocated_above
from blocklayer.jobs.ratelimit import RateLimit

from .args import UsageError, parse
from .common import close_all, new_graph, parse_rate, progress_from


def main(argv: list[str]) -> int:
    p = parse(argv, "f:ht:b:dpqr:", ["object=", "image-opts", "json-progress"])
    if len(p.args) != 1:
        raise UsageError("Expecting one image file name")
    rate = parse_rate(p.last("-r"))
    return asyncio.run(run(p, rate))


async def run(p, rate: int) -> int:  # type: ignore[no-untyped-def]
    from .chain import open_with_writable_base
    graph = new_graph()
    top, base = await open_with_writable_base(graph, p.args[0], p.last("-f"),
                                              p.has("--image-opts"), p.last("-b"), p.last("-t"))
    progress = progress_from(p)
    try:
        size = top.total_bytes
        if base.total_bytes < size:
            await base.truncate(size)
        engine = CopyEngine(top, base, size, rate=RateLimit(rate) if rate else None,
                            progress=progress.fraction)
        await engine.run(allocated_above(top, base, 0, size))
        await base.flush()
        if not p.has("-d") and not p.has("-b"):
            try:
                await top.driver.make_empty()
            except NotSupported:
                pass            # as QEMU: a format that can't be emptied keeps its data
            except BlockError as exc:
                raise BlockError(f"Image committed, but could not empty the image: "
                                 f"{exc.message}", exc.errno) from None
            await top.flush()
        progress.end()
    finally:
        await close_all(top, base)
    if not p.has("-q"):
        print("Image committed.")
    return 0
