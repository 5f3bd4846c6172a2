"""``commit``: write the data of an overlay (and the layers between) into its base."""
from __future__ import annotations

import asyncio
import time

from blocklayer.core.errors import BlockError, NotSupported

from .args import UsageError, parse
from .common import close_all, new_graph, parse_rate, progress_from

CHUNK = 2 << 20


def main(argv: list[str]) -> int:
    p = parse(argv, "f:ht:b:dpqr:", ["object=", "image-opts", "json-progress"])
    if len(p.args) != 1:
        raise UsageError("Expecting one image file name")
    rate = parse_rate(p.last("-r"))
    return asyncio.run(run(p, rate))


async def run(p, rate: int) -> int:  # type: ignore[no-untyped-def]
    from blocklayer.core.driver import ReqFlag
    from .chain import open_with_writable_base
    graph = new_graph()
    top, base = await open_with_writable_base(graph, p.args[0], p.last("-f"),
                                              p.has("--image-opts"), p.last("-b"), p.last("-t"))
    progress = progress_from(p)
    try:
        size = top.total_bytes
        if base.total_bytes < size:
            await base.truncate(size)
        off, done, t0 = 0, 0, time.monotonic()
        while off < size:
            depth, n = await top.is_allocated_above(base, off, min(size - off, 1 << 30))
            n = max(n, 1)
            pos, end = off, off + n
            while depth and pos < end:
                st = await top.block_status_above(base, pos, min(end - pos, CHUNK), True)
                m = max(st.length, 1)
                if st.zero:
                    await base.write_zeroes(pos, m, ReqFlag.MAY_UNMAP)
                else:
                    await base.write(pos, await top.read(pos, m))
                    done += m
                    if rate:
                        delay = t0 + done / rate - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                pos += m
                progress.fraction(pos, size)
            off = end
            progress.fraction(off, size)
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
