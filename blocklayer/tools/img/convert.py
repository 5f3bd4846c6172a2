"""``convert``: copy one or more images (concatenated) into a new or existing one.

Only what the source chain says is allocated is read (block status of the whole
chain, or of the top layer when the target gets a backing file); zero runs of at least
``-S`` bytes are left unallocated; ``-m`` requests run as asyncio tasks, writes stay in
order unless ``-W``; ranges of the same kind are coalesced into large requests.
"""
from __future__ import annotations

import asyncio
import enum
import itertools
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

from blocklayer.errors import BlockError, InvalidArgument

from .args import PROG, parse
from .common import (Progress, close_all, new_graph, open_img, parse_o_options,
                     parse_rate, print_create_options_help, progress_from)

if TYPE_CHECKING:
    from blocklayer.node import BlockNode

BUF_SIZE = 2 << 20            # largest data request
ZERO_MAX = 1 << 30            # largest write-zeroes request
SPARSE_LIMIT = 16 << 20       # largest -S value


class Kind(enum.Enum):
    DATA = 0
    ZERO = 1
    SKIP = 2                  # left to the target's backing file


@dataclass
class Settings:
    compressed: bool = False
    min_sparse: int = 4096
    parallel: int = 8
    out_of_order: bool = False
    rate: int = 0
    salvage: bool = False
    target_has_backing: bool = False
    zero_init: bool = False


@dataclass
class Item:
    seq: int
    offset: int               # global offset (sources concatenated)
    length: int
    kind: Kind
    src: int
    src_offset: int


def sectors(size: int) -> int:
    """``size`` rounded up to whole 512-byte sectors."""
    return -(-size // 512) * 512


@dataclass
class Source:
    node: "BlockNode"
    start: int                # where it begins in the concatenation
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = self.node.total_bytes


# ---------------------------------------------------------------------------------------
# The copy engine
# ---------------------------------------------------------------------------------------

class Converter:
    def __init__(self, sources: list["BlockNode"], target: "BlockNode", settings: Settings,
                 progress: Progress) -> None:
        self.sources: list[Source] = []
        pos = 0
        for node in sources:
            s = Source(node, pos)
            self.sources.append(s)
            pos += sectors(s.size)       # qemu-img lays sources out in whole sectors
        self.total = pos
        self.target = target
        self.s = settings
        self.progress = progress
        self.done = 0
        self.next_write = 0
        self.turn = asyncio.Condition()
        self.written = 0
        self.t0 = time.monotonic()
        self.cluster = max(target.driver.get_info().cluster_size, 512)

    # ---- what to copy ------------------------------------------------------------------
    async def _status(self, src: Source, off: int, length: int) -> tuple[Kind, int]:
        from blocklayer.driver import Status
        node = src.node
        if self.s.target_has_backing:
            st = await node.block_status(off, length, True)
        else:
            st = await node.block_status_above(None, off, length, True)
        n = st.length or length
        if st.flags & Status.ZERO:
            if self.s.target_has_backing and not st.flags & Status.ALLOCATED:
                kind = Kind.SKIP
            else:
                kind = Kind.ZERO
        elif st.flags & Status.DATA:
            kind = Kind.DATA
        else:
            kind = Kind.SKIP if self.s.target_has_backing else Kind.DATA
        if kind is Kind.ZERO and self.s.min_sparse == 0 and not self.s.compressed:
            kind = Kind.DATA            # -S 0: the target is fully allocated
        return kind, n

    async def _runs(self) -> AsyncIterator[tuple[int, int, int, Kind]]:
        """(source index, offset in it, length, kind), coalesced and cut to size."""
        for i, src in enumerate(self.sources):
            off = 0
            pend: list[Any] | None = None
            while off < src.size:
                kind, n = await self._status(src, off, min(src.size - off, ZERO_MAX))
                n = min(max(n, 1), src.size - off)
                if pend is not None and pend[2] is kind and pend[0] + pend[1] == off:
                    pend[1] += n
                else:
                    if pend is not None:
                        async for r in self._cut(i, *pend):
                            yield r
                    pend = [off, n, kind]
                off += n
            if pend is not None:
                async for r in self._cut(i, *pend):
                    yield r

    async def _cut(self, i: int, off: int, n: int, kind: Kind) -> AsyncIterator[tuple[int, int, int, Kind]]:
        """Split data runs into requests of at most BUF_SIZE that end on cluster
        boundaries (whole clusters when compressing)."""
        if kind is not Kind.DATA:
            end = off + n
            while off < end:
                step = min(end - off, ZERO_MAX)
                yield i, off, step, kind
                off += step
            return
        gstart = self.sources[i].start
        end = off + n
        if self.s.compressed:       # whole target clusters
            c = self.cluster
            gs = (gstart + off) // c * c
            off = max(gs - gstart, 0)
            end = min(-(-(gstart + end) // c) * c - gstart, self.sources[i].size)
        while off < end:
            stop = min(off + BUF_SIZE, end)
            g = gstart + stop
            if stop < end and g % self.cluster:
                aligned = g - g % self.cluster - gstart
                if aligned > off:
                    stop = aligned
            yield i, off, stop - off, kind
            off = stop

    async def _items(self, queue: "asyncio.Queue[Item | None]") -> None:
        seq = 0
        last_end: dict[int, int] = {}
        async for i, off, n, kind in self._runs():
            if self.s.compressed and kind is Kind.DATA:
                # a cluster already sent whole with an earlier run is not sent again
                if off < last_end.get(i, 0):
                    cut = last_end[i] - off
                    if cut >= n:
                        continue
                    off, n = off + cut, n - cut
                last_end[i] = off + n
            await queue.put(Item(seq, self.sources[i].start + off, n, kind, i, off))
            seq += 1
        for _ in range(self.s.parallel):
            await queue.put(None)

    # ---- doing it ----------------------------------------------------------------------
    async def run(self) -> None:
        queue: asyncio.Queue[Item | None] = asyncio.Queue(maxsize=self.s.parallel * 2)
        producer = asyncio.create_task(self._items(queue))
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.s.parallel)]
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
            data: Any = None
            if item.kind is Kind.DATA:
                data = await self._read(item)
                if self.s.compressed:
                    data = self._compressed_plan(item.offset, data)
            await self._wait_turn(item.seq)
            try:
                await self._write(item, data)
            finally:
                await self._next_turn()
            self.done += item.length
            self.progress.fraction(self.done, self.total)

    async def _wait_turn(self, seq: int) -> None:
        if self.s.out_of_order:
            return
        async with self.turn:
            await self.turn.wait_for(lambda: self.next_write == seq)

    async def _next_turn(self) -> None:
        if self.s.out_of_order:
            return
        async with self.turn:
            self.next_write += 1
            self.turn.notify_all()

    async def _read(self, item: Item) -> bytes:
        node = self.sources[item.src].node
        try:
            return await node.read(item.src_offset, item.length)
        except BlockError as exc:
            if not self.s.salvage:
                at = await self._failing_cluster(item) if self.s.compressed else item.offset
                raise BlockError(f"error while reading at byte {at}: "
                                 f"{exc.strerror}", exc.errno) from None
        out = bytearray(item.length)
        for pos in range(0, item.length, 512):
            n = min(512, item.length - pos)
            try:
                out[pos:pos + n] = await node.read(item.src_offset + pos, n)
            except BlockError as exc:
                sys.stderr.write(f"{PROG}: warning: error while reading offset "
                                 f"{item.offset + pos}: {exc.strerror}\n")
        return bytes(out)

    async def _failing_cluster(self, item: Item) -> int:
        """The first target cluster of ``item`` that cannot be read (qemu-img reads one
        cluster per request when compressing, and names it)."""
        node, c = self.sources[item.src].node, self.cluster
        pos, end = item.offset, item.offset + item.length
        while pos < end:
            stop = min(pos - pos % c + c, end)
            try:
                await node.read(item.src_offset + pos - item.offset, stop - pos)
            except BlockError:
                return pos
            pos = stop
        return item.offset

    async def _throttle(self, n: int) -> None:
        if not self.s.rate:
            return
        self.written += n
        due = self.t0 + self.written / self.s.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _write(self, item: Item, data: bytes | None) -> None:
        try:
            if item.kind is Kind.SKIP:
                return
            if item.kind is Kind.ZERO:
                await self._zero(item.offset, item.length)
                return
            assert data is not None
            if self.s.compressed:
                await self._write_compressed(data)
                return
            for off, n, is_data in self._sparse_pieces(item.offset, data):
                if is_data:
                    await self._throttle(n)
                    await self.target.write(off, memoryview(data)[off - item.offset:
                                                                  off - item.offset + n])
                else:
                    await self._zero(off, n)
        except BlockError as exc:
            if exc.message.startswith("error while"):
                raise
            raise BlockError(f"error while writing at byte {item.offset}: {exc.strerror}",
                             exc.errno) from None

    async def _zero(self, off: int, n: int) -> None:
        if self.s.zero_init:
            return
        from blocklayer.driver import ReqFlag
        await self.target.write_zeroes(off, n, ReqFlag.MAY_UNMAP)

    def _compressed_plan(self, off: int, data: bytes) -> list[tuple[int, int, Any]]:
        """Cut at target cluster boundaries: ``(offset, length, None)`` for zero runs,
        ``(offset, length, buffer)`` for runs to write compressed (whole clusters
        together; a partial cluster alone, padded unless it ends the image).  The
        target, if it can, starts compressing them now, ahead of their turn."""
        from blocklayer.io import is_zero
        c, mv, end = self.cluster, memoryview(data), off + len(data)
        size = self.target.total_bytes
        plan: list[list[Any]] = []
        maybe_zero = not _starts_nonzero(data, (-off) % c, c)
        pos = off
        while pos < end:
            stop = min(pos - pos % c + c, end)
            piece = mv[pos - off:stop - off]
            if (maybe_zero or pos - off < (-off) % c or stop - pos < c) and is_zero(piece):
                kind = "zero"
            elif stop - pos < c and stop < size or pos % c:
                kind = "alone"
            else:
                kind = "data"
            last = plan[-1] if plan else None
            if kind != "alone" and last is not None and last[3] == kind:
                last[1] = stop - last[0]
            else:
                plan.append([pos, stop - pos, None, kind])
            pos = stop
        out = []
        ahead = getattr(self.target.driver, "compress_ahead", None)
        for pos, n, _, kind in plan:
            buf: Any = None
            if kind == "data":
                buf = mv[pos - off:pos - off + n]
            elif kind == "alone":
                buf = bytes(mv[pos - off:pos - off + n])
                if n < c and pos + n < size:        # pad to the cluster or the image end
                    buf += bytes(min(c, size - pos) - n)
            if buf is not None and ahead is not None and not pos % c:
                ahead(pos, buf)
            out.append((pos, n, buf))
        return out

    async def _write_compressed(self, plan: list[tuple[int, int, Any]]) -> None:
        from blocklayer.driver import ReqFlag
        for pos, n, buf in plan:
            try:
                if buf is None:
                    await self._zero(pos, n)
                else:
                    await self._throttle(n)
                    await self.target.write(pos, buf, ReqFlag.COMPRESSED)
            except BlockError as exc:        # named by the cluster, as one per request
                at = getattr(exc, "guest_offset", pos)
                raise BlockError(f"error while writing at byte {at}: {exc.strerror}",
                                 exc.errno) from None

    def _sparse_pieces(self, offset: int, data: bytes) -> list[tuple[int, int, bool]]:
        """Split a buffer into data and zero runs; zero runs are whole ``-S`` blocks
        (aligned to the image offset).  ``(offset, length, is_data)`` in order."""
        from blocklayer.io import is_zero
        s = self.s.min_sparse
        n = len(data)
        if not s or n < s:
            return [(offset, n, True)]
        if is_zero(data):
            return [(offset, n, False)]
        head = min((-offset) % s, n)
        nblocks = (n - head) // s
        body_end = head + nblocks * s
        if nblocks == 0 or _starts_nonzero(data, head, s):   # no block to skip
            return [(offset, n, True)]
        runs: list[list] = []
        if head:
            runs.append([offset, head, True])
        pos = offset + head
        for kind, blocks in itertools.groupby(_blocks_with_data(data, head, s, nblocks)):
            length = len(list(blocks)) * s
            if runs and runs[-1][2] == kind:
                runs[-1][1] += length
            else:
                runs.append([pos, length, kind])
            pos += length
        if body_end < n:
            if runs[-1][2]:
                runs[-1][1] += n - body_end
            else:
                runs.append([offset + body_end, n - body_end, True])
        return [(a, b, c) for a, b, c in runs]


def _starts_nonzero(data: bytes, head: int, block: int) -> bool:
    """True if every whole ``block`` of ``data`` after ``head`` bytes starts with a
    non-zero 8-byte word (so none of them is all zeroes)."""
    n = (len(data) - head) // block
    if n <= 0 or head % 8 or block % 8:
        return False
    firsts = memoryview(data)[head:head + n * block].cast("Q")[::block // 8]
    return 0 not in firsts


def _blocks_with_data(data: bytes, head: int, block: int, n: int) -> list[bool]:
    """For each of the ``n`` whole ``block``s of ``data`` after ``head`` bytes, whether
    it holds a non-zero byte (each compared with zeroes in place, at C speed)."""
    buf = data if isinstance(data, (bytes, bytearray)) else bytes(data)
    zero = bytes(block)
    return [not buf.startswith(zero, head + k * block) for k in range(n)]


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    p = parse(argv, "hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:s:",
              ["help", "object=", "image-opts", "target-image-opts", "salvage",
               "target-is-zero", "bitmaps", "skip-broken-bitmaps", "force-share",
               "json-progress"])
    from blocklayer.options import parse_size
    try:
        min_sparse = parse_size(p.last("-S", default="4k") or "", "x")
    except InvalidArgument:
        raise InvalidArgument("Invalid buffer size for sparse output specified. You may use "
                              "k, M, G, T, P or E suffixes for\n"
                              f"{PROG}: kilobytes, megabytes, gigabytes, terabytes, "
                              "petabytes and exabytes.") from None
    if min_sparse % 512 or min_sparse > SPARSE_LIMIT:
        raise InvalidArgument("Invalid buffer size for sparse output specified. Valid sizes "
                              f"are multiples of 512 up to {SPARSE_LIMIT}. Select 0 to "
                              "disable sparse detection (fully allocates output).")
    parallel = 8
    if p.has("-m"):
        try:
            parallel = int(p.last("-m") or "")
        except ValueError:
            parallel = 0
        if not 1 <= parallel <= 16:
            raise InvalidArgument("Invalid number of coroutines. Allowed number of "
                                  "coroutines is between 1 and 16")
    rate = parse_rate(p.last("-r"))
    out_fmt = p.last("-O")
    opts, want_help = parse_o_options(p.all("-o"))
    if want_help:
        from blocklayer import registry
        fmt = out_fmt or "raw"
        try:
            registry.get_driver(fmt)
        except InvalidArgument:
            raise InvalidArgument(f"Unknown file format '{fmt}'") from None
        if len(p.args) >= 1:
            print_create_options_help(fmt, protocol_of=p.args[-1])
        else:
            print_create_options_help(fmt, f"Supported {fmt} options:")
            print("\nThe protocol level may support further options.\n"
                  "Specify the target filename to include those options.")
        return 0
    if len(p.args) < 2:
        raise InvalidArgument("Must specify image file name")
    if p.has("--target-is-zero") and not p.has("-n"):
        raise InvalidArgument("--target-is-zero requires use of -n flag")
    if p.has("--target-image-opts") and not p.has("-n"):
        raise InvalidArgument("--target-image-opts requires use of -n flag")
    if p.has("-C") and p.has("--salvage"):
        raise InvalidArgument("Cannot use copy offloading in salvaging mode")
    if p.has("-C") and p.has("-c"):
        raise InvalidArgument("Cannot enable copy offloading when -c is used")
    if p.has("-B") and not p.has("-F"):
        raise InvalidArgument("Use of backing file requires explicit backing format")
    if p.has("-B") and p.has("-n"):
        raise InvalidArgument("-B and -n cannot be used together")   # our rule: -n keeps the target
    settings = Settings(compressed=p.has("-c"), min_sparse=min_sparse, parallel=parallel,
                        out_of_order=p.has("-W"), rate=rate, salvage=p.has("--salvage"))
    return asyncio.run(convert(p, p.args[:-1], p.args[-1], out_fmt or "raw", opts, settings))


async def _load_snapshot(node: "BlockNode", spec: str) -> None:
    from blocklayer.options import split_keyval
    sid: str | None
    name: str | None
    if spec.startswith("snapshot.") or "=" in spec:
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


async def convert(p: Any, src_names: list[str], out_name: str, out_fmt: str,
                  opts: dict[str, str], s: Settings) -> int:
    from blocklayer import registry
    from blocklayer.create import create_image, normalize_create_options
    graph = new_graph()
    fmt = p.last("-f")
    sources: list[BlockNode] = []
    target: BlockNode | None = None
    try:
        for name in src_names:
            sources.append(await open_img(graph, name, fmt=fmt, image_opts=p.has("--image-opts"),
                                          read_only=True, force_share=p.has("-U"),
                                          cache=p.last("-T"), src_cache=True))
        snap = p.last("-l") or p.last("-s")
        if snap is not None:
            if len(sources) > 1:
                raise InvalidArgument("No support for concatenating multiple snapshot")
            await _load_snapshot(sources[0], snap)
        total = sum(sectors(n.total_bytes) for n in sources)
        if p.has("--bitmaps") and not hasattr(sources[0].driver, "bitmap_list"):
            raise InvalidArgument("Source lacks bitmap support")
        try:
            cls = registry.get_driver(out_fmt)
        except InvalidArgument:
            raise InvalidArgument(f"Unknown file format '{out_fmt}'") from None
        if s.compressed and not cls.can_compressed_write:
            raise InvalidArgument("Compression not supported for this file format")
        backing, backing_fmt = p.last("-B"), p.last("-F")
        if not p.has("-n"):
            create_opts: dict[str, Any] = dict(opts)
            create_opts["size"] = total
            if backing:
                create_opts["backing_file"] = backing
                create_opts["backing_fmt"] = backing_fmt
            normalized = normalize_create_options(out_fmt, create_opts)
            backing = normalized.get("backing_file") or backing
            try:
                await create_image(out_name, out_fmt, options=normalized, graph=graph)
            except BlockError as exc:
                raise BlockError(f"{out_name}: error while converting {out_fmt}: {exc.message}",
                                 exc.errno) from None
        target = await open_img(graph, out_name, fmt=None if p.has("--target-image-opts")
                                else out_fmt, image_opts=p.has("--target-image-opts"),
                                read_only=False, cache=p.last("-t") or "unsafe",
                                backing=bool(backing) or p.has("-n"))
        if p.has("-n") and target.total_bytes < total:
            raise InvalidArgument("output file is smaller than input file")
        s.target_has_backing = bool(backing)
        if p.has("--target-is-zero"):
            s.zero_init = True
        elif not p.has("-n") and not s.target_has_backing:
            s.zero_init = target.driver.has_zero_init()
        progress = progress_from(p)
        conv = Converter(sources, target, s, progress)
        await conv.run()
        if p.has("--bitmaps"):
            await _copy_bitmaps(sources[0], target, p.has("--skip-broken-bitmaps"))
        await target.flush()
        progress.end()
    finally:
        await close_all(target, *sources)
    return 0


async def _copy_bitmaps(src: "BlockNode", dst: "BlockNode", skip_broken: bool) -> None:
    """``--bitmaps``: copy persistent bitmaps through the drivers' optional bitmap API."""
    from . import bitmap as bitmap_cmd
    if not hasattr(dst.driver, "bitmap_add"):
        raise InvalidArgument("Destination lacks bitmap support")
    for bm in await bitmap_cmd.list_bitmaps(src):
        name = bm["name"]
        if bm.get("inconsistent") or "in-use" in bm.get("flags", ()):
            if skip_broken:
                sys.stderr.write(f"{PROG}: warning: Skipping inconsistent bitmap '{name}'\n")
                continue
            raise BlockError(f"Cannot copy inconsistent bitmap '{name}'")
        await bitmap_cmd.copy_bitmap(src, dst, name)
