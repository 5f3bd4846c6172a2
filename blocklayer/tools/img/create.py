"""``create``: make a new image, printing qemu-img's ``Formatting ...`` line."""
from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

from blocklayer.core.errors import BlockError, InvalidArgument

from .args import UsageError, parse, prog
from .common import (new_graph, parse_img_size, parse_o_options, print_create_options_help)

if TYPE_CHECKING:
    from blocklayer.core.driver import BlockDriver


def main(argv: list[str]) -> int:
    p = parse(argv, "F:b:f:ho:qu", ["object="])
    fmt = p.last("-f", default="raw") or "raw"
    opts, want_help = parse_o_options(p.all("-o"))
    if want_help:
        filename = p.args[0] if p.args else None
        _check_format(fmt, filename or "")
        print_create_options_help(fmt, protocol_of=filename)
        return 0
    if not p.args:
        raise UsageError("Expecting image file name")
    filename = p.args[0]
    size = parse_img_size(p.args[1], prog()) if len(p.args) > 1 else None
    if len(p.args) > 2:
        raise UsageError(f"Unexpected argument: {p.args[2]}")
    backing = p.last("-b")
    backing_fmt = p.last("-F")
    return asyncio.run(create(filename, fmt, size, opts, backing, backing_fmt,
                              unsafe=p.has("-u"), quiet=p.has("-q")))


def _check_format(fmt: str, filename: str) -> "type[BlockDriver]":
    from blocklayer.core import registry
    try:
        return registry.get_driver(fmt)
    except InvalidArgument:
        raise InvalidArgument(f"{filename}: Unknown file format '{fmt}'") from None


def format_line(filename: str, fmt: str, cls: "type[BlockDriver]", options: dict[str, Any]) -> str:
    """``Formatting 'f', fmt=F opt=value ...``: the driver's options, in its declared
    order, that are set or have a default."""
    parts = [f"Formatting '{filename}', fmt={fmt}"]
    from blocklayer.core.create import all_create_options
    shown = cls.create_defaults_shown
    own = {o.name for o in cls.create_options}
    for opt in all_create_options(fmt):
        if opt.name not in own and opt.name not in options:
            continue
        default = opt.default if shown is None or opt.name in shown else None
        value = options.get(opt.name, default)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "on" if value else "off"
        parts.append(f"{opt.name}={value}")
    return " ".join(parts)


async def create(filename: str, fmt: str, size: int | None, opts: dict[str, str],
                 backing: str | None, backing_fmt: str | None, *, unsafe: bool = False,
                 quiet: bool = False) -> int:
    from blocklayer.core.create import create_image, normalize_create_options
    cls = _check_format(fmt, filename)
    names = {o.name for o in cls.create_options}
    raw_opts: dict[str, Any] = dict(opts)
    if "size" in raw_opts and size is None:
        size = None   # -o size= is used as given
    elif size is not None:
        raw_opts["size"] = size
    if backing is not None:
        raw_opts["backing_file"] = backing
    if backing_fmt is not None:
        raw_opts["backing_fmt"] = backing_fmt
    try:
        if raw_opts.get("backing_file") and "backing_file" not in names:
            raise InvalidArgument(f"Backing file not supported for file format '{fmt}'")
        normalized = normalize_create_options(fmt, raw_opts)
        backing = normalized.get("backing_file") or None
        backing_fmt = normalized.get("backing_fmt") or None
        if backing and not backing_fmt:
            detected = None if unsafe else await _probe_format(filename, backing)
            if detected:        # qemu-img 7.2 ends this hint without a newline
                sys.stderr.write(f"{prog()}: {filename}: Backing file specified without "
                                 f"backing format\nDetected format of {detected}.")
                return 1
            raise InvalidArgument("Backing file specified without backing format")
        if backing and not unsafe:
            bsize = await _backing_size(filename, backing, backing_fmt)
            if "size" not in normalized:
                normalized["size"] = bsize
        if "size" not in normalized:
            raise InvalidArgument("Image creation needs a size parameter")
    except BlockError as exc:
        raise exc.with_prefix(f"{filename}: ")
    if not quiet:
        print(format_line(filename, fmt, cls, normalized), flush=True)
    try:
        await create_image(filename, fmt, options=normalized, graph=new_graph(quiet))
    except BlockError as exc:
        raise exc.with_prefix(f"{filename}: ")
    return 0


async def _backing_size(filename: str, backing: str, backing_fmt: str | None) -> int:
    from blocklayer.core.open import full_backing_filename, open_image
    path = full_backing_filename(filename, backing)
    try:
        node = await open_image(path, fmt=backing_fmt, read_only=True, graph=new_graph(),
                                backing=False)
    except BlockError as exc:
        raise exc.with_prefix("", "\nCould not open backing image.")
    try:
        return node.total_bytes
    finally:
        node.remove_user("user")
        await node.close()


async def _probe_format(filename: str, backing: str) -> str | None:
    """The format qemu-img names when it refuses a backing file without one: it opens
    the backing file first, so one that cannot be opened is reported as such."""
    from blocklayer.core.open import full_backing_filename, open_image
    try:
        node = await open_image(full_backing_filename(filename, backing), read_only=True,
                                graph=new_graph(), backing=False)
    except BlockError as exc:
        raise exc.with_prefix("", "\nCould not open backing image.")
    name = node.format_name
    node.remove_user("user")
    await node.close()
    return name
