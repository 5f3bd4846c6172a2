"""What the subcommands share: opening images as qemu-img does, QEMU-ordered JSON,
progress lines, size parsing with qemu-img's messages."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from blocklayer.core.errors import BlockError, InvalidArgument

if TYPE_CHECKING:
    from blocklayer.core.node import BlockGraph, BlockNode

SIZE_HINT = ("Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n"
             "{prog}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")


class CommandError(BlockError):
    """An error the tool reports itself, with a chosen exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------

def new_graph(quiet: bool = False) -> "BlockGraph":
    """A graph whose warnings (the raw probing one) go to stderr as qemu-img prints them."""
    from blocklayer.core.node import BlockGraph
    graph = BlockGraph()

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "warning":
            sys.stderr.write(str(data.get("message", "")) + "\n")
        elif event == "BLOCK_IMAGE_CORRUPTED":
            from blocklayer.tools.common import corruption_text
            sys.stderr.write(corruption_text(data) + "\n")
    graph.event_handlers.append(on_event)
    return graph


def open_flags(*, read_only: bool, force_share: bool = False, cache: str | None = None,
               src_cache: bool = False, no_backing: bool = False, resize: bool = False,
               no_io: bool = False, check: bool = False,
               unmap: bool = False):  # type: ignore[no-untyped-def]
    from blocklayer.core.options import CacheMode, OpenFlags
    mode = CacheMode()
    if cache is not None:
        try:
            mode = CacheMode.parse(cache)
        except InvalidArgument:
            what = "source cache" if src_cache else "cache"
            raise InvalidArgument(f"Invalid {what} option: {cache}") from None
    return OpenFlags(read_only=read_only, force_share=force_share, cache=mode,
                     no_backing=no_backing, resize=resize, no_io=no_io, check=check,
                     discard_unmap=unmap)


async def open_img(graph: "BlockGraph", filename: str, *, fmt: str | None = None,
                   image_opts: bool = False, read_only: bool = True,
                   force_share: bool = False, cache: str | None = None,
                   src_cache: bool = False, backing: bool = True, resize: bool = False,
                   no_io: bool = False, check: bool = False,
                   unmap: bool = False) -> "BlockNode":
    """Open ``filename`` (or an ``--image-opts`` string) with qemu-img's error wording.
    ``unmap``: zero writes may deallocate (qemu-img's BDRV_O_UNMAP)."""
    from blocklayer.core.open import open_image
    from blocklayer.core.options import split_keyval
    if force_share and not read_only:
        raise InvalidArgument("--force-share/-U can only be used with read-only images")
    flags = open_flags(read_only=read_only, force_share=force_share, cache=cache,
                       src_cache=src_cache, no_backing=not backing, resize=resize, no_io=no_io,
                       check=check, unmap=unmap)
    name: str | None = filename
    options: dict[str, Any] = {}
    if image_opts:
        if fmt:
            raise InvalidArgument("--image-opts and --format are mutually exclusive")
        options = dict(split_keyval(filename))
        name = None
    try:
        return await open_image(name, options, fmt=fmt, read_only=read_only, graph=graph,
                                flags=flags, backing=backing)
    except BlockError as exc:
        raise exc.with_prefix(f"Could not open '{filename}': ")


async def close_all(*nodes: "BlockNode | None") -> None:
    for node in nodes:
        if node is not None and not node.closed:
            node.remove_user("user")
            await node.close()


def chain_of(node: "BlockNode") -> list["BlockNode"]:
    """The node, then each backing layer below it."""
    out = []
    cur: BlockNode | None = node
    while cur is not None:
        out.append(cur)
        cur = cur.filtered_backing()
    return out


# ---------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------

def parse_img_size(text: str, prog: str) -> int:
    from blocklayer.core.options import parse_size
    try:
        return parse_size(text, "image size")
    except InvalidArgument:
        raise InvalidArgument(SIZE_HINT.format(prog=prog)) from None


def parse_number(text: str, what: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise InvalidArgument(f"Invalid {what} specified") from None
    if value < 0:
        raise InvalidArgument(f"Invalid {what} specified")
    return value


def parse_o_options(values: list[str]) -> tuple[dict[str, str], bool]:
    """Merge every ``-o`` string; return the options and whether ``help`` was asked."""
    from blocklayer.core.options import split_keyval
    merged: dict[str, str] = {}
    want_help = False
    for text in values:
        for part in _split_commas(text):
            if part in ("help", "?"):
                want_help = True
                continue
            if part:
                merged.update(split_keyval(part))
    return merged, want_help


def _split_commas(text: str) -> list[str]:
    """Split on single commas (``,,`` is a literal comma) keeping each piece escaped."""
    parts, cur, i = [], "", 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                cur += ",,"
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    parts.append(cur)
    return parts


OPT_TYPE_NAMES = {"size": "size", "bool": "bool (on/off)", "string": "str", "number": "num"}


def print_create_options_help(fmt: str, with_header: str = "Supported options:",
                              protocol_of: str | None = None) -> None:
    """``-o help``: the format's options, with the protocol's when a filename is known."""
    from blocklayer.core import registry
    cls = registry.get_driver(fmt)
    options = {o.name: o for o in cls.create_options}
    if protocol_of is None and with_header == "Supported options:" and not cls.is_protocol:
        with_header = f"Supported {fmt} options:"
    if protocol_of is not None and cls.is_format:
        try:
            proto = registry.get_driver(registry.protocol_for(protocol_of))
        except InvalidArgument:
            proto = None
        for o in proto.create_options if proto is not None else ():
            options.setdefault(o.name, o)
    print(with_header)
    for opt in sorted(options.values(), key=lambda o: o.name):
        head = f"{opt.name}=<{OPT_TYPE_NAMES.get(opt.type, opt.type)}>"
        print(f"  {head:<22} - {opt.help}")
    if protocol_of is None and not cls.is_protocol:
        print("\nThe protocol level may support further options.\n"
              "Specify the target filename to include those options.")


from ..qobject import dump_human, qdict_order, to_qjson  # noqa: E402,F401  (re-exported)


# ---------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------

class Progress:
    """``-p``: qemu-img's ``    (NN.NN/100%)\\r`` lines, or JSON lines of our own."""

    def __init__(self, enabled: bool, json_lines: bool = False, min_skip: float = 1.0) -> None:
        self.enabled = enabled or json_lines
        self.json_lines = json_lines
        self.min_skip = min_skip
        self.current = 0.0
        self.last_printed = -100.0
        if self.enabled:
            self._print()

    def _print(self) -> None:
        self.last_printed = self.current
        if self.json_lines:
            sys.stdout.write(json.dumps({"progress": round(self.current, 2)}) + "\n")
        else:
            sys.stdout.write("    (%3.2f/100%%)\r" % self.current)
        sys.stdout.flush()

    def set(self, percent: float) -> None:
        if not self.enabled:
            return
        self.current = max(0.0, min(100.0, percent))
        if self.current - self.last_printed >= self.min_skip or \
                (self.current == 100.0 and self.last_printed != 100.0):
            self._print()

    def fraction(self, done: int, total: int) -> None:
        self.set(100.0 * done / total if total else 100.0)

    def end(self) -> None:
        if not self.enabled:
            return
        if self.json_lines:
            sys.stdout.write(json.dumps({"progress": round(self.current, 2), "done": True}) + "\n")
        else:
            sys.stdout.write("    (%3.2f/100%%)\r\n" % self.current)
        sys.stdout.flush()


def progress_from(parsed: Any) -> Progress:
    json_lines = parsed.has("--json-progress")
    enabled = parsed.has("-p") and not parsed.has("-q")
    return Progress(enabled, json_lines)


def parse_rate(text: str | None) -> int:
    """``-r``: a rate limit in bytes per second, with qemu-img's error."""
    from blocklayer.core.options import parse_size

    from .args import suffix_hint
    if text is None:
        return 0
    try:
        return parse_size(text, "rate")
    except InvalidArgument:
        raise InvalidArgument(f"Invalid rate limit specified. {suffix_hint()}") from None
