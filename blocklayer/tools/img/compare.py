"""``compare``: do two images read the same?  Exit 0 same, 1 differ, 2 cannot open,
3 block status failed, 4 read failed."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from blocklayer.core.errors import BlockError

from .args import UsageError, parse
from .common import CommandError, Progress, close_all, new_graph, open_img, progress_from

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

IO_BUF = 2 << 20


def main(argv: list[str]) -> int:
    p = parse(argv, "hf:F:T:pqsU", ["object=", "image-opts", "force-share", "json-progress"])
    if len(p.args) != 2:
        raise UsageError("Expecting two image file names")
    return asyncio.run(run(p))


class Differ(Exception):
    pass


def _first_diff(a: bytes | bytearray, b: bytes | bytearray) -> int | None:
    if a == b:
        return None
    step = 512
    for pos in range(0, len(a), step):
        if a[pos:pos + step] != b[pos:pos + step]:
            return pos
    return None


async def _status(node: "BlockNode", name: str, off: int, n: int):  # type: ignore[no-untyped-def]
    try:
        return await node.block_status_above(None, off, n, True)
    except BlockError:
        raise CommandError(f"Sector allocation test failed for {name}", 3) from None


async def _read(node: "BlockNode", name: str, off: int, n: int) -> bytes | bytearray:
    try:
        return await node.read(off, n)
    except BlockError as exc:
        raise CommandError(f"Error while reading offset {off} of {name}: {exc.strerror}",
                           4) from None


def _first_nonzero(data: bytes | bytearray) -> int | None:
    """The first 512-byte sector that is not all zero, as qemu-img's find_nonzero."""
    from blocklayer.core.io import is_zero
    return None if is_zero(data) else _first_diff(data, bytes(len(data)))


async def run(p) -> int:  # type: ignore[no-untyped-def]
    from blocklayer.core.driver import Status
    name1, name2 = p.args
    graph = new_graph()
    quiet = p.has("-q")
    say = (lambda s: None) if quiet else print  # noqa: E731
    n1 = n2 = None
    try:
        try:
            n1 = await open_img(graph, name1, fmt=p.last("-f"), image_opts=p.has("--image-opts"),
                                read_only=True, force_share=p.has("-U"), cache=p.last("-T"),
                                src_cache=True)
            n2 = await open_img(graph, name2, fmt=p.last("-F"), image_opts=p.has("--image-opts"),
                                read_only=True, force_share=p.has("-U"), cache=p.last("-T"),
                                src_cache=True)
        except BlockError as exc:
            raise CommandError(exc.message, 2) from None
        size1, size2 = n1.total_bytes, n2.total_bytes
        total = min(size1, size2)
        progress: Progress = progress_from(p)
        if p.has("-s") and size1 != size2:
            say("Strict mode: Image size mismatch!")
            return 1
        mask = Status.DATA | Status.ZERO | Status.ALLOCATED | Status.EOF | Status.OFFSET_VALID
        off = 0
        while off < total:
            st1 = await _status(n1, name1, off, total - off)
            st2 = await _status(n2, name2, off, total - off)
            chunk = min(st1.length, st2.length)
            if p.has("-s") and (st1.flags & mask) != (st2.flags & mask):
                say(f"Strict mode: Offset {off} block status mismatch!")
                return 1
            if st1.zero and st2.zero:
                pass
            elif st1.allocated == st2.allocated:
                if st1.allocated:
                    chunk = min(chunk, IO_BUF)
                    d = _first_diff(await _read(n1, name1, off, chunk),
                                    await _read(n2, name2, off, chunk))
                    if d is not None:
                        say(f"Content mismatch at offset {off + d}!")
                        return 1
            else:
                chunk = min(chunk, IO_BUF)
                node, name = (n1, name1) if st1.allocated else (n2, name2)
                d = _first_nonzero(await _read(node, name, off, chunk))
                if d is not None:
                    say(f"Content mismatch at offset {off + d}!")
                    return 1
            off += chunk
            progress.fraction(off, max(size1, size2))
        if size1 != size2:
            say("Warning: Image size mismatch!")
            node, name = (n1, name1) if size1 > size2 else (n2, name2)
            end = node.total_bytes
            while off < end:
                st = await _status(node, name, off, end - off)
                chunk = min(st.length, IO_BUF)
                if st.allocated and not st.zero:
                    d = _first_nonzero(await _read(node, name, off, chunk))
                    if d is not None:
                        say(f"Content mismatch at offset {off + d}!")
                        return 1
                off += chunk
                progress.fraction(off, end)
        say("Images are identical.")
        if progress.enabled:            # qemu-img ends compare's progress with a newline
            print()
        return 0
    finally:
        await close_all(n1, n2)
