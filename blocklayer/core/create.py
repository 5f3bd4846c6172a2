"""Creating images: one entry point for every driver (QEMU's bdrv_img_create)."""
from __future__ import annotations

from typing import Any

from . import registry
from .driver import CreateOption, Perm
from .errors import InvalidArgument
from .node import BlockGraph, BlockNode
from .options import OpenFlags, parse_bool, parse_size


def create_option_names(fmt: str) -> list[str]:
    return [o.name for o in registry.get_driver(fmt).create_options]


def all_create_options(fmt: str, protocol: str = "file") -> list[CreateOption]:
    """A format's create options, then its protocol's that it does not have itself
    (QEMU appends the protocol driver's list to the format driver's)."""
    cls = registry.get_driver(fmt)
    opts = list(cls.create_options)
    if not cls.is_protocol:
        names = {o.name for o in opts}
        opts += [o for o in registry.get_driver(protocol).create_options if o.name not in names]
    return opts


def normalize_create_options(fmt: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``-o`` options against the driver's list and convert their types."""
    known = {o.name: o for o in all_create_options(fmt)}
    out: dict[str, Any] = {}
    for key, value in options.items():
        opt = known.get(key)
        if opt is None:
            raise InvalidArgument(f"Invalid parameter '{key}'")
        if value is None:
            continue
        if opt.type == "size":
            out[key] = parse_size(value, f"parameter '{key}'") if not isinstance(value, int) else value
        elif opt.type == "bool":
            out[key] = parse_bool(value, key)
        elif opt.type == "number":
            try:
                out[key] = int(value)
            except ValueError:
                raise InvalidArgument(f"Parameter '{key}' expects a number") from None
        else:
            out[key] = str(value)
    return out


async def create_image(filename: str, fmt: str = "raw", size: int | None = None,
                       options: dict[str, Any] | None = None, *,
                       graph: BlockGraph | None = None) -> None:
    """Create ``filename`` as ``fmt`` with ``-o``-style ``options`` (already split)."""
    opts = dict(options or {})
    if size is not None:
        opts["size"] = size
    opts = normalize_create_options(fmt, opts)
    cls = registry.get_driver(fmt)
    graph = graph or BlockGraph()

    async def open_file(name: str, file_options: dict[str, Any] | None = None) -> BlockNode:
        """Create the protocol file (empty) and open it for the format to fill."""
        from .open import open_node
        proto_name = registry.protocol_for(name)
        proto = registry.get_driver(proto_name)
        fopts = dict(file_options or {})
        await proto.create(name, {"size": 0, **fopts})
        node = await open_node(graph, name, {"driver": proto_name}, flags=OpenFlags())
        node.allow_write_beyond_eof = True
        node.add_user("create", Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE,
                      Perm.CONSISTENT_READ)
        return node

    await cls.create(filename, opts, open_file=open_file)
