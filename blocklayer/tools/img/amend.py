"""``amend``: change format options of an existing image (through ``driver.amend``)."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from blocklayer.core.errors import BlockError, InvalidArgument

from .args import UsageError, parse
from .common import OPT_TYPE_NAMES, close_all, new_graph, open_img, parse_o_options, progress_from

if TYPE_CHECKING:
    from blocklayer.core.driver import BlockDriver, CreateOption


def _supports_amend(cls: "type[BlockDriver]") -> bool:
    return bool(cls.amend_options)


def amend_options(cls: "type[BlockDriver]") -> "tuple[CreateOption, ...]":
    """The options ``amend`` accepts (the driver declares them)."""
    return cls.amend_options


def main(argv: list[str]) -> int:
    p = parse(argv, "ho:f:t:pq", ["object=", "image-opts", "force", "json-progress"])
    if not p.has("-o"):
        raise UsageError("Must specify options (-o)")
    opts, want_help = parse_o_options(p.all("-o"))
    if want_help and p.has("-f"):
        return _help(p.last("-f") or "")
    if len(p.args) != 1:
        if want_help:
            raise InvalidArgument("Expecting one image file name")
        raise UsageError("Expecting one image file name")
    return asyncio.run(run(p, opts, want_help))


def _help(fmt: str) -> int:
    from blocklayer.core import registry
    try:
        cls = registry.get_driver(fmt)
    except InvalidArgument:
        raise InvalidArgument(f"Unknown file format '{fmt}'") from None
    if not _supports_amend(cls):
        raise InvalidArgument(f"Format driver '{fmt}' does not support option amendment")
    print(f"Amend options for '{fmt}':")
    for opt in sorted(amend_options(cls), key=lambda o: o.name):
        head = f"{opt.name}=<{OPT_TYPE_NAMES.get(opt.type, opt.type)}>"
        print(f"  {head:<22} - {opt.help}")
    return 0


async def run(p, opts: dict[str, str], want_help: bool) -> int:  # type: ignore[no-untyped-def]
    from blocklayer.core.options import parse_bool, parse_size
    node = await open_img(new_graph(), p.args[0], fmt=p.last("-f"),
                          image_opts=p.has("--image-opts"), read_only=False,
                          cache=p.last("-t"), resize=True)
    try:
        fmt = node.format_name
        cls = type(node.driver)
        if want_help:
            return _help(fmt)
        if not _supports_amend(cls):
            raise InvalidArgument(f"Format driver '{fmt}' does not support option amendment")
        known = {o.name: o for o in amend_options(cls)}
        values: dict[str, object] = {}
        for key, value in opts.items():
            opt = known.get(key)
            if opt is None:
                creation = any(o.name == key for o in cls.create_options)
                raise InvalidArgument(f"Invalid parameter '{key}'" + (
                    "\nThis option is only supported for image creation" if creation else ""))
            if opt.type == "size":
                values[key] = parse_size(value, f"parameter '{key}'")
            elif opt.type == "bool":
                values[key] = parse_bool(value, key)
            elif opt.type == "number":
                try:
                    values[key] = int(value)
                except ValueError:
                    raise InvalidArgument(f"Parameter '{key}' expects a number") from None
            else:
                values[key] = value
        progress = progress_from(p)
        try:
            await node.driver.amend(values, p.has("--force"))
        except BlockError as exc:
            if exc.message.startswith("Error"):
                raise
            raise exc.with_prefix("Error while amending options: ")
        await node.refresh_total_bytes()
        await node.flush()
        progress.current = 100.0      # printed once, by the end (as qemu-img)
        progress.end()
    finally:
        await close_all(node)
    return 0
