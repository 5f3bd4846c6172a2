"""``map``: the allocation of every range of an image through its backing chain."""
from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blocklayer.core.errors import BlockError

from .args import UsageError, output_format, parse
from .common import close_all, new_graph, open_img

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

STEP = 1 << 30


@dataclass
class MapEntry:
    start: int
    length: int
    data: bool
    zero: bool
    depth: int
    present: bool
    offset: int | None
    filename: str | None

    def extends(self, prev: "MapEntry") -> bool:
        """Can this entry be merged into ``prev``?"""
        if (prev.start + prev.length != self.start or prev.data != self.data
                or prev.zero != self.zero or prev.depth != self.depth
                or prev.present != self.present or prev.filename != self.filename
                or (prev.offset is None) != (self.offset is None)):
            return False
        return prev.offset is None or prev.offset + prev.length == self.offset

    def json(self) -> str:
        b = lambda v: "true" if v else "false"  # noqa: E731
        text = (f'{{ "start": {self.start}, "length": {self.length}, "depth": {self.depth},'
                f' "present": {b(self.present)}, "zero": {b(self.zero)},'
                f' "data": {b(self.data)}')
        if self.offset is not None:
            text += f', "offset": {self.offset}'
        return text + "}"

    def human(self) -> str | None:
        if self.data and self.offset is None:
            raise BlockError("File contains external, encrypted or compressed clusters.")
        if not self.data or self.zero:
            return None
        return "%-16s%-16s%-16s%s" % (_hex(self.start), _hex(self.length),
                                      _hex(self.offset or 0), self.filename)


def _hex(v: int) -> str:
    return "%#x" % v if v else "0"


async def entry_at(node: "BlockNode", offset: int, length: int) -> MapEntry:
    """Walk down the chain until a layer says data or zero (the depth of the answer)."""
    from blocklayer.core.driver import Status
    depth = 0
    layer: BlockNode | None = node.filtered()
    while True:
        assert layer is not None
        st = await layer.block_status(offset, length, True)
        if st.length == 0:          # beyond the end of a short backing file: zeroes
            st.flags, st.length = Status.ZERO, length
        length = st.length
        if st.flags & (Status.DATA | Status.ZERO):
            break
        nxt = layer.filtered_backing()
        if nxt is None:             # no layer has it: qemu-img's answer is 0, no offset
            st.flags = Status.NONE
            break
        layer = nxt.filtered()
        depth += 1
    has_offset = bool(st.flags & Status.OFFSET_VALID) and st.offset is not None
    filename = st.file.filename if (st.file is not None and has_offset) else None
    return MapEntry(offset, length, bool(st.flags & Status.DATA), bool(st.flags & Status.ZERO),
                    depth, bool(st.flags & Status.ALLOCATED),
                    st.offset if has_offset else None, filename)


async def entries(node: "BlockNode", start: int, end: int):  # type: ignore[no-untyped-def]
    """Merged entries covering ``[start, end)``."""
    cur: MapEntry | None = None
    offset = start
    while offset < end:
        e = await entry_at(node, offset, min(end - offset, STEP))
        offset += e.length
        if cur is not None and e.extends(cur):
            cur.length += e.length
            continue
        if cur is not None:
            yield cur
        cur = e
    if cur is not None:
        yield cur


def main(argv: list[str]) -> int:
    from blocklayer.core.options import parse_size
    from blocklayer.core.errors import InvalidArgument
    p = parse(argv, "f:hU", ["format=", "output=", "object=", "image-opts", "force-share",
                             "start-offset=", "max-length="])
    if len(p.args) != 1:
        raise UsageError("Expecting one image file name")
    out = output_format(p.last("--output"))
    start, max_len = 0, None
    try:
        if p.has("--start-offset"):
            start = parse_size(p.last("--start-offset") or "", "start offset")
        if p.has("--max-length"):
            max_len = parse_size(p.last("--max-length") or "", "max length")
    except InvalidArgument as exc:
        raise InvalidArgument(exc.message.replace("Invalid", "Invalid")) from None
    return asyncio.run(run(p.args[0], p.last("-f", "--format"), out, start, max_len,
                           p.has("--image-opts"), p.has("-U", "--force-share")))


async def run(filename: str, fmt: str | None, out: str, start: int, max_len: int | None,
              image_opts: bool, force_share: bool) -> int:
    node = await open_img(new_graph(), filename, fmt=fmt, image_opts=image_opts,
                          read_only=True, force_share=force_share)
    try:
        size = node.total_bytes
        end = size if max_len is None else min(size, start + max_len)
        w = sys.stdout.write
        if out == "human":
            w("%-16s%-16s%-16s%s\n" % ("Offset", "Length", "Mapped to", "File"))
        first = True
        async for e in entries(node, start, end):
            if out == "json":
                w(("[" if first else ",\n") + e.json())
            else:
                line = e.human()
                if line:
                    w(line + "\n")
            first = False
        if out == "json":
            w("]\n" if not first else "[]\n")
    finally:
        await close_all(node)
    return 0
