"""``rebase``: give an image another backing file, copying into it whatever would read
differently (safe mode) or only rewriting the name (``-u``); ``-b ''`` flattens."""
from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, AsyncIterator

from blocklayer.core.errors import BlockError
from blocklayer.jobs.copy import Chunk, CopyEngine, Kind
from blocklayer.jobs.zeroes import Piece

from .args import UsageError, parse
from .common import Progress, close_all, new_graph, open_img, progress_from

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

CHUNK = 2 << 20


def main(argv: list[str]) -> int:
    p = parse(argv, "hf:F:b:upt:T:qU", ["object=", "image-opts", "force-share",
                                        "json-progress"])
    if not p.has("-b") and not p.has("-u"):
        raise UsageError("Must specify backing file (-b) or use unsafe mode (-u)")
    if len(p.args) != 1:
        raise UsageError("Expecting one image file name")
    return asyncio.run(run(p))


def _change_error(name: str, exc: BlockError) -> BlockError:
    return BlockError(f"Could not change the backing file to '{name}': "
                      f"{os.strerror(exc.errno)}", exc.errno)


async def run(p) -> int:  # type: ignore[no-untyped-def]
    new_name = p.last("-b") or ""
    new_fmt = p.last("-F")
    unsafe = p.has("-u")
    if new_name and not new_fmt:
        raise BlockError(f"Could not change the backing file to '{new_name}': backing "
                         "format must be specified")
    graph = new_graph()
    top = await open_img(graph, p.args[0], fmt=p.last("-f"), image_opts=p.has("--image-opts"),
                         read_only=False, cache=p.last("-t"), backing=not unsafe)
    new = None
    progress = progress_from(p)
    try:
        if not unsafe:
            if new_name:
                from blocklayer.core.open import full_backing_filename
                path = full_backing_filename(top.filename, new_name)
                try:
                    new = await open_img(graph, path, fmt=new_fmt, read_only=True,
                                         force_share=p.has("-U"), cache=p.last("-T"),
                                         src_cache=True)
                except BlockError as exc:
                    inner = exc.message.split(": ", 1)[1] if ": " in exc.message else exc.message
                    raise BlockError(f"Could not open new backing file '{new_name}': {inner}",
                                     exc.errno) from None
            copy = RebaseCopy(top, new, progress)
            await copy.run(copy.plan())
        try:
            await top.driver.change_backing_file(new_name or None,
                                                 new_fmt if new_name else None)
        except BlockError as exc:
            raise _change_error(new_name, exc) from None
        await top.flush()
        progress.current = 100.0
        progress.end()
    finally:
        await close_all(top, new)
    return 0


async def _read_or_zero(node: "BlockNode | None", off: int, n: int) -> bytes | bytearray:
    """Read ``[off, off+n)`` of a chain, zeroes beyond its end (or with no chain)."""
    if node is None or off >= node.total_bytes:
        return bytes(n)
    m = min(n, node.total_bytes - off)
    data = await node.read(off, m)
    return data + bytes(n - m) if m < n else data


async def _zero_in(node: "BlockNode | None", off: int, n: int) -> int:
    """How many bytes from ``off`` surely read as zeroes in the chain (0 if unknown)."""
    if node is None or off >= node.total_bytes:
        return n
    st = await node.block_status_above(None, off, min(n, node.total_bytes - off), True)
    return st.length if st.zero else 0


class RebaseCopy(CopyEngine):
    """The copy engine with rebase's plan: where ``top`` leaves the data to its backing
    file and the old and the new backing file may differ, the sectors of the old that
    differ from the new are written into ``top``.  The plan asks ``top`` what the copy
    writes, so it is not asked ahead."""

    def __init__(self, top: "BlockNode", new: "BlockNode | None", progress: Progress) -> None:
        super().__init__(top.filtered_backing(), top, top.total_bytes,
                         progress=progress.fraction)
        self.new = new

    async def plan(self) -> AsyncIterator[Chunk]:
        top, old, new = self.target, self.source, self.new
        off = 0
        while off < self.total:
            n = min(self.total - off, CHUNK)
            allocated, pnum = await top.is_allocated(off, n)
            n = max(pnum, 1)
            kind = Kind.SKIP
            if not allocated:
                z_old = await _zero_in(old, off, n)
                z_new = await _zero_in(new, off, n) if z_old else 0
                if z_old and z_new:
                    n = min(z_old, z_new)
                else:
                    kind = Kind.DATA
            yield Chunk(off, n, kind)
            off += n

    async def payload(self, chunk: Chunk) -> list[Piece] | None:
        if chunk.kind is not Kind.DATA:
            return None
        a = await _read_or_zero(self.source, chunk.offset, chunk.length)
        b = await _read_or_zero(self.new, chunk.offset, chunk.length)
        return _differences(chunk.offset, a, b) if a != b else []


def _differences(off: int, a: bytes | bytearray, b: bytes | bytearray) -> list[Piece]:
    """The 512-byte sectors of ``a`` that differ from ``b``, coalesced, to write at
    ``off``."""
    out: list[Piece] = []
    start = None
    n = len(a)
    for pos in range(0, n + 512, 512):
        differs = pos < n and a[pos:pos + 512] != b[pos:pos + 512]
        if differs and start is None:
            start = pos
        elif not differs and start is not None:
            out.append((off + start, pos - start, a[start:pos]))
            start = None
    return out
