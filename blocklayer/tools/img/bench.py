"""``bench``: many requests of one size, ``-d`` at a time, timed (qemu-img's lines)."""
from __future__ import annotations

import asyncio
import time

from blocklayer.core.errors import BlockError, InvalidArgument

from .args import UsageError, parse, suffix_hint
from .common import close_all, new_graph, open_img


def _int(text: str | None, what: str) -> int:
    try:
        value = int(text or "", 0)
    except ValueError:
        raise InvalidArgument(f"Invalid {what} specified") from None
    if value < 0 or value > 0x7FFFFFFF:
        raise InvalidArgument(f"Invalid {what} specified")
    return value


def _size(text: str | None, what: str) -> int:
    from blocklayer.core.options import parse_size
    try:
        value = parse_size(text or "", what)
    except InvalidArgument:
        raise InvalidArgument(f"Invalid {what} specified. {suffix_hint()}") from None
    if value > 0x7FFFFFFF:
        raise InvalidArgument(f"Invalid {what} specified. {suffix_hint()}")
    return value


def main(argv: list[str]) -> int:
    p = parse(argv, "hc:d:f:ni:o:qs:S:t:wU", ["image-opts", "flush-interval=", "no-drain",
                                              "pattern=", "force-share", "object="])
    count = _int(p.last("-c"), "request count") if p.has("-c") else 75000
    depth = _int(p.last("-d"), "queue depth") if p.has("-d") else 64
    if depth == 0:
        raise InvalidArgument("Invalid queue depth specified")
    offset = _size(p.last("-o"), "offset") if p.has("-o") else 0
    bufsize = _size(p.last("-s"), "buffer size") if p.has("-s") else 4096
    step = _size(p.last("-S"), "step_size") if p.has("-S") else bufsize
    pattern = 0
    if p.has("--pattern"):
        pattern = _int(p.last("--pattern"), "pattern byte")
        if pattern > 0xFF:
            raise InvalidArgument("Invalid pattern byte specified")
    flush_interval = 0
    if p.has("--flush-interval"):
        flush_interval = _int(p.last("--flush-interval"), "flush interval")
    write = p.has("-w")
    if flush_interval and not write:
        raise InvalidArgument("--flush-interval is only available in write tests")
    if flush_interval and flush_interval < depth:
        raise InvalidArgument("Flush interval can't be smaller than depth")
    if len(p.args) != 1:
        raise UsageError("Expecting one image file name")
    cache = "none" if p.has("-n") else p.last("-t")
    return asyncio.run(run(p, count, depth, offset, bufsize, step, pattern, flush_interval,
                           write, cache))


async def run(p, count: int, depth: int, offset: int, bufsize: int, step: int,  # type: ignore[no-untyped-def]
              pattern: int, flush_interval: int, write: bool, cache: str | None) -> int:
    node = await open_img(new_graph(), p.args[0], fmt=p.last("-f"),
                          image_opts=p.has("--image-opts"), read_only=not write,
                          force_share=p.has("-U"), cache=cache)
    quiet = p.has("-q")
    try:
        if not quiet:
            print(f"Sending {count} {'write' if write else 'read'} requests, {bufsize} bytes "
                  f"each, {depth} in parallel (starting at offset {offset}, step size {step})")
            if flush_interval:
                print(f"Sending flush every {flush_interval} requests")
        size = node.total_bytes
        buf = bytes([pattern]) * bufsize
        state = {"next": 0, "offset": offset, "written": 0}
        t0 = time.monotonic()

        async def worker() -> None:
            while state["next"] < count:
                state["next"] += 1
                off = state["offset"]
                state["offset"] += step
                if size <= bufsize:
                    state["offset"] = 0
                else:
                    state["offset"] %= size - bufsize
                try:
                    if write:
                        await node.write(off, buf)
                        state["written"] += 1
                        if flush_interval and state["written"] % flush_interval == 0:
                            await node.flush()
                    else:
                        await node.read(off, bufsize)
                except BlockError as exc:
                    raise BlockError(f"Failed request: {exc.strerror}", exc.errno) from None

        await asyncio.gather(*(worker() for _ in range(min(depth, max(count, 1)))))
        if write and flush_interval:
            await node.flush()
        elapsed = time.monotonic() - t0
    finally:
        await close_all(node)
    if not quiet:
        print("Run completed in %3.3f seconds." % elapsed)
    return 0
