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
after it.
"""
from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from blocklayer.core import bitmaps
from blocklayer.core.driver import Cap, Status, StatusShape
from blocklayer.core.errors import BlockError, InvalidArgument

from .args import parse, prog, suffix_hint
from .common import (Progress, close_all, new_graph, open_img, parse_o_options,
                     parse_rate, print_create_options_help, progress_from)
from .convert_plan import SECTOR, Kind, Planner, Rules, layout, sparse_pieces

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


@dataclass
class Item:
    seq: int
    offset: int               # global offset (sources concatenated)
    length: int
    kind: Kind


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


def _pow2floor(n: int) -> int:
    return 1 << (n.bit_length() - 1) if n > 0 else 0


# ---------------------------------------------------------------------------------------
# The copy engine
# ---------------------------------------------------------------------------------------

class Converter:
    def __init__(self, sources: list["BlockNode"], target: "BlockNode", settings: Settings,
                 progress: Progress) -> None:
        for node in sources:
            _status_as_qemu(node, settings.zero_init and bool(settings.min_sparse))
        parts = layout([n.total_bytes for n in sources], [_source_alignment(n) for n in sources])
        self.sources = [Source(n, p.start * SECTOR, n.total_bytes, (p.start + p.sectors) * SECTOR)
                        for n, p in zip(sources, parts)]
        self.total = self.sources[-1].end if self.sources else 0
        self.target = target
        self.s = settings
        self.progress = progress
        self.done = 0
        self.next_write = 0
        self.turns: dict[int, asyncio.Future[None]] = {}   # waiting workers by seq
        self.written = 0
        self.t0 = time.monotonic()
        self.cluster = _cluster_size(target)
        # zero runs in a buffer are moved to this boundary (sectors, a power of two)
        self.alignment = max(_pow2floor(settings.min_sparse // SECTOR),
                             -(-target.limits.request_alignment // SECTOR))
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

    def _joins(self, a: Item, b: Item) -> bool:
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

    async def _items(self, queue: "asyncio.Queue[Item | None]") -> None:
        seq = 0
        pend: Item | None = None
        async for req in self.planner.requests():
            item = Item(0, req.sector * SECTOR, req.count * SECTOR, req.kind)
            if pend is not None and self._joins(pend, item):
                pend.length += item.length
                continue
            if pend is not None:
                pend.seq, seq = seq, seq + 1
                await queue.put(pend)
            pend = item
        if pend is not None:
            pend.seq = seq
            await queue.put(pend)
        for _ in range(self.s.parallel):
            await queue.put(None)

    # ---- doing it ----------------------------------------------------------------------
    async def run(self) -> None:
        from blocklayer.core.io import OVERLAPPED
        queue: asyncio.Queue[Item | None] = asyncio.Queue(maxsize=self.s.parallel * 2)
        producer = asyncio.create_task(self._items(queue))
        token = OVERLAPPED.set(True)     # the workers' writes leave the loop free to read
        try:
            workers = [asyncio.create_task(self._worker(queue))
                       for _ in range(self.s.parallel)]
        finally:
            OVERLAPPED.reset(token)
        try:
            await asyncio.gather(producer, *workers)
        except BaseException:
            for t in (producer, *workers):
                t.cancel()
            await asyncio.gather(producer, *workers, return_exceptions=True)
            raise

    async def _worker(self, queue: "asyncio.Queue[Item | None]") -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            offload = item.kind is Kind.DATA and self.s.copy_range
            plan = None if offload else await self._payload(item)
            await self._wait_turn(item.seq)
            write = None
            try:
                if offload:
                    await self._copy_offloaded(item)
                elif not self._may_overlap(item, plan):
                    await self._write(item, plan)
                else:
                    write = await self._start_write(item, plan)
            finally:
                await self._next_turn()
            if write is not None:
                await write
            self.done += item.length
            self.progress.fraction(self.done, self.total)

    def _may_overlap(self, item: Item, plan: Any) -> bool:
        """Whether ``item``'s write may still be running when the next one starts: one
        piece of data in whole target clusters (no cluster shared with a neighbour,
        whose write would wait for this one while a later one overtook it)."""
        if self.s.out_of_order or self.s.compressed or plan is None or len(plan) != 1 \
                or not self.target.can(Cap.ALLOCATES_IN_ORDER):
            return False
        cs = max(self.cluster, 1)
        return not item.offset % cs and not item.length % cs

    async def _start_write(self, item: Item, plan: Any) -> "asyncio.Future[None]":
        """Start writing ``item`` (one piece of data) and return once the write has
        taken its place in the target: its first step has run, which for every driver
        here takes the locks and allocates before anything waits (qcow2 allocates a
        whole request in one hold of its lock).  The next write may then start while this one's data is
        still moving, and the image is laid out as if each had waited for the last."""
        write = asyncio.ensure_future(self._write(item, plan))
        await asyncio.sleep(0)
        return write

    async def _wait_turn(self, seq: int) -> None:
        if self.s.out_of_order or self.next_write == seq:
            return
        turn = self.turns[seq] = asyncio.get_running_loop().create_future()
        await turn

    async def _next_turn(self) -> None:
        if self.s.out_of_order:
            return
        self.next_write += 1
        turn = self.turns.pop(self.next_write, None)
        if turn is not None and not turn.done():
            turn.set_result(None)

    async def _payload(self, item: Item) -> Any:
        """What a worker writes for ``item``: the data read (or zeroes to write as
        data), cut into clusters to compress or into data and zero pieces; nothing
        for the other kinds."""
        if item.kind is not Kind.DATA and item.kind is not Kind.FILL:
            return None
        data = await self._read(item) if item.kind is Kind.DATA else bytes(item.length)
        return (self._compressed_plan(item.offset, data) if self.s.compressed
                else self._pieces(item.offset, data))

    async def _copy_offloaded(self, item: Item) -> None:
        """``-C``: copy a data item with copy offloading, each source's share on its
        own.  If that fails for any reason, as with qemu-img, the item is read and
        written, and so is every item after it (a real I/O error then shows up there,
        named as usual).  A share that ends inside a source's last sector (zeroes to
        pad) is read and written too."""
        spans = list(self._spans(item.offset, item.length))
        if all(src.read_end(b) == b for src, _, b in spans):
            try:
                for src, a, b in spans:
                    await src.node.copy_range(a - src.start, self.target, a, b - a)
            except BlockError:
                self.s.copy_range = False
            else:
                await self._throttle(item.length)
                return
        await self._write(item, self._pieces(item.offset, await self._read(item)))

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

    async def _read(self, item: Item) -> bytes | bytearray:
        try:
            return await self._read_range(item.offset, item.length)
        except BlockError as exc:
            if not self.s.salvage:
                at = await self._failing_cluster(item) if self.s.compressed else item.offset
                raise BlockError(f"error while reading at byte {at}: "
                                 f"{exc.strerror}", exc.errno) from None
        return await self._salvage(item.offset, item.length)

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

    async def _failing_cluster(self, item: Item) -> int:
        """The first target cluster of ``item`` that cannot be read (qemu-img reads one
        cluster per request when compressing, and names it)."""
        pos, end = item.offset, item.offset + item.length
        while pos < end:
            stop = min(pos + self.cluster, end)
            try:
                await self._read_range(pos, stop - pos)
            except BlockError:
                return pos
            pos = stop
        return item.offset

    # ---- writing -----------------------------------------------------------------------
    async def _throttle(self, n: int) -> None:
        if not self.s.rate:
            return
        self.written += n
        due = self.t0 + self.written / self.s.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _write(self, item: Item, plan: Any) -> None:
        try:
            if item.kind is Kind.SKIP:
                return
            if item.kind is Kind.ZERO:
                await self._zero(item.offset, item.length)
            elif self.s.compressed:
                await self._write_compressed(plan)
            else:
                for off, n, data in plan:
                    if data is None:
                        await self._zero(off, n)
                    else:
                        await self._throttle(n)
                        await self.target.write(off, data)
        except BlockError as exc:
            if exc.message.startswith("error while"):
                raise
            raise BlockError(f"error while writing at byte {item.offset}: {exc.strerror}",
                             exc.errno) from None

    async def _zero(self, off: int, n: int) -> None:
        if self.s.zero_init:
            return
        from blocklayer.core.driver import ReqFlag
        await self.target.write_zeroes(off, n, ReqFlag.MAY_UNMAP)

    def _pieces(self, offset: int, data: bytes | bytearray) -> list[tuple[int, int, Any]]:
        """A data request cut as qemu-img cuts it: ``(offset, length, buffer)`` to
        write, ``(offset, length, None)`` to zero (-S: runs of zero sectors)."""
        mv = memoryview(data)
        if not self.s.min_sparse or _starts_nonzero(data, 0, SECTOR):
            return [(offset, len(data), mv)]      # no zero sector: nothing to skip
        zero = _zero_sectors(data)
        out = []
        for sector, count, is_data in sparse_pieces(zero, offset // SECTOR, self.alignment,
                                                    self.s.min_sparse // SECTOR):
            a, n = sector * SECTOR - offset, count * SECTOR
            out.append((offset + a, n, mv[a:a + n] if is_data else None))
        return out

    def _compressed_plan(self, off: int, data: bytes | bytearray) -> list[tuple[int, int, Any]]:
        """Cut at target clusters: ``(offset, length, None)`` for zero runs (unless
        -S 0), ``(offset, length, buffer)`` for runs of whole clusters to write
        compressed, and the image's partial last cluster alone.  The target, if it
        can, starts compressing them now, ahead of their turn."""
        from blocklayer.core.io import is_zero
        c, mv, end = self.cluster, memoryview(data), off + len(data)
        maybe_zero = self.s.min_sparse and not _starts_nonzero(data, 0, c)
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
        ahead = self.target.driver.compress_ahead
        size = self.target.total_bytes
        out = []
        for pos, n, kind in plan:
            buf = None if kind == "zero" else mv[pos - off:pos - off + n]
            if buf is not None and (kind == "data" or pos + n == size):
                ahead(pos, buf)
            out.append((pos, n, buf))
        return out

    async def _write_compressed(self, plan: list[tuple[int, int, Any]]) -> None:
        from blocklayer.core.driver import ReqFlag
        for pos, n, buf in plan:
            try:
                if buf is None:
                    await self._zero(pos, n)
                else:
                    await self._throttle(n)
                    await self.target.write(pos, buf, ReqFlag.COMPRESSED)
            except BlockError as exc:        # named by the cluster, as one per request
                at = pos if exc.guest_offset is None else exc.guest_offset
                raise BlockError(f"error while writing at byte {at}: {exc.strerror}",
                                 exc.errno) from None


def _starts_nonzero(data: bytes | bytearray, head: int, block: int) -> bool:
    """True if every whole ``block`` of ``data`` after ``head`` bytes starts with a
    non-zero 8-byte word (so none of them is all zeroes)."""
    n = (len(data) - head) // block
    if n <= 0 or head % 8 or block % 8:
        return False
    firsts = memoryview(data)[head:head + n * block].cast("Q")[::block // 8].tobytes()
    zero = bytes(8)
    i = firsts.find(zero)
    while i >= 0 and i % 8:            # a match across two words is not a zero word
        i = firsts.find(zero, i + 1)
    return i < 0


def _zero_sectors(data: bytes | bytearray) -> list[bool]:
    """Whether each 512-byte sector of ``data`` is all zeroes (compared in place, at C
    speed, without numpy)."""
    zero = bytes(SECTOR)
    return [data.startswith(zero, k) for k in range(0, len(data), SECTOR)]


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
