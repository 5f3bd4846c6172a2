"""``measure``: how big an image of the output format would be, for a new image of
``--size`` or for converting an existing one.  Asks the output driver's ``measure``
(a classmethod: ``measure(options, source_node_or_None) -> {"required",
"fully-allocated", ["bitmaps"]}``)."""
from __future__ import annotations

import asyncio
from typing import Any

from blocklayer.core.errors import BlockError, InvalidArgument

from .args import UsageError, output_format, parse, prog
from .common import close_all, new_graph, open_img, parse_img_size, parse_o_options, to_qjson


def main(argv: list[str]) -> int:
    p = parse(argv, "hf:O:o:l:s:U", ["object=", "image-opts", "output=", "size=",
                                     "force-share"])
    out = output_format(p.last("--output"))
    size = None
    if p.has("--size"):
        size = parse_img_size(p.last("--size") or "", prog())
    if len(p.args) > 1:
        raise UsageError("Expecting one image file name")
    filename = p.args[0] if p.args else None
    if filename is None and (p.has("--image-opts") or p.has("-f") or p.has("-l")):
        raise InvalidArgument("--image-opts, -f, and -l require a filename argument.")
    if size is None and filename is None:
        raise InvalidArgument("Either --size N or one filename must be specified.")
    if size is not None and filename is not None:
        raise InvalidArgument("--size N cannot be used together with a filename.")
    return asyncio.run(run(p, filename, size, out))


async def run(p: Any, filename: str | None, size: int | None, out: str) -> int:
    from blocklayer.core import registry
    from blocklayer.core.create import normalize_create_options
    fmt = p.last("-O") or "raw"
    opts, _ = parse_o_options(p.all("-o"))
    src = None
    try:
        if filename is not None:
            src = await open_img(new_graph(), filename, fmt=p.last("-f"),
                                 image_opts=p.has("--image-opts"), read_only=True,
                                 force_share=p.has("-U"))
            snap = p.last("-l") or p.last("-s")
            if snap:
                from .convert import _load_snapshot
                await _load_snapshot(src, snap)
        try:
            cls = registry.get_driver(fmt)
        except InvalidArgument:
            raise InvalidArgument(f"Unknown file format '{fmt}'") from None
        try:
            options = normalize_create_options(fmt, opts)
        except BlockError as exc:
            raise exc.with_prefix("", f"\n{prog()}: Invalid options for file format '{fmt}'")
        if size is not None:
            options["size"] = size
        info = await cls.measure(options, src)
    finally:
        await close_all(src)
    if out == "json":
        obj = {"required": info["required"], "fully-allocated": info["fully-allocated"]}
        if info.get("bitmaps") is not None:
            obj["bitmaps"] = info["bitmaps"]
        print(to_qjson(obj))
    else:
        print(f"required size: {info['required']}")
        print(f"fully allocated size: {info['fully-allocated']}")
        if info.get("bitmaps") is not None:
            print(f"bitmaps size: {info['bitmaps']}")
    return 0
