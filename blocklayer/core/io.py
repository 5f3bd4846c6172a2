"""The request path: the one place every request to every node goes through.

Mirrors QEMU's block/io.c.  A request made from outside the graph (depth 0: a tool, an
export, a job) is checked against the node's size and held while the node is drained; a
request a driver makes to its children is nested (depth > 0) and is neither.  Every
request then is checked for sanity and read-only-ness, tracked (so read-modify-write
cycles of unaligned writes are serialised against overlapping requests), aligned to the
driver's request alignment, split at its max transfer, and accounted.  Capabilities a
driver lacks are filled in here: write zeroes becomes a zero buffer, FUA a flush,
block status "all data".
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
from time import monotonic_ns
from typing import TYPE_CHECKING, Iterator

from .driver import BlockStatus, Cap, Prealloc, ReqFlag, Status
from .errors import BlockError, InvalidArgument, NotSupported, ReadOnlyError

if TYPE_CHECKING:
    from .node import BlockNode

# capability bits as plain ints: ``node.caps & CAP_FUA`` is one C operation per request
CAP_WRITE_ZEROES = int(Cap.WRITE_ZEROES)
CAP_DISCARD = int(Cap.DISCARD)
CAP_BLOCK_STATUS = int(Cap.BLOCK_STATUS)
CAP_FUA = int(Cap.FUA)
CAP_COMPRESSED_WRITE = int(Cap.COMPRESSED_WRITE)

BDRV_MAX_LENGTH = (1 << 63) - 1
ZERO_BUFFER_MAX = 1 << 20          # largest zero buffer written by the fallback
COR_CHUNK = 1 << 20

REQUEST_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("request_depth", default=0)
#: the task that owns the drained sections it is inside (its own requests pass)
DRAIN_OWNER: contextvars.ContextVar[object] = contextvars.ContextVar("drain_owner", default=None)
#: set by a caller that keeps requests in flight and has work of its own meanwhile (a
#: copy reading ahead): drivers then hand long requests to other threads even when
#: they are alone, rather than run them on the loop thread
OVERLAPPED: contextvars.ContextVar[bool] = contextvars.ContextVar("overlapped", default=False)


@contextlib.contextmanager
def metadata_io() -> Iterator[None]:
    """Run a driver's own metadata I/O (at open, close, on a timer) as nested requests:
    no drain wait and no end-of-file check on its children."""
    token = REQUEST_DEPTH.set(REQUEST_DEPTH.get() + 1)
    try:
        yield
    finally:
        REQUEST_DEPTH.reset(token)


def _zeros(n: int, _cache: dict[int, bytes] = {}) -> bytes:
    buf = _cache.get(n)
    if buf is None:
        buf = bytes(n)
        if n <= ZERO_BUFFER_MAX:
            _cache[n] = buf
    return buf


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True if every byte is zero (fast: a cached zero buffer is asked whether it starts
    with each chunk, one memcmp without a copy; comparing memoryviews goes byte by byte)."""
    n = len(data)
    if n == 0:
        return True
    step = 1 << 16
    zero = _zeros(min(n, step))
    mv = memoryview(data)
    for i in range(0, n, step):
        if not zero.startswith(mv[i:i + step]):
            return False
    return True


def align_down(x: int, a: int) -> int:
    return x - x % a


def align_up(x: int, a: int) -> int:
    return -(-x // a) * a


# ---------------------------------------------------------------------------------------
# Tracked requests
# ---------------------------------------------------------------------------------------

class Tracked:
    """One in-flight request on a node, over the (aligned) range it touches."""

    __slots__ = ("node", "start", "end", "serialising", "serial", "done")

    def __init__(self, node: "BlockNode", start: int, end: int, serialising: bool) -> None:
        self.node, self.start, self.end, self.serialising = node, start, end, serialising
        self.serial = 0
        self.done: asyncio.Event | None = None      # made when somebody waits

    def overlaps(self, start: int, end: int) -> bool:
        return self.start < end and start < self.end

    async def wait_done(self) -> None:
        if self.done is None:
            self.done = asyncio.Event()
        await self.done.wait()

    async def __aenter__(self) -> "Tracked":
        state = self.node.state
        state.serial += 1
        self.serial = state.serial
        tracked_list = state.tracked
        tracked_list.append(self)
        if self.serialising:
            state.serialising += 1      # synchronous fast paths stay off while > 0
        if len(tracked_list) > 1 and (self.serialising
                                      or any(t.serialising for t in tracked_list)):
            try:
                await self._wait_serialising()
            except BaseException:
                self._leave()
                raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._leave()

    def _leave(self) -> None:
        state = self.node.state
        state.tracked.remove(self)
        if self.serialising:
            state.serialising -= 1
        if self.done is not None:
            self.done.set()

    async def _wait_serialising(self) -> None:
        """Wait until no earlier request that must not overlap this one overlaps it.

        A request waits only for requests registered before it, so there are no cycles.
        """
        while True:
            for other in self.node.state.tracked:
                if other.serial >= self.serial:
                    continue
                if (other.serialising or self.serialising) and other.overlaps(self.start, self.end):
                    await other.wait_done()
                    break
            else:
                return


def tracked(node: "BlockNode", start: int, end: int, serialising: bool) -> Tracked:
    """``async with tracked(node, start, end, serialising):`` around the driver calls."""
    return Tracked(node, start, end, serialising)


# ---------------------------------------------------------------------------------------
# Entering and leaving a request
# ---------------------------------------------------------------------------------------

class _request:
    """Depth, drain, sanity, bounds and read-only checks, in-flight counting.

    ``async with _request(node, kind, offset, length, write):`` around the whole request.
    A class rather than a generator: it runs for every request at every layer.
    ``external`` overrides the depth rule (a copy enters two nodes from outside at once).
    """

    __slots__ = ("node", "kind", "offset", "length", "write", "external", "token")

    def __init__(self, node: "BlockNode", kind: str, offset: int, length: int,
                 write: bool, external: bool | None = None) -> None:
        self.node, self.kind, self.offset, self.length, self.write = \
            node, kind, offset, length, write
        self.external = external        # None: from outside the graph if at depth 0

    async def __aenter__(self) -> None:
        node, kind, offset, length = self.node, self.kind, self.offset, self.length
        depth = REQUEST_DEPTH.get()
        external = depth == 0 if self.external is None else self.external
        if node.closed:
            raise BlockError(f"Node '{node.name}' is closed", errno.ENOMEDIUM)
        if external and node.state.quiesce and DRAIN_OWNER.get() is not asyncio.current_task():
            await wait_resumed(node)
        if offset < 0 or length < 0 or offset > BDRV_MAX_LENGTH - length:
            node.stats.invalid(kind)
            raise InvalidArgument(f"Invalid request offset {offset} length {length}", errno.EIO)
        if external and kind != "flush" and offset + length > node.total_bytes \
                and not (self.write and node.allow_write_beyond_eof):
            node.stats.invalid(kind)
            raise BlockError("Request beyond the end of the image", errno.EIO)
        if self.write and node.read_only:
            node.stats.invalid(kind)
            raise ReadOnlyError(f"Node '{node.name}' is read-only", errno.EPERM)
        self.token = REQUEST_DEPTH.set(depth + 1)
        node.state.in_flight += 1

    async def __aexit__(self, *exc: object) -> None:
        REQUEST_DEPTH.reset(self.token)
        state = self.node.state
        state.in_flight -= 1
        if state.in_flight == 0 and state.idle is not None:
            state.idle.set()


async def wait_resumed(node: "BlockNode") -> None:
    while node.state.quiesce:
        if node.state.resumed is None:
            node.state.resumed = asyncio.Event()
        await node.state.resumed.wait()


# ---------------------------------------------------------------------------------------
# Read
# ---------------------------------------------------------------------------------------

def node_try_read(node: "BlockNode", offset: int, length: int) -> bytes | bytearray | None:
    """The fast path of a read: done synchronously, or ``None`` having done nothing.

    Taken when nothing asks for the full path: an aligned read inside the node, no
    serialising request in flight (so the read needs no tracking: it cannot overlap
    anything in time), no copy-on-read, and a driver whose ``try_read`` can serve it
    without blocking (page-cache hits of a file, and formats that only map the range
    onto a child that can).  Accounted as the full path accounts it.  Drain is the
    caller's check (:func:`node_read`); a driver's nested call makes none, as in the
    full path.
    """
    if node.closed or node.state.serialising \
            or node.flags.copy_on_read or length <= 0 or offset < 0 \
            or offset + length > node.total_bytes:
        return None
    limits = node.limits
    align = limits.request_alignment
    if offset % align or length % align or (limits.max_transfer and length > limits.max_transfer):
        return None
    start_ns = monotonic_ns()
    data = node.driver.try_read(offset, length)
    if data is None:
        return None
    now = monotonic_ns()
    stats = node.stats
    op = stats.read
    op.ops += 1
    op.bytes += length
    op.total_time_ns += now - start_ns
    stats.last_access_ns = now
    return data


async def node_read(node: "BlockNode", offset: int, length: int,
                    flags: ReqFlag = ReqFlag.NONE) -> bytes | bytearray:
    """Read ``length`` bytes at ``offset`` (a bytes-like object the caller owns)."""
    if not flags and not node.state.quiesce:
        data = node_try_read(node, offset, length)
        if data is not None:
            return data
    async with _request(node, "read", offset, length, write=False):
        start_ns = node.stats.start()
        try:
            if node.flags.copy_on_read:
                flags |= ReqFlag.COPY_ON_READ
            data = await _aligned_read(node, offset, length, flags)
        except BlockError:
            node.stats.done("read", start_ns, length, ok=False)
            raise
        node.stats.done("read", start_ns, length)
        return data


async def _aligned_read(node: "BlockNode", offset: int, length: int,
                        flags: ReqFlag) -> bytes | bytearray:
    if length == 0:
        return b""
    align = node.limits.request_alignment
    start, end = align_down(offset, align), align_up(offset + length, align)
    cor = node.backing is not None and not node.read_only \
        and bool(flags & ReqFlag.COPY_ON_READ)
    if cor:
        cluster = max(node.driver.get_info().cluster_size, align)
        start, end = align_down(offset, cluster), align_up(offset + length, cluster)
    data: bytes | bytearray
    async with tracked(node, start, end, serialising=cor):
        if cor:
            data = await _copy_on_read(node, start, end - start)
        else:
            data = await _read_split(node, start, end - start, flags)
    if start == offset and len(data) == length:
        return data
    return data[offset - start:offset - start + length]


async def _read_split(node: "BlockNode", offset: int, length: int,
                      flags: ReqFlag) -> bytes | bytearray:
    """Split at max transfer and zero-fill beyond the end of the node.

    Protocols too: a read never goes past the size the file reported (at open, or
    grown since by our own writes), so a file that says it is empty (``/proc/...``)
    reads as zeroes, as QEMU's bdrv_aligned_preadv makes it."""
    total = node.total_bytes
    if offset >= total:
        return _zeros(length) if length <= ZERO_BUFFER_MAX else bytes(length)
    limits = node.limits
    if offset + length <= total:
        readable = length
    else:   # as QEMU: up to the end rounded up to the alignment (the last block of a
        # filter over a file whose length is not aligned is read whole; O_DIRECT reads
        # whole blocks and the tail reads short)
        readable = min(length, align_up(total - offset, limits.request_alignment))
    max_xfer = limits.max_transfer or readable
    if readable <= max_xfer:
        data = await node.driver.read(offset, readable, flags)
    else:
        buf = bytearray()
        pos = 0
        while pos < readable:
            n = min(max_xfer, readable - pos)
            buf += await node.driver.read(offset + pos, n, flags)
            pos += n
        data = buf
    if len(data) < length:
        data = bytes(data) + bytes(length - len(data))
    return data


async def _copy_on_read(node: "BlockNode", offset: int, length: int) -> bytes:
    """Read, copying what this node does not hold from its backing chain into it."""
    out = bytearray()
    pos, end = offset, offset + length
    while pos < end:
        allocated, n = await node.is_allocated(pos, min(end - pos, COR_CHUNK))
        n = max(n, 1)
        chunk = await _read_split(node, pos, n, ReqFlag.NONE)
        if not allocated and pos < node.total_bytes:
            usable = min(n, node.total_bytes - pos)
            piece = memoryview(chunk)[:usable]
            if is_zero(piece) and node.caps & CAP_WRITE_ZEROES:
                try:
                    await node.driver.write_zeroes(pos, usable, ReqFlag.NONE)
                except NotSupported:
                    await node.driver.write(pos, piece, ReqFlag.NONE)
            else:
                await node.driver.write(pos, piece, ReqFlag.NONE)
        out += chunk
        pos += n
    return bytes(out)


# ---------------------------------------------------------------------------------------
# Write, write zeroes, discard
# ---------------------------------------------------------------------------------------

async def node_write(node: "BlockNode", offset: int, data: bytes | bytearray | memoryview,
                     flags: ReqFlag = ReqFlag.NONE) -> None:
    """Write ``data`` at ``offset``."""
    length = len(data)
    if not node.flags.cache.writeback and REQUEST_DEPTH.get() == 0:
        flags |= ReqFlag.FUA          # writethrough: every guest write is durable
    async with _request(node, "write", offset, length, write=True):
        if flags and flags & ReqFlag.COMPRESSED and not node.caps & CAP_COMPRESSED_WRITE:
            raise NotSupported("Compression is not supported for this drive", errno.ENOTSUP)
        mode = node.flags.detect_zeroes
        if mode != "off" and not flags & ReqFlag.COMPRESSED and is_zero(data):
            zflags = flags | (ReqFlag.MAY_UNMAP if mode == "unmap" else ReqFlag.NONE)
            await _zero_request(node, offset, length, zflags)
            return
        start_ns = node.stats.start()
        try:
            await _before_write(node, offset, length)
            await _aligned_write(node, offset, data, flags)
        except BlockError:
            node.stats.done("write", start_ns, length, ok=False)
            raise
        node.stats.done("write", start_ns, length)
        _after_write(node, offset, length)


async def _before_write(node: "BlockNode", offset: int, length: int) -> None:
    if node.write_threshold and offset + length > node.write_threshold:
        threshold, node.write_threshold = node.write_threshold, 0
        if node.on_write_threshold is not None:
            node.on_write_threshold(node, offset + length - threshold, threshold)
    for notifier in list(node.before_write):
        await notifier(node, offset, length)


def _after_write(node: "BlockNode", offset: int, length: int) -> None:
    end = offset + length
    if end > node.stats.wr_highest_offset:
        node.stats.wr_highest_offset = end
    if end > node.total_bytes and (node.driver.is_protocol or node.driver.is_filter):
        node.total_bytes = end      # a format below grew its file (and every filter)
    for observer in node.write_observers:
        observer(node, offset, length)


async def _aligned_write(node: "BlockNode", offset: int,
                         data: bytes | bytearray | memoryview, flags: ReqFlag) -> None:
    length = len(data)
    if length == 0:
        return
    align = node.limits.request_alignment
    start, end = align_down(offset, align), align_up(offset + length, align)
    rmw = start != offset or end != offset + length
    async with tracked(node, start, end, serialising=rmw):
        if rmw:
            data = await _merge_unaligned(node, offset, data, start, end, align)
            offset = start
        await _write_split(node, offset, data, flags)


async def _merge_unaligned(node: "BlockNode", offset: int, data: bytes | bytearray | memoryview,
                           start: int, end: int, align: int) -> bytearray:
    """Read-modify-write: fetch the head and tail blocks and lay ``data`` over them."""
    buf = bytearray(end - start)
    head_end = min(start + align, end)
    if offset != start:
        buf[0:head_end - start] = await _read_split(node, start, head_end - start, ReqFlag.NONE)
    tail_start = end - align
    if offset + len(data) != end and tail_start >= head_end:
        buf[tail_start - start:] = await _read_split(node, tail_start, align, ReqFlag.NONE)
    elif offset + len(data) != end and offset == start:
        buf[0:end - start] = await _read_split(node, start, end - start, ReqFlag.NONE)
    buf[offset - start:offset - start + len(data)] = data
    return buf


async def _write_split(node: "BlockNode", offset: int, data: bytes | bytearray | memoryview,
                       flags: ReqFlag) -> None:
    drv = node.driver
    # ``flags and``: int truth is C code, Flag arithmetic is Python (per request)
    fua = bool(flags and flags & ReqFlag.FUA)
    emulate_fua = fua and not node.caps & CAP_FUA
    if emulate_fua:
        flags &= ~ReqFlag.FUA
    max_xfer = node.limits.max_transfer
    if flags and flags & ReqFlag.COMPRESSED:
        max_xfer = 0     # a compressed write is one cluster; the driver checks
    length = len(data)
    if not max_xfer or length <= max_xfer:
        await drv.write(offset, data, flags)
    else:
        mv = memoryview(data)
        for pos in range(0, length, max_xfer):
            await drv.write(offset + pos, mv[pos:pos + max_xfer], flags)
    if emulate_fua:
        await node_flush(node)


async def node_write_zeroes(node: "BlockNode", offset: int, length: int,
                            flags: ReqFlag = ReqFlag.NONE) -> None:
    """Make ``[offset, offset+length)`` read as zeroes."""
    if not node.flags.cache.writeback and REQUEST_DEPTH.get() == 0:
        flags |= ReqFlag.FUA
    async with _request(node, "zero", offset, length, write=True):
        await _zero_request(node, offset, length, flags)


async def _zero_request(node: "BlockNode", offset: int, length: int, flags: ReqFlag) -> None:
    if not node.flags.discard_unmap:
        flags &= ~ReqFlag.MAY_UNMAP
    start_ns = node.stats.start()
    try:
        await _before_write(node, offset, length)
        align = node.limits.request_alignment
        start, end = align_down(offset, align), align_up(offset + length, align)
        rmw = start != offset or end != offset + length
        async with tracked(node, start, end, serialising=rmw):
            await _zero_aligned(node, offset, length, flags, align)
    except BlockError:
        node.stats.done("zero", start_ns, length, ok=False)
        raise
    node.stats.done("zero", start_ns, length)
    _after_write(node, offset, length)


async def _zero_aligned(node: "BlockNode", offset: int, length: int, flags: ReqFlag,
                        align: int) -> None:
    """Zero a head, a middle and a tail (split at the driver's zeroing alignment), each
    with the driver where it can and with zero buffers where it cannot."""
    limits = node.limits
    zalign = max(limits.pwrite_zeroes_alignment or align, align)
    end = offset + length
    head_end = min(align_up(offset, zalign), end)
    tail_start = max(align_down(end, zalign), head_end)
    pieces: list[tuple[int, int]] = []
    if head_end > offset:
        pieces.append((offset, head_end - offset))
    step = align_down(limits.max_pwrite_zeroes, zalign) if limits.max_pwrite_zeroes else 0
    step = step or (tail_start - head_end) or 1
    for pos in range(head_end, tail_start, step):
        pieces.append((pos, min(step, tail_start - pos)))
    if end > tail_start:
        pieces.append((tail_start, end - tail_start))
    for pos, n in pieces:
        await _zero_piece(node, pos, n, flags)


async def _zero_piece(node: "BlockNode", offset: int, length: int, flags: ReqFlag) -> None:
    caps = node.caps
    if caps & CAP_WRITE_ZEROES:
        try:
            await node.driver.write_zeroes(offset, length, flags)
        except NotSupported:
            pass
        else:
            if flags & ReqFlag.FUA and not caps & CAP_FUA:
                await node_flush(node)
            return
    await _write_zero_buffer(node, offset, length, flags)


async def _write_zero_buffer(node: "BlockNode", offset: int, length: int,
                             flags: ReqFlag) -> None:
    if flags & ReqFlag.NO_FALLBACK:
        raise NotSupported("write zeroes without fallback not supported", errno.ENOTSUP)
    wflags = flags & ReqFlag.FUA
    align = node.limits.request_alignment
    pos, end = offset, offset + length
    while pos < end:
        n = min(end - pos, ZERO_BUFFER_MAX)
        if pos % align or n % align:
            data = await _merge_unaligned(node, pos, _zeros(n), align_down(pos, align),
                                          align_up(pos + n, align), align)
            await _write_split(node, align_down(pos, align), data, wflags)
        else:
            await _write_split(node, pos, _zeros(n), wflags)
        pos += n


async def node_discard(node: "BlockNode", offset: int, length: int) -> None:
    """Discard (unmap) a range; a no-op unless the node was opened with discard=unmap."""
    async with _request(node, "discard", offset, length, write=True):
        if not node.flags.discard_unmap or not node.caps & CAP_DISCARD or length == 0:
            return
        start_ns = node.stats.start()
        limits = node.limits
        dalign = max(limits.pdiscard_alignment, limits.request_alignment, 1)
        start, end = align_up(offset, dalign), align_down(offset + length, dalign)
        if end <= start:
            return
        try:
            await _before_write(node, start, end - start)
            async with tracked(node, start, end, serialising=False):
                step = limits.max_pdiscard or (end - start)
                step = max(align_down(step, dalign), dalign)
                for pos in range(start, end, step):
                    try:
                        await node.driver.discard(pos, min(step, end - pos))
                    except NotSupported:
                        return
        except BlockError:
            node.stats.done("discard", start_ns, length, ok=False)
            raise
        node.stats.done("discard", start_ns, end - start)
        _after_write(node, start, end - start)


# ---------------------------------------------------------------------------------------
# Copy range (copy offloading)
# ---------------------------------------------------------------------------------------

async def node_copy_range(node: "BlockNode", offset: int, dst: "BlockNode", dst_offset: int,
                          length: int, flags: ReqFlag = ReqFlag.NONE) -> None:
    """Copy ``length`` bytes at ``offset`` of this node to ``dst_offset`` of ``dst``
    without the data passing through this process (QEMU's bdrv_co_copy_range).

    This is the source side, run as a read of this node.  Its driver resolves the range
    (a format maps it, a filter or raw shifts it) down to a protocol node, whose driver
    hands it to :func:`node_copy_range_to` on ``dst``: the target side, run as a write.
    Raises :class:`NotSupported` whenever a driver on either side cannot (the caller
    then reads and writes instead); part of the range may have been copied by then.
    Ranges are never widened: one not aligned to a node's request alignment is not
    supported.  ``flags`` may hold FUA: ``dst`` is flushed after the copy.
    """
    external = REQUEST_DEPTH.get() == 0
    async with _request(dst, "write", dst_offset, length, True, external), \
            _request(node, "read", offset, length, False, external):
        if length == 0:
            return
        _check_copy_alignment(node, offset, length)
        start_ns = node.stats.start()
        try:
            async with tracked(node, offset, offset + length, serialising=False):
                await node.driver.copy_range_from(offset, dst, dst_offset, length,
                                                  flags & ~ReqFlag.FUA)
        except BlockError as exc:
            _copy_failed(node, "read", start_ns, exc)
            raise
        _copy_done(node, "read", start_ns, length)
        if flags & ReqFlag.FUA or (external and not dst.flags.cache.writeback):
            await node_flush(dst)


async def node_copy_range_to(node: "BlockNode", src: "BlockNode", src_offset: int,
                             offset: int, length: int,
                             flags: ReqFlag = ReqFlag.NONE) -> None:
    """The target side of a copy offload: put ``length`` bytes at ``src_offset`` of the
    protocol node ``src`` at ``offset`` of this node.

    Called by the protocol driver that resolved the source; runs as a write of this
    node (write threshold, before-write notifiers, tracking, accounting, dirty
    bitmaps).  Its driver allocates like a write and passes the range on down to a
    protocol node, which copies from ``src`` or raises :class:`NotSupported`.
    """
    async with _request(node, "write", offset, length, write=True):
        if length == 0:
            return
        _check_copy_alignment(node, offset, length)
        start_ns = node.stats.start()
        try:
            await _before_write(node, offset, length)
            async with tracked(node, offset, offset + length, serialising=False):
                await node.driver.copy_range_to(src, src_offset, offset, length, flags)
        except BlockError as exc:
            _copy_failed(node, "write", start_ns, exc)
            raise
        _copy_done(node, "write", start_ns, length)
        _after_write(node, offset, length)


def _check_copy_alignment(node: "BlockNode", offset: int, length: int) -> None:
    """A copy is never a read-modify-write cycle: unaligned ranges are not offloaded."""
    align = node.limits.request_alignment
    if offset % align or length % align:
        raise NotSupported(f"Node '{node.name}' cannot offload a copy that is not aligned "
                           f"to {align} bytes")


def _copy_done(node: "BlockNode", kind: str, start_ns: int, length: int) -> None:
    node.stats.done(kind, start_ns, length)
    node.stats.done("copy_range", start_ns, length)


def _copy_failed(node: "BlockNode", kind: str, start_ns: int, exc: BlockError) -> None:
    """Count a failed copy; NotSupported is a "cannot", not an I/O error."""
    if not isinstance(exc, NotSupported):
        node.stats.done(kind, start_ns, 0, ok=False)
        node.stats.done("copy_range", start_ns, 0, ok=False)


# ---------------------------------------------------------------------------------------
# Flush, truncate, length
# ---------------------------------------------------------------------------------------

async def node_flush(node: "BlockNode") -> None:
    """Make everything written so far durable on this node and the children it writes."""
    async with _request(node, "flush", 0, 0, write=False):
        start_ns = node.stats.start()
        try:
            await node.driver.flush_to_os()
            if not node.flags.cache.no_flush:
                await node.driver.flush_to_disk()
            for child in list(node.children.values()):
                if child.perm & 0x6 and not child.node.closed:   # WRITE | WRITE_UNCHANGED
                    await node_flush(child.node)
        except BlockError:
            node.stats.done("flush", start_ns, 0, ok=False)
            raise
        node.stats.done("flush", start_ns, 0)


async def node_truncate(node: "BlockNode", size: int, exact: bool = False,
                        prealloc: Prealloc = Prealloc.OFF) -> None:
    """Resize the node to ``size`` bytes."""
    if size < 0:
        raise InvalidArgument("Invalid size")
    old = node.total_bytes
    backing = node.backing
    async with _request(node, "write", 0, 0, write=True):
        async with tracked(node, min(size, node.total_bytes), BDRV_MAX_LENGTH,
                           serialising=True):
            await node.driver.truncate(size, exact, prealloc)
            await node_refresh_total_bytes(node)
    # QEMU: growing over a longer backing file zeroes the new area (no backing data
    # may show through; preallocated clusters already read as zeroes)
    if size > old and backing is not None and backing.total_bytes > old \
            and prealloc is Prealloc.OFF:
        await node_write_zeroes(node, old, size - old)


async def node_length(node: "BlockNode") -> int:
    return node.total_bytes


async def node_refresh_total_bytes(node: "BlockNode") -> int:
    node.total_bytes = await node.driver.get_length()
    return node.total_bytes


async def node_allocated_file_size(node: "BlockNode") -> int:
    return await node.driver.get_allocated_file_size()


# ---------------------------------------------------------------------------------------
# Block status
# ---------------------------------------------------------------------------------------

async def node_block_status(node: "BlockNode", offset: int, length: int,
                            want_zero: bool = True) -> BlockStatus:
    """Status of a prefix of ``[offset, offset+length)`` in this node alone."""
    total = node.total_bytes
    if offset >= total or length == 0:
        return BlockStatus(Status.EOF, 0)
    length = min(length, total - offset)
    drv = node.driver
    align = node.limits.request_alignment
    aligned_off = align_down(offset, align)
    query_len = align_up(offset + length, align) - aligned_off
    depth_token = REQUEST_DEPTH.set(REQUEST_DEPTH.get() + 1)
    try:
        if node.caps & CAP_BLOCK_STATUS:
            st = await drv.block_status(aligned_off, query_len, want_zero)
        elif drv.is_filter and node.data_child is not None:
            st = BlockStatus(Status.RAW | Status.OFFSET_VALID, query_len,
                             aligned_off, node.data_child)
        else:
            st = BlockStatus(Status.DATA | Status.ALLOCATED
                             | (Status.OFFSET_VALID if drv.is_protocol else Status.NONE),
                             query_len, aligned_off if drv.is_protocol else None,
                             node if drv.is_protocol else None)
        st = await _refine_status(node, st, aligned_off, want_zero)
    finally:
        REQUEST_DEPTH.reset(depth_token)
    # trim back to the caller's unaligned offset
    skip = offset - aligned_off
    n = max(min(st.length - skip, length), 0)
    if n == 0:
        n = min(length, align - skip) if st.length else 0
    if st.offset is not None:
        st.offset += skip
    st.length = n
    if offset + n >= total:
        st.flags |= Status.EOF
    return st


async def _refine_status(node: "BlockNode", st: BlockStatus, offset: int,
                         want_zero: bool) -> BlockStatus:
    """What QEMU's bdrv_co_block_status adds to a driver's answer."""
    if st.length <= 0:
        raise BlockError(f"Driver '{node.format_name}' gave an empty block status", errno.EIO)
    if st.flags & Status.RAW and st.file is not None:
        inner = await node_block_status(st.file, st.offset or 0, st.length, want_zero)
        if inner.length == 0:   # beyond the end of the file: reads as zeroes
            return BlockStatus(Status.ZERO | Status.ALLOCATED, st.length)
        return inner
    if st.flags & (Status.DATA | Status.ZERO):
        st.flags |= Status.ALLOCATED
    elif node.driver.supports_backing:
        backing = node.filtered_backing()
        if backing is None or (want_zero and offset >= backing.total_bytes):
            st.flags |= Status.ZERO
    if (want_zero and st.flags & Status.RECURSE and st.flags & Status.DATA
            and not st.flags & Status.ZERO and st.flags & Status.OFFSET_VALID
            and st.file is not None and st.file is not node):
        inner = await node_block_status(st.file, st.offset or 0, st.length, want_zero)
        if inner.flags & Status.EOF and (inner.length == 0 or inner.flags & Status.ZERO):
            st.flags |= Status.ZERO
        else:
            st.length = min(st.length, inner.length)
            st.flags |= inner.flags & Status.ZERO
    st.flags &= ~Status.RECURSE
    return st


async def node_block_status_above(node: "BlockNode", base: "BlockNode | None", offset: int,
                                  length: int, want_zero: bool = True,
                                  include_base: bool = False) -> BlockStatus:
    """Status through the backing chain from ``node`` down to ``base`` (excluded unless
    ``include_base``), as QEMU's bdrv_block_status_above: the answer of the first layer
    that holds the range, or of the last layer looked at.  ``depth`` is that layer's
    index (0 = ``node``)."""
    st = await node_block_status(node, offset, length, want_zero)
    if st.length == 0 or st.allocated or node is base:
        return st
    length = min(length, st.length)
    layer = node.filtered_backing()
    depth = 1
    while layer is not None and (include_base or layer is not base):
        inner = await node_block_status(layer, offset, length, want_zero)
        if inner.length == 0:
            inner = BlockStatus(Status.ZERO | Status.ALLOCATED, length)
        inner.depth = depth
        st = inner
        if st.allocated or layer is base:
            break
        length = min(length, st.length)
        layer = layer.filtered_backing()
        depth += 1
    st.length = min(st.length, length)
    return st


async def node_is_allocated(node: "BlockNode", offset: int, length: int) -> tuple[bool, int]:
    """Whether this node alone determines the content of a prefix of the range."""
    st = await node_block_status(node, offset, length, want_zero=False)
    return st.allocated, st.length


async def node_is_allocated_above(node: "BlockNode", base: "BlockNode | None", offset: int,
                                  length: int, include_base: bool = False) -> tuple[int, int]:
    """Depth (1 = ``node``) of the first layer above ``base`` holding the prefix, else 0."""
    layer: BlockNode | None = node
    depth = 1
    n = length
    while layer is not None and (layer is not base or include_base):
        if offset < layer.total_bytes:
            allocated, pnum = await node_is_allocated(layer, offset, n)
        else:
            allocated, pnum = False, n
        if allocated:
            return depth, pnum
        n = min(n, pnum) if pnum else n
        if layer is base:
            break
        layer = layer.filtered_backing()
        depth += 1
    return 0, n
