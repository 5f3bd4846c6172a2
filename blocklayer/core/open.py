"""Opening images: a filename or options in, a graph of nodes out (QEMU's bdrv_open).

``open_node`` builds one node and, for formats, its ``file`` child and backing chain:

1. ``json:{...}`` filenames and dotted keys become one flat options dict;
2. ``driver`` (or ``fmt``) picks the driver; protocols open directly;
3. a format first opens its ``file`` child (``file.*`` options, or a node name), then,
   when no format was named, probes the first bytes of it (raw is the fallback, with
   QEMU's warning when opened writable);
4. the format driver opens; then its backing file, named in the header and resolved
   relative to the image, opens read-only with the format the header records (the
   chain opens in a loop, of any depth as in QEMU; a loop is an error);
5. the caller's permissions are applied from the top, which takes the image locks.
"""
from __future__ import annotations

import errno
import os
from typing import Any

from . import registry, safety
from .driver import BlockDriver, ChildRole, Perm
from .errors import BlockError, InvalidArgument, NodeNotFound
from ..host.memory import tune_malloc
from .node import BlockGraph, BlockNode
from .options import (CacheMode, OpenFlags, extract_prefix, parse_bool, parse_json_filename)

GENERIC_KEYS = ("driver", "node-name", "read-only", "auto-read-only", "cache.direct",
                "cache.no-flush", "discard", "detect-zeroes", "force-share", "filename")

RAW_PROBE_WARNING = (
    "WARNING: Image format was not specified for '{0}' and probing guessed raw.\n"
    "         Automatically detecting the format is dangerous for raw images, "
    "write operations on block 0 will be restricted.\n"
    "         Specify the 'raw' format explicitly to remove the restrictions.")


def warn(graph: BlockGraph, text: str) -> None:
    graph.emit("warning", {"message": text})


async def open_image(filename: str | None = None, options: dict[str, Any] | None = None, *,
                     fmt: str | None = None, read_only: bool = False,
                     graph: BlockGraph | None = None, flags: OpenFlags | None = None,
                     backing: bool = True, node_name: str | None = None,
                     shared: Perm = Perm.ALL, owner: object = "user",
                     snapshot: bool = False) -> BlockNode:
    """Open an image for a user outside the graph and take its permissions (locks).

    ``shared`` is what the user lets others do (a ``qemu-img convert`` source shares
    less than ``qemu-io`` does).  ``snapshot`` (QEMU's snapshot=on, ``qemu-io -s``): the
    image opens read-only under a temporary qcow2 overlay that takes the writes and
    is gone when closed.  Raises :class:`BlockError` with QEMU's wording.
    """
    tune_malloc()
    graph = graph or BlockGraph()
    flags = (flags or OpenFlags()).with_(read_only=read_only or (flags.read_only if flags else False))
    flags = safety.apply(flags)          # untrusted mode: nothing an image names opens
    if not backing:
        flags = flags.with_(no_backing=True)
    if flags.force_share and not flags.read_only:
        raise InvalidArgument("force-share=on can only be used with read-only images")
    if snapshot:
        base = await safety.bounded_open(open_node(
            graph, filename, dict(options or {}), fmt=fmt,
            flags=flags.with_(read_only=True), node_name=node_name), filename)
        node = await _temporary_overlay(graph, base, flags)
    else:
        node = await safety.bounded_open(open_node(
            graph, filename, dict(options or {}), fmt=fmt, flags=flags,
            node_name=node_name), filename)
    perm = Perm.CONSISTENT_READ
    if not flags.read_only:
        perm |= Perm.WRITE
    if flags.resize:
        perm |= Perm.RESIZE
    if flags.force_share:
        shared = Perm.ALL
    try:
        node.add_user(owner, perm, shared)
    except BaseException:
        await node.close()
        raise
    return node


async def _temporary_overlay(graph: BlockGraph, base: BlockNode, flags: OpenFlags) -> BlockNode:
    """A qcow2 overlay of ``base`` in a temporary file ($TMPDIR, else /var/tmp, as QEMU),
    unlinked at once: it lives as long as it is open."""
    import tempfile

    from .create import create_image
    fd, path = tempfile.mkstemp(prefix="vl.", dir=os.environ.get("TMPDIR") or "/var/tmp")
    os.close(fd)
    try:
        await create_image(path, "qcow2", options={"size": base.total_bytes}, graph=graph)
        return await open_node(graph, path, {"backing": base.name}, fmt="qcow2", flags=flags)
    except BaseException:
        await base.close()
        raise
    finally:
        os.unlink(path)


async def open_node(graph: BlockGraph, filename: str | None, options: dict[str, Any], *,
                    fmt: str | None = None, flags: OpenFlags = OpenFlags(),
                    node_name: str | None = None, chain: tuple[str, ...] = (),
                    role: ChildRole | None = None,
                    deferred: list[Any] | None = None) -> BlockNode:
    """Open one node (and, for a format, its file child and backing chain).

    ``deferred`` (a chain member opened by :func:`_open_backing`): the node's own
    backing is not opened but its options are appended there, so a chain of any depth
    opens in a loop, never by recursion."""
    options = dict(options)
    if filename and filename.startswith("json:"):
        options = {**parse_json_filename(filename), **options}
        filename = options.pop("filename", None)
    flags = _apply_generic_options(options, flags)
    if flags.copy_on_read and flags.read_only:
        raise InvalidArgument("Can't use copy-on-read on read-only device")
    node_name = options.pop("node-name", node_name)
    driver_name = options.pop("driver", None) or fmt
    if fmt and driver_name != fmt:
        raise InvalidArgument(f"Cannot use driver '{fmt}': the options name driver '{driver_name}'")
    if driver_name is None and filename is None and "file" not in options \
            and not any(k.startswith("file.") for k in options):
        raise InvalidArgument("Must specify either driver or file")

    if driver_name is not None:
        cls = registry.get_driver(driver_name)
        filename = _parse_driver_filename(cls, filename, options)
        if cls.is_protocol:
            return await _open_protocol(graph, cls, filename, options, flags, node_name)

    key = registry.get_driver(driver_name).file_child_key if driver_name else "file"
    file_node = await _open_file_child(graph, filename, options, flags, key)
    try:
        probed = False
        if driver_name is None:
            header = await file_node.read(0, min(registry.PROBE_BUF_SIZE, file_node.total_bytes)) \
                if file_node.total_bytes else b""
            driver_name = registry.probe_format(bytes(header), filename)
            probed = True
            if driver_name == "raw":
                options["x-probed"] = True
                if not flags.read_only:
                    warn(graph, RAW_PROBE_WARNING.format(_format_filename(filename, "raw", options, file_node)))
        cls = registry.get_driver(driver_name)
        if cls.is_protocol:
            raise InvalidArgument(f"'{driver_name}' is not a format driver")
        node = BlockNode(graph, cls, name=node_name, flags=flags, options=options,
                         filename=_format_filename(filename, driver_name, options, file_node))
        node.probed = probed  # type: ignore[attr-defined]
    except BaseException:
        await file_node.close()
        raise
    try:
        edge = node.attach_child(key, ChildRole.FILE, file_node)
    except BaseException:       # not attached: the reference taken on it is ours to drop
        await file_node.unref()
        await node.close(failed_open=True)
        raise
    try:
        edge.perm, edge.shared = Perm.NONE, Perm.ALL
        backing_opts = extract_prefix(options, "backing")
        backing_ref = options.pop("backing", _UNSET)
        _reject_unknown_options(cls, options, protocol=False)
        await node.driver.open(_driver_options(options), flags)
        node.refresh_limits()
        await node.refresh_total_bytes()
        if deferred is not None:
            deferred.append((backing_opts, backing_ref))
        else:
            await _open_backing(node, backing_opts, backing_ref, flags, chain)
    except BaseException:
        await node.close(failed_open=True)      # a failed open writes nothing more
        raise
    return node


_UNSET = object()


def _format_filename(filename: str | None, driver: str, options: dict[str, Any],
                     file_node: BlockNode) -> str:
    """A format node is named after its file; a protocol that names itself on open
    (nbd's pseudo-filename, as QEMU refreshes it) names the format node too; a file
    with a ``json:`` name gives the format node a ``json:`` name from its own options,
    as QEMU refreshes it."""
    if filename is not None and filename != file_node.options.get("filename"):
        return filename
    if not file_node.filename.startswith("json:"):
        return file_node.filename
    from .options import to_json_filename
    own = {k: v for k, v in options.items() if not k.startswith("x-")}
    child = {"driver": file_node.format_name, **dict(file_node.options or {})}
    return to_json_filename({"driver": driver, **own,
                             **{f"file.{k}": v for k, v in child.items()}})


CHILD_PREFIXES = ("file", "backing", "data-file", "image")


def _reject_unknown_options(cls: type[BlockDriver], options: dict[str, Any], protocol: bool) -> None:
    """QEMU's error for an option the driver does not know."""
    known = set(cls.open_options) | {"x-probed", "filename"}
    for key in options:
        head = key.split(".", 1)[0]
        if key in known or head in known or head in CHILD_PREFIXES:
            continue
        if protocol:
            raise InvalidArgument(f"Block protocol '{cls.format_name}' doesn't support "
                                  f"the option '{key}'")
        raise InvalidArgument(f"Block format '{cls.format_name}' does not support "
                              f"the option '{key}'")


def _driver_options(options: dict[str, Any]) -> dict[str, Any]:
    return dict(options)


def _apply_generic_options(options: dict[str, Any], flags: OpenFlags) -> OpenFlags:
    """Consume the options every node understands, returning the node's flags."""
    if "read-only" in options:
        flags = flags.with_(read_only=parse_bool(options.pop("read-only"), "read-only"))
    options.pop("auto-read-only", None)
    if "force-share" in options:
        flags = flags.with_(force_share=parse_bool(options.pop("force-share"), "force-share"))
    cache = flags.cache
    if "cache.direct" in options:
        cache = CacheMode(cache.writeback, parse_bool(options.pop("cache.direct"), "cache.direct"),
                          cache.no_flush)
    if "cache.no-flush" in options:
        cache = CacheMode(cache.writeback, cache.direct,
                          parse_bool(options.pop("cache.no-flush"), "cache.no-flush"))
    flags = flags.with_(cache=cache)
    if "discard" in options:
        mode = str(options.pop("discard"))
        if mode not in ("ignore", "off", "unmap", "on"):
            raise InvalidArgument(f"Invalid discard option: {mode}")
        flags = flags.with_(discard_unmap=mode in ("unmap", "on"))
    if "detect-zeroes" in options:
        mode = str(options.pop("detect-zeroes"))
        if mode not in ("off", "on", "unmap"):
            raise InvalidArgument(f"Parameter 'detect-zeroes' does not accept value '{mode}'")
        if mode == "unmap" and not flags.discard_unmap:
            raise InvalidArgument("setting detect-zeroes to unmap is not allowed without "
                                  "setting discard operation to unmap")
        flags = flags.with_(detect_zeroes=mode)
    if "copy-on-read" in options:
        flags = flags.with_(copy_on_read=parse_bool(options.pop("copy-on-read"), "copy-on-read"))
    return flags


def _parse_driver_filename(cls: type[BlockDriver], filename: str | None,
                           options: dict[str, Any]) -> str | None:
    """A driver that has its own filename syntax (``blkdebug:CONFIG:IMAGE``) turns it into
    options (explicit ones win); what is left is the filename of its file child."""
    if not filename or not filename.startswith(cls.format_name + ":"):
        return filename
    answer = cls.parse_filename(filename)
    if answer is None:
        return filename
    parsed, rest = answer
    for key, value in parsed.items():
        options.setdefault(key, value)
    return rest


async def _open_protocol(graph: BlockGraph, cls: type[BlockDriver], filename: str | None,
                         options: dict[str, Any], flags: OpenFlags,
                         node_name: str | None) -> BlockNode:
    if filename is not None and "filename" not in options:
        options["filename"] = filename
    name = str(options.get("filename") or "")
    if not name:
        name = cls.exact_filename(options) or ""    # QEMU's refreshed name: "null-co://"
    if not name:
        from .options import to_json_filename
        name = to_json_filename({"driver": cls.format_name, **options})
    node = BlockNode(graph, cls, name=node_name, flags=flags, options=options, filename=name)
    try:
        _reject_unknown_options(cls, options, protocol=True)
        await node.driver.open(options, flags)
        node.refresh_limits()
        await node.refresh_total_bytes()
    except BaseException:
        node.closed = True
        graph.remove(node)
        raise
    return node


async def _open_file_child(graph: BlockGraph, filename: str | None, options: dict[str, Any],
                           flags: OpenFlags, key: str = "file") -> BlockNode:
    ref = options.pop(key, None)
    if isinstance(ref, str):
        node = graph.find(ref)
        return node.ref()
    file_opts = extract_prefix(options, key)
    fname = file_opts.pop("filename", None) or filename
    driver = file_opts.get("driver") or (registry.protocol_for(fname) if fname else None)
    if driver is None:
        raise InvalidArgument("A block device must be specified for \"file\"")
    file_opts["driver"] = driver
    # QEMU: lower layers default to discard=unmap; the format decides what to pass down
    file_flags = flags.with_(copy_on_read=False, detect_zeroes="off", discard_unmap=True)
    return await open_node(graph, fname, file_opts, flags=file_flags, role=ChildRole.FILE)


async def _open_backing(node: BlockNode, backing_opts: dict[str, Any], backing_ref: Any,
                        flags: OpenFlags, chain: tuple[str, ...]) -> None:
    """Open the backing chain named in the image (or given in options), read-only.

    A loop, not a recursion: each member opens with its own backing deferred, and the
    chain is linked bottom-up once every member is open (QEMU 7.2 reads chains of a
    thousand images and has no depth limit; a loop is an error).  A member that fails
    closes the members opened before it and reports with one "Could not open backing
    file: " per level, as QEMU's nested opens do."""
    opened: list[tuple[BlockNode, BlockNode]] = []
    seen = set(chain)
    cur, depth = node, 0
    try:
        while True:
            step = await _backing_step(cur, backing_opts, backing_ref, flags, seen, depth)
            if step is None:
                break
            backing, (backing_opts, backing_ref) = step
            opened.append((cur, backing))
            cur, depth = backing, depth + 1
        for overlay, backing in reversed(opened):
            overlay.attach_child("backing", ChildRole.BACKING, backing)
            await _after_backing_change(overlay)
    except BaseException:
        for _overlay, backing in reversed(opened):
            if not backing.parents:
                await backing.close()
        raise


async def _backing_step(node: BlockNode, backing_opts: dict[str, Any], backing_ref: Any,
                        flags: OpenFlags, seen: set[str],
                        depth: int) -> tuple[BlockNode, Any] | None:
    """Open the backing file of one chain member, its own backing deferred; None when
    it has none (or it was given as a node, attached here)."""
    name, fmt = node.driver.backing_file_name()
    node.backing_file, node.backing_format = name, fmt
    if not node.driver.supports_backing or flags.no_backing:
        return None
    if backing_ref is None:              # "backing": null
        return None
    if isinstance(backing_ref, str):
        target = node.graph.find(backing_ref)
        node.attach_child("backing", ChildRole.BACKING, target.ref())
        await _after_backing_change(node)
        return None
    if not name and not backing_opts:
        return None
    prefix = "Could not open backing file: " * (depth + 1)
    if not flags.allow_external_files and not backing_opts:
        raise BlockError(f"{prefix}opening '{name}' named by the image is not allowed",
                         errno.EPERM)
    path = backing_opts.pop("filename", None) or backing_opts.pop("file.filename", None) \
        or full_backing_filename(node.filename, name or "")
    fmt = backing_opts.pop("driver", None) or fmt
    seen.add(_canonical(node.filename))
    if _canonical(path) in seen:
        raise BlockError(f"{prefix}backing file '{path}' creates an infinite loop")
    bflags = flags.with_(read_only=True, copy_on_read=False, detect_zeroes="off",
                         discard_unmap=False)
    deferred: list[Any] = []
    try:
        backing = await open_node(node.graph, path, backing_opts, fmt=fmt, flags=bflags,
                                  role=ChildRole.BACKING, deferred=deferred)
    except NodeNotFound:
        raise
    except BlockError as exc:
        raise exc.with_prefix(prefix)
    return backing, deferred[0] if deferred else ({}, _UNSET)


async def _after_backing_change(node: BlockNode) -> None:
    await node.driver.backing_changed()


def full_backing_filename(overlay: str, backing: str) -> str:
    """A backing name relative to the overlay's directory, as QEMU resolves it."""
    if not backing or os.path.isabs(backing) or ":" in backing.split("/", 1)[0] \
            or backing.startswith("json:"):
        return backing
    if overlay.startswith("json:") or not overlay:
        return backing
    base = os.path.dirname(overlay)
    return os.path.join(base, backing) if base else backing


def _canonical(path: str) -> str:
    if path.startswith("json:") or "://" in path:
        return path
    return os.path.realpath(path)
