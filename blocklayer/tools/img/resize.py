"""``resize``: grow or (with ``--shrink``) shrink an image, absolute or ``+``/``-``."""
from __future__ import annotations

import asyncio
import sys

from blocklayer.core.errors import InvalidArgument

from .args import UsageError, parse, prog
from .common import close_all, new_graph, open_img

SIZE_MSG = ("Parameter 'size' expects a non-negative number below 2^64\n"
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            "and exabytes, respectively.")
SHRINK_WARNING = ("Shrinking an image will delete all data beyond the shrunken image's end. "
                  "Before performing such an operation, make sure there is no important data "
                  "there.")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise UsageError("Not enough arguments")
    size_text, argv = argv[-1], argv[:-1]       # so that "-1G" is not an option
    p = parse(argv, "f:hq", ["object=", "image-opts", "preallocation=", "shrink"])
    if len(p.args) != 1:
        raise UsageError("Expecting one image file name")
    from blocklayer.core.driver import Prealloc
    prealloc = Prealloc.OFF
    if p.has("--preallocation"):
        text = p.last("--preallocation") or ""
        try:
            prealloc = Prealloc(text)
        except ValueError:
            raise InvalidArgument(f"Invalid preallocation mode '{text}'") from None
    relative = 0
    if size_text[:1] in "+-" and size_text:
        relative = 1 if size_text[0] == "+" else -1
        size_text = size_text[1:]
    from blocklayer.core.options import parse_size
    try:
        value = parse_size(size_text, "size")
    except InvalidArgument:
        raise InvalidArgument(SIZE_MSG) from None
    return asyncio.run(run(p, value, relative, prealloc))


async def run(p, value: int, relative: int, prealloc) -> int:  # type: ignore[no-untyped-def]
    node = await open_img(new_graph(), p.args[0], fmt=p.last("-f"),
                          image_opts=p.has("--image-opts"), read_only=False, resize=True)
    try:
        current = node.total_bytes
        size = current + relative * value if relative else value
        if size <= 0:
            raise InvalidArgument("New image size must be positive")
        if size < current and not p.has("--shrink"):
            sys.stderr.write(f"{prog()}: Use the --shrink option to perform a shrink operation.\n"
                             f"{prog()}: warning: {SHRINK_WARNING}\n")
            return 1
        await node.truncate(size, False, prealloc)
        await node.flush()
    finally:
        await close_all(node)
    if not p.has("-q"):
        print("Image resized.")
    return 0
