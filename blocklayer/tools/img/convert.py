"""``convert``: copy one or more images (concatenated) into a new or existing one.

The requests are qemu-img's (:mod:`.convert_plan`): sources laid out in whole sectors,
block status asked of each (of the whole chain, or of the top layer when the target
gets a backing file), a data request of at most one buffer, whole clusters when
compressing, which may join the end of one source to the start of the next.  Only
data is read; zero runs of at least ``-S`` bytes are left unallocated.  ``-m``
requests run as asyncio tasks, writes stay in order unless ``-W``; compressed clusters
and runs that write nothing are joined into larger requests, which changes nothing on
the target.  With ``-C`` data is copied with copy offloading (no zero detection); the
first copy that cannot be offloaded is read and written instead, and so is everything
after it.  :class:`Converter` is the copy engine (:mod:`blocklayer.jobs.copy`) with
this plan and these steps.
"""
from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterable, AsyncIterator, Iterator

from blocklayer.core import bitmaps
from blocklayer.core.driver import Cap, Status, StatusShape
from blocklayer.core.errors import BlockError, InvalidArgument
from blocklayer.jobs.copy import Chunk, CopyEngine, Kind, PauseFn
from blocklayer.jobs.ratelimit import RateLimit
from blocklayer.jobs.zeroes import Piece, ZeroDetect, starts_nonzero

from .args import parse, prog, suffix_hint
from .common import (Progress, close_all, new_graph, open_img, parse_o_options,
                     parse_rate, print_create_options_help, progress_from)
from .convert_plan import SECTOR, Planner, Rules, layout

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode

BUF_SIZE = 2 << 20            # qemu-img's I/O buffer (IO_BUF_SIZE)
MAX_BUF = 16 << 20            # largest buffer (MAX_BUF_SECTORS)
JOIN_MAX = 1 << 30            # requests that write nothing (or zeroes) joined up to this
SPARSE_LIMIT = 16 << 20       # largest -S value


@dataclass
class Settings:
    compressed: bool = False
    copy_range: bool = False      # -C (turned off by the first copy that cannot offload)
    min_sparse: int = 4096
    parallel: int = 8
    out_of_order: bool = False
    rate: int = 0
    salvage: bool = False
    quiet: bool = False
    target_has_backing: bool = False
    target_backing: int = -1      # bytes of a new target's backing file (-1: unknown)
    zero_init: bool = False


def sectors(size: int) -> int:
    """``size`` rounded up to whole 512-byte sectors."""
    return -(-size // SECTOR) * SECTOR


@dataclass
class Source:
    node: "BlockNode"
    start: int                # where it begins in the concatenation
    size: int                 # its size in bytes
    end: int                  # where the next one begins (whole sectors)

    def read_end(self, end: int) -> int:
        """How much of ``[.., end)`` can be read: the rest of its last sector is zeroes."""
        return min(end, self.start + self.size)


def _cluster_size(node: "BlockNode") -> int:
    try:
        return node.driver.get_info().cluster_size
    except BlockError:
        return 0


def _source_alignment(node: "BlockNode") -> int:
    """Sectors a block-status run of a source is cut back to (qemu-img: its request
    alignment or its cluster size)."""
    align = -(-node.limits.request_alignment // SECTOR)
    return max(align, _cluster_size(node) // SECTOR, 1)


def _status_as_qemu(node: "BlockNode", zero_runs_skipped: bool) -> None:
    """Block status of ``node`` and its backing chain answered in QEMU's pieces: where
    a run is cut decides where requests start, and so what zero detection sees.  When
    zero runs write nothing (a target that reads as zeroes, -S > 0), runs that read as
    zeroes may go on past QEMU's cuts: the request after them starts where they end
    either way, and a 1 TiB image with little data costs a few answers, not one per L2
    table.  (Otherwise a zero request's cut decides which target clusters it covers
    whole, and so which become zero clusters.)"""
    layer: BlockNode | None = node
    while layer is not None:
        layer.driver.set_status_shape(StatusShape.HOLES if zero_runs_skipped
                                      else StatusShape.QEMU)
        layer = layer.filtered_backing()


class _Offload:
    """The payload of a data chunk to copy with copy offloading (-C)."""


OFFLOAD = _Offload()


# ---------------------------------------------------------------------------------------
# convert on the copy engine
# ---------------------------------------------------------------------------------------

class Converter(CopyEngine):
    """The copy engine with convert's plan (qemu-img's requests over the concatenated
    sources), reads across sources with --salvage, compressed writes, -C offloading
    and qemu-img's error messages."""

    def __init__(self, sources: list["BlockNode"], target: "BlockNode", settings: Settings,
                 progress: Progress) -> None:
        for node in sources:
            _status_as_qemu(node, settings.zero_init and bool(settings.min_sparse))
        parts = layout([n.total_bytes for n in sources], [_source_alignment(n) for n in sources])
        self.sources = [Source(n, p.start * SECTOR, n.total_bytes, (p.start + p.sectors) * SECTOR)
                        for n, p in zip(sources, parts)]
        s = self.s = settings
        super().__init__(None, target, self.sources[-1].end if self.sources else 0,
                         parallel=s.parallel, in_order=not s.out_of_order, read_ahead=True,
                         zeroes=ZeroDetect(s.min_sparse, target.limits.request_alignment),
                         target_zeroed=s.zero_init, rate=RateLimit(s.rate) if s.rate else None,
                         progress=progress.fraction)
        self.cluster = _cluster_size(target)
        self.planner = Planner(parts, self._rules(), self._status)

    def _rules(self) -> Rules:
        s, limits = self.s, self.target.limits
        buf = min(MAX_BUF, max(BUF_SIZE, limits.opt_transfer, limits.pdiscard_alignment))
        return Rules(total=self.total // SECTOR,
                     buf=(self.cluster if s.compressed else buf) // SECTOR,
                     compressed=s.compressed, cluster=max(self.cluster // SECTOR, 1),
                     min_sparse=s.min_sparse // SECTOR,
                     target_has_backing=s.target_has_backing,
                     target_backing=s.target_backing // SECTOR if s.target_backing >= 0 else -1,
                     zero_runs_skipped=s.zero_init and bool(s.min_sparse))

    async def run(self, plan: AsyncIterable[Chunk] | None = None,
                  pause: PauseFn | None = None) -> None:
        await super().run(self._chunks() if plan is None else plan, pause)

    # ---- what to copy ------------------------------------------------------------------
    async def _status(self, i: int, off: int, length: int) -> tuple[Status, int]:
        """Block status of source ``i`` (of its top layer alone when the target gets a
        backing file); with --salvage an error is retried on a quarter of the range, down
        to one sector that is then read as data."""
        node = self.sources[i].node
        while True:
            try:
                if self.s.target_has_backing:
                    st = await node.block_status(off, length, True)
                else:
                    st = await node.block_status_above(None, off, length, True)
                return st.flags, st.length or length
            except BlockError as exc:
                if not self.s.salvage:
                    raise BlockError(f"error while reading block status at offset {off}: "
                                     f"{exc.strerror}", exc.errno) from None
                if length <= SECTOR:
                    self._warn(f"error while reading block status at offset {off}: "
                               f"{exc.strerror}")
                    return Status.DATA, SECTOR
                length = -(-length // (4 * SECTOR)) * SECTOR

    def _warn(self, message: str) -> None:
        if not self.s.quiet:
            sys.stderr.write(f"{prog()}: warning: {message}\n")

    def _joins(self, a: Chunk, b: Chunk) -> bool:
        """Whether request ``b`` can ride with ``a`` (the one just before it) without
        changing what reaches the target: compressed clusters are judged one by one,
        and runs that write nothing do not care how they are cut."""
        if a.kind is not b.kind:
            return False
        if a.kind is Kind.SKIP or (a.kind is Kind.ZERO and self.s.zero_init):
            return a.length + b.length <= JOIN_MAX
        if not self.s.compressed:
            return False        # qemu-img's requests: zero detection works on each
        limit = JOIN_MAX if a.kind is Kind.ZERO else BUF_SIZE
        return a.length + b.length <= limit

    async def _chunks(self) -> AsyncIterator[Chunk]:
        """convert's plan: the planner's requests, joined where that changes nothing."""
        pend: Chunk | None = None
        async for req in self.planner.requests():
            chunk = Chunk(req.sector * SECTOR, req.count * SECTOR, req.kind)
            if pend is not None and self._joins(pend, chunk):
                pend.length += chunk.length
                continue
            if pend is not None:
                yield pend
            pend = chunk
        if pend is not None:
            yield pend

    # ---- the engine's steps ------------------------------------------------------------
    async def payload(self, chunk: Chunk) -> Any:
        """Offloaded data copies nothing through us; compressed data is cut into
        clusters; the rest as the engine cuts it (-S)."""
        if chunk.kind is Kind.DATA and self.s.copy_range:
            return OFFLOAD
        if not self.s.compressed or (chunk.kind is not Kind.DATA
                                     and chunk.kind is not Kind.FILL):
            return await super().payload(chunk)
        data = (await self.read(chunk.offset, chunk.length) if chunk.kind is Kind.DATA
                else bytes(chunk.length))
        return self._compressed_plan(chunk.offset, data)

    async def write(self, chunk: Chunk, payload: Any) -> None:
        if payload is OFFLOAD:
            await self._copy_offloaded(chunk)
            return
        try:
            if self.s.compressed and payload is not None:
                await self._write_compressed(payload)
            else:
                await super().write(chunk, payload)
        except BlockError as exc:
            if exc.message.startswith("error while"):
                raise
            raise BlockError(f"error while writing at byte {chunk.offset}: {exc.strerror}",
                             exc.errno) from None

    def may_overlap(self, chunk: Chunk, payload: Any) -> bool:
        return not self.s.compressed and super().may_overlap(chunk, payload)

    async def _copy_offloaded(self, chunk: Chunk) -> None:
        """``-C``: copy a data chunk with copy offloading, each source's share on its
        own.  If that fails for any reason, as with qemu-img, the chunk is read and
        written, and so is every chunk after it (a real I/O error then shows up there,
        named as usual).  A share that ends inside a source's last sector (zeroes to
        pad) is read and written too."""
        spans = list(self._spans(chunk.offset, chunk.length))
        if all(src.read_end(b) == b for src, _, b in spans):
            try:
                for src, a, b in spans:
                    await src.node.copy_range(a - src.start, self.target, a, b - a)
            except BlockError:
                self.s.copy_range = False
            else:
                await self.throttle(chunk.length)
                return
        data = await self.read(chunk.offset, chunk.length)
        await self.write(chunk, self.zeroes.pieces(chunk.offset, data)
                         if self.zeroes is not None else [(chunk.offset, chunk.length, data)])

    # ---- reading across sources --------------------------------------------------------
    def _spans(self, offset: int, length: int) -> Iterator[tuple[Source, int, int]]:
        """Each source's share ``(source, start, end)`` of a range of the concatenation."""
        end = offset + length
        i = self.planner.part_at(offset // SECTOR)
        while offset < end:
            src = self.sources[i]
            stop = min(end, src.end)
            if stop > offset:
                yield src, offset, stop
                offset = stop
            i += 1

    async def _read_range(self, offset: int, length: int) -> bytes | bytearray:
        spans = list(self._spans(offset, length))
        if len(spans) == 1 and spans[0][0].read_end(spans[0][2]) == spans[0][2]:
            src, a, b = spans[0]
            return await src.node.read(a - src.start, b - a)
        out = bytearray(length)
        for src, a, b in spans:
            stop = src.read_end(b)
            if stop > a:
                out[a - offset:stop - offset] = await src.node.read(a - src.start, stop - a)
        return out

    async def read(self, offset: int, length: int) -> bytes | bytearray:
        try:
            return await self._read_range(offset, length)
        except BlockError as exc:
            if not self.s.salvage:
                at = (await self._failing_cluster(offset, length) if self.s.compressed
                      else offset)
                raise BlockError(f"error while reading at byte {at}: "
                                 f"{exc.strerror}", exc.errno) from None
        return await self._salvage(offset, length)

    async def _salvage(self, offset: int, length: int) -> bytearray:
        """--salvage: each source's share read whole, or sector by sector if that
        fails; an unreadable sector is zeroes and a warning naming its source offset."""
        out = bytearray(length)
        for src, a, b in self._spans(offset, length):
            try:
                out[a - offset:b - offset] = await self._read_range(a, b - a)
                continue
            except BlockError:
                pass
            for pos in range(a, b, SECTOR):
                stop = src.read_end(pos + SECTOR)
                if stop <= pos:
                    continue
                try:
                    out[pos - offset:stop - offset] = await src.node.read(pos - src.start,
                                                                          stop - pos)
                except BlockError as exc:
                    self._warn(f"error while reading offset {pos - src.start}: "
                               f"{exc.strerror}")
        return out

    async def _failing_cluster(self, offset: int, length: int) -> int:
        """The first target cluster of a request that cannot be read (qemu-img reads one
        cluster per request when compressing, and names it)."""
        pos, end = offset, offset + length
        while pos < end:
            stop = min(pos + self.cluster, end)
            try:
                await self._read_range(pos, stop - pos)
            except BlockError:
                return pos
            pos = stop
        return offset

    # ---- compressed writes -------------------------------------------------------------
    def _compressed_plan(self, off: int, data: bytes | bytearray) -> list[Piece]:
        """Cut at target clusters: ``(offset, length, None)`` for zero runs (unless
        -S 0), ``(offset, length, buffer)`` for runs of whole clusters to write
        compressed, and the image's partial last cluster alone.  The target starts
        compressing them now, ahead of their turn."""
        from blocklayer.core.io import is_zero
        c, mv, end = self.cluster, memoryview(data), off + len(data)
        maybe_zero = self.s.min_sparse and not starts_nonzero(data, 0, c)
        plan: list[list[Any]] = []
        for pos in range(off, end, c):
            stop = min(pos + c, end)
            partial = stop - pos < c
            if self.s.min_sparse and (maybe_zero or partial) and is_zero(mv[pos - off:stop - off]):
                kind = "zero"
            else:
                kind = "alone" if partial else "data"
            if kind != "alone" and plan and plan[-1][2] == kind:
                plan[-1][1] = stop - plan[-1][0]
            else:
                plan.append([pos, stop - pos, kind])
        driver = self.target.driver
        size = self.target.total_bytes
        out: list[Piece] = []
        for pos, n, kind in plan:
            buf = None if kind == "zero" else mv[pos - off:pos - off + n]
            if buf is not None and (kind == "data" or pos + n == size):
                driver.compress_ahead(pos, buf)
            out.append((pos, n, buf))
        return out

    async def _write_compressed(self, plan: list[Piece]) -> None:
        from blocklayer.core.driver import ReqFlag
        for pos, n, buf in plan:
            try:
                if buf is None:
                    await self.write_zeroes(pos, n)
                else:
                    await self.throttle(n)
                    await self.target.write(pos, buf, ReqFlag.COMPRESSED)
            except BlockError as exc:        # named by the cluster, as one per request
                at = pos if exc.guest_offset is None else exc.guest_offset
                raise BlockError(f"error while writing at byte {at}: {exc.strerror}",
                                 exc.errno) from None


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    p = parse(argv, "hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:",
              ["help", "object=", "image-opts", "target-image-opts", "salvage",
               "target-is-zero", "bitmaps", "skip-broken-bitmaps", "force-share",
               "json-progress"])
    _check_snapshot_param(p.last("-l"))
    min_sparse = _sparse_size(p.last("-S", default="4k") or "")
    parallel = _coroutines(p.last("-m"))
    rate = parse_rate(p.last("-r"))
    _check_option_mix(p)
    out_fmt = p.last("-O")
    opts, want_help = parse_o_options(p.all("-o"))
    if want_help:
        return _create_options_help(out_fmt or "raw", p.args)
    if len(p.args) < 2:
        raise InvalidArgument("Must specify image file name")
    settings = Settings(compressed=p.has("-c"), copy_range=p.has("-C"),
                        min_sparse=min_sparse, parallel=parallel,
                        out_of_order=p.has("-W"), rate=rate, salvage=p.has("--salvage"),
                        quiet=p.has("-q"))
    return asyncio.run(convert(p, p.args[:-1], p.args[-1], out_fmt or "raw", opts, settings))


def _check_snapshot_param(spec: str | None) -> None:
    """``-l snapshot.id=...,snapshot.name=...`` takes no other keys."""
    if spec is None or not spec.startswith("snapshot."):
        return
    for part in spec.split(","):
        key = part.split("=", 1)[0]
        if key not in ("snapshot.id", "snapshot.name"):
            raise InvalidArgument(f"Invalid parameter '{key}'\n"
                                  f"{prog()}: Failed in parsing snapshot param '{spec}'")


def _sparse_size(text: str) -> int:
    from blocklayer.core.options import parse_size
    try:
        size = parse_size(text, "x")
    except InvalidArgument:
        raise InvalidArgument("Invalid buffer size for sparse output specified. "
                              f"{suffix_hint()}") from None
    if size % 512 or size > SPARSE_LIMIT:
        raise InvalidArgument("Invalid buffer size for sparse output specified. Valid sizes "
                              f"are multiples of 512 up to {SPARSE_LIMIT}. Select 0 to "
                              "disable sparse detection (fully allocates output).")
    return size


def _coroutines(text: str | None) -> int:
    if text is None:
        return 8
    try:
        parallel = int(text)
    except ValueError:
        parallel = 0
    if not 1 <= parallel <= 16:
        raise InvalidArgument("Invalid number of coroutines. Allowed number of "
                              "coroutines is between 1 and 16")
    return parallel


def _check_option_mix(p: Any) -> None:
    """Options that exclude or need each other, in qemu-img's order."""
    rules = [
        (p.has("--skip-broken-bitmaps") and not p.has("--bitmaps"),
         "Use of --skip-broken-bitmaps requires --bitmaps"),
        (p.has("-c") and p.has("-C"), "Cannot enable copy offloading when -c is used"),
        (p.has("-S") and p.has("-C"), "Cannot enable copy offloading when -S is used"),
        (p.has("-C") and p.has("--salvage"), "Cannot use copy offloading in salvaging mode"),
        (p.has("--target-image-opts") and not p.has("-n"),
         "--target-image-opts requires use of -n flag"),
        (p.has("-n") and p.has("-o"), "-o has no effect when skipping image creation"),
        (p.has("--target-is-zero") and not p.has("-n"),
         "--target-is-zero requires use of -n flag"),
    ]
    for broken, message in rules:
        if broken:
            raise InvalidArgument(message)


def _create_options_help(fmt: str, args: list[str]) -> int:
    from blocklayer.core import registry
    try:
        registry.get_driver(fmt)
    except InvalidArgument:
        raise InvalidArgument(f"Unknown file format '{fmt}'") from None
    if len(args) >= 1:
        print_create_options_help(fmt, protocol_of=args[-1])
    else:
        print_create_options_help(fmt, f"Supported {fmt} options:")
        print("\nThe protocol level may support further options.\n"
              "Specify the target filename to include those options.")
    return 0


async def _load_snapshot(node: "BlockNode", spec: str) -> None:
    from blocklayer.core.options import split_keyval
    sid: str | None
    name: str | None
    if spec.startswith("snapshot."):
        kv = split_keyval(spec)
        sid, name = kv.get("snapshot.id"), kv.get("snapshot.name")
        try:
            await node.driver.snapshot_load_tmp(sid, name)
        except BlockError as exc:
            raise BlockError(f"Failed to load snapshot: {exc.message}", exc.errno) from None
        return
    try:                        # an ID or a name
        await node.driver.snapshot_load_tmp(spec, None)
    except BlockError:
        try:
            await node.driver.snapshot_load_tmp(None, spec)
        except BlockError as exc:
            raise BlockError(f"Failed to load snapshot: {exc.message}", exc.errno) from None
    await node.refresh_total_bytes()


async def _snapshot(spec: str | None, sources: list["BlockNode"]) -> None:
    """``-l``: ``snapshot.id=,snapshot.name=`` loads into the first source whatever
    follows; a bare name cannot be asked of several sources."""
    if spec is None:
        return
    if not spec.startswith("snapshot.") and len(sources) > 1:
        raise InvalidArgument("No support for concatenating multiple snapshot")
    await _load_snapshot(sources[0], spec)


def _create_options(fmt: str, opts: dict[str, str], size: int, backing: str | None,
                    backing_fmt: str | None) -> dict[str, Any]:
    """``-o`` checked against the format, then the size and -B/-F laid over it."""
    from blocklayer.core import registry
    from blocklayer.core.create import all_create_options, normalize_create_options
    try:
        registry.get_driver(fmt)
    except InvalidArgument:
        raise InvalidArgument(f"Unknown file format '{fmt}'") from None
    normalized = normalize_create_options(fmt, {**opts, "size": size})
    names = {o.name for o in all_create_options(fmt)}
    for key, value, what in (("backing_file", backing, "Backing file"),
                             ("backing_fmt", backing_fmt, "Backing file format")):
        if value is None:
            continue
        if key not in names:
            raise InvalidArgument(f"{what} not supported for file format '{fmt}'")
        normalized[key] = value
    return normalized


def _check_compression(fmt: str | None, create_opts: dict[str, Any] | None) -> None:
    from blocklayer.core import registry
    if fmt is not None and not registry.get_driver(fmt).caps & Cap.COMPRESSED_WRITE:
        raise InvalidArgument("Compression not supported for this file format")
    opts = create_opts or {}
    if opts.get("encryption") or opts.get("encrypt.format"):
        raise InvalidArgument("Compression and encryption not supported at the same time")
    if opts.get("preallocation", "off") != "off":
        raise InvalidArgument("Compression and preallocation not supported at the same time")


def _check_target_backing(sources: list["BlockNode"], backing: str | None,
                          create_opts: dict[str, Any] | None, zero: bool) -> bool:
    """Whether to go on: qemu-img 7.2 refuses --target-is-zero with a backing file but
    converts nothing and exits 0."""
    if not backing:
        return True
    if zero:
        sys.stderr.write(f"{prog()}: Cannot use --target-is-zero when the destination image "
                         "has a backing file\n")
        return False
    if len(sources) > 1:
        raise InvalidArgument("Having a backing file for the target makes no sense when "
                              "concatenating multiple input images")
    if create_opts is not None and not create_opts.get("backing_fmt"):
        raise InvalidArgument("Use of backing file requires explicit backing format")
    return True


async def convert(p: Any, src_names: list[str], out_name: str, out_fmt: str,
                  opts: dict[str, str], s: Settings) -> int:
    graph = new_graph()
    fmt = p.last("-f")
    creating = not p.has("-n")
    sources: list[BlockNode] = []
    target: BlockNode | None = None
    try:
        for name in src_names:
            sources.append(await open_img(graph, name, fmt=fmt, image_opts=p.has("--image-opts"),
                                          read_only=True, force_share=p.has("-U"),
                                          cache=p.last("-T"), src_cache=True))
        await _snapshot(p.last("-l"), sources)
        total = sum(sectors(n.total_bytes) for n in sources)
        create_opts = None
        backing = p.last("-B")
        if creating:
            create_opts = _create_options(out_fmt, opts, total, backing, p.last("-F"))
            backing = create_opts.get("backing_file")
        if not _check_target_backing(sources, backing, create_opts, p.has("--target-is-zero")):
            return 0
        if s.compressed:
            _check_compression(out_fmt if creating else None, create_opts)
        if p.has("--bitmaps"):
            _check_bitmap_source(sources)
        if create_opts is not None:
            await _create(out_name, out_fmt, create_opts, graph)
        target = await open_img(graph, out_name, fmt=None if p.has("--target-image-opts")
                                else out_fmt, image_opts=p.has("--target-image-opts"),
                                read_only=False, cache=p.last("-t") or "unsafe",
                                backing=bool(backing) or not creating,
                                unmap=bool(s.min_sparse))
        await _prepare_target(target, s, total, creating, bool(backing),
                              p.has("--target-is-zero"))
        progress = progress_from(p)
        await Converter(sources, target, s, progress).run()
        if s.compressed:
            await _end_compressed(target)
        if p.has("--bitmaps"):
            await _copy_bitmaps(sources[0], target, p.has("--skip-broken-bitmaps"))
        await target.flush()
        progress.end()
    finally:
        await close_all(target, *sources)
    return 0


async def _create(out_name: str, out_fmt: str, options: dict[str, Any],
                  graph: Any) -> None:
    from blocklayer.core.create import create_image
    try:
        await create_image(out_name, out_fmt, options=options, graph=graph)
    except BlockError as exc:
        raise BlockError(f"{out_name}: error while converting {out_fmt}: {exc.message}",
                         exc.errno) from None


async def _prepare_target(target: "BlockNode", s: Settings, total: int, creating: bool,
                          has_backing: bool, is_zero: bool) -> None:
    """Checks on the opened target, and what the copy may assume about it."""
    if s.compressed and not target.can(Cap.COMPRESSED_WRITE):
        raise InvalidArgument("Compression not supported for this file format")
    if not creating and target.total_bytes < total:
        raise InvalidArgument("output file is smaller than input file")
    s.target_has_backing = has_backing
    if has_backing and creating:
        below = target.filtered_backing()
        s.target_backing = sectors(below.total_bytes) if below is not None else -1
    s.zero_init = is_zero or (creating and bool(s.min_sparse) and not has_backing
                              and target.driver.has_zero_init())


async def _end_compressed(target: "BlockNode") -> None:
    """qemu-img ends a compressed copy with an empty compressed write, after which the
    image file ends on a whole sector."""
    await target.driver.end_compressed()


def _check_bitmap_source(sources: list["BlockNode"]) -> None:
    if len(sources) > 1:
        raise InvalidArgument("Copying bitmaps only possible with single source")
    if not bitmaps.supported(sources[0]):
        raise InvalidArgument("Source lacks bitmap support")


async def _copy_bitmaps(src: "BlockNode", dst: "BlockNode", skip_broken: bool) -> None:
    """``--bitmaps``: copy persistent bitmaps through the drivers' optional bitmap API."""
    if not bitmaps.supported(dst):
        raise InvalidArgument("Destination lacks bitmap support")
    for bm in bitmaps.list_bitmaps(src):
        name = bm["name"]
        if bm.get("inconsistent") or "in-use" in bm.get("flags", ()):
            if skip_broken:
                sys.stderr.write(f"{prog()}: warning: Skipping inconsistent bitmap '{name}'\n")
                continue
            raise BlockError(f"Cannot copy inconsistent bitmap '{name}'")
        await bitmaps.copy(src, dst, name)
