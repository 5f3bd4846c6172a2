"""``dd``: copy a byte range of an image into a new image (``bs= count= skip=``),
with qemu-img 7.2's size arithmetic."""
from __future__ import annotations

import asyncio

from blocklayer.core.errors import BlockError, InvalidArgument

from .args import parse, prog, suffix_hint
from .common import close_all, new_graph, open_img


def _num(key: str, value: str) -> int:
    from blocklayer.core.options import parse_size
    try:
        return parse_size(value, key)
    except InvalidArgument:
        raise InvalidArgument(f"Invalid {key} specified. {suffix_hint()}") from None


def main(argv: list[str]) -> int:
    p = parse(argv, "hf:O:U", ["image-opts", "force-share", "object="])
    ops: dict[str, str] = {}
    for arg in p.args:
        key, eq, value = arg.partition("=")
        if not eq or key not in ("bs", "count", "if", "of", "skip"):
            raise InvalidArgument(f"unrecognized operand {key}")
        ops[key] = value
    if "if" not in ops or "of" not in ops:
        raise InvalidArgument("Must specify both input and output files")
    bs = 512
    if "bs" in ops:
        bs = _num("bs", ops["bs"])
        if not 1 <= bs <= 0x7FFFFFFF:
            raise InvalidArgument("Invalid bs specified. Must be between 1 and 2147483647.")
    count = _num("count", ops["count"]) if "count" in ops else None
    skip = _num("skip", ops["skip"]) if "skip" in ops else 0
    return asyncio.run(run(p, ops["if"], ops["of"], bs, count, skip))


async def run(p, src_name: str, dst_name: str, bs: int, count: int | None,  # type: ignore[no-untyped-def]
              skip: int) -> int:
    from blocklayer.core import registry
    from blocklayer.core.create import create_image, normalize_create_options
    graph = new_graph()
    out_fmt = p.last("-O") or "raw"
    src = await open_img(graph, src_name, fmt=p.last("-f"), image_opts=p.has("--image-opts"),
                         read_only=True, force_share=p.has("-U"))
    dst = None
    try:
        try:
            registry.get_driver(out_fmt)
        except InvalidArgument:
            raise InvalidArgument(f"Unknown file format '{out_fmt}'") from None
        size = src.total_bytes
        if count is not None and count * bs < size:
            size = count * bs
        in_pos = skip * bs
        try:
            await create_image(dst_name, out_fmt,
                               options=normalize_create_options(
                                   out_fmt, {"size": max(size - in_pos, 0)}),
                               graph=graph)
        except BlockError as exc:
            raise exc.with_prefix(f"{dst_name}: error while creating output image: ")
        dst = await open_img(graph, dst_name, fmt=out_fmt, read_only=False, cache="unsafe")
        if in_pos > src.total_bytes:      # qemu-img 7.2 reports it and exits 0
            import sys
            sys.stderr.write(f"{prog()}: {src_name}: cannot skip to specified offset\n")
            return 0
        out_pos = 0
        while in_pos < size:          # every block is written, zeroes too (as qemu-img)
            n = min(bs, size - in_pos)
            await dst.write(out_pos, await src.read(in_pos, n))
            in_pos += n
            out_pos += n
        await dst.flush()
    finally:
        await close_all(dst, src)
    return 0
