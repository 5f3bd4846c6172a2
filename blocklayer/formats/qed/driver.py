"""The ``qed`` format driver (QEMU's block/qed.c, rebuilt on the driver interface).

Reads translate guest runs through :class:`~.mapping.QedImage` and never wait for
anything.  Writes to allocated clusters go straight to the file, concurrently.  Writes
that allocate (a data cluster, an L2 table, or a zero-cluster entry) take turns in the
allocation queue: the first one sets the need-check bit (written and flushed), each
copies the untouched part of its clusters from the backing file (or zeroes), writes its
data, flushes when there is a backing file, then updates the L2 table and, for a new
table, the L1 entry.  Once allocating writes have been quiet for ``NEED_CHECK_TIMEOUT``
seconds the file is flushed and the bit cleared, as it is on a clean close.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
from array import array
from typing import Any, AsyncIterator

from ...core.driver import (BlockDriver, BlockStatus, Cap, CheckMode, CheckResult, CreateOption,
                       DriverInfo, Limits, Prealloc, ReqFlag, Status)
from ...core.errors import BlockError, InvalidArgument, NoSpace, NotSupported
from ...core.io import metadata_io
from ...core.options import OpenFlags
from . import layout as L
from .check import check_image
from .layout import Header
from .mapping import Kind, QedImage, Run
from .table import read_table

NEED_CHECK_TIMEOUT = 5.0        # seconds of quiet after which the need-check bit goes
BIG_WRITE = 4 << 20             # above this, COW head/data/tail are written separately


def _zeros(n: int) -> bytes:
    return bytes(n)


class AllocQueue:
    """Allocating writes, one at a time in arrival order (QEMU's allocating_write_reqs)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._lock.release()


class QedDriver(BlockDriver):
    format_name = "qed"
    is_format = True
    supports_backing = True
    caps = Cap.WRITE_ZEROES | Cap.BLOCK_STATUS
    create_options = (
        CreateOption("size", "size", "Virtual disk size"),
        CreateOption("backing_file", "string", "File name of a base image"),
        CreateOption("backing_fmt", "string", "Image format of the base image"),
        CreateOption("cluster_size", "size", "Cluster size (in bytes)", L.DEFAULT_CLUSTER_SIZE),
        CreateOption("table_size", "size", "L1/L2 table size (in clusters)",
                     L.DEFAULT_TABLE_SIZE),
    )
    #: qemu-img's Formatting line shows only cluster_size's default
    create_defaults_shown = ("cluster_size",)

    img: QedImage
    backing_name: str | None = None
    _timer: asyncio.TimerHandle | None = None
    _timer_task: "asyncio.Task[None] | None" = None

    # ---- probe and create -------------------------------------------------------------
    @classmethod
    def probe(cls, header: bytes, filename: str | None) -> int:
        if len(header) < L.HEADER_SIZE:
            return 0
        return 100 if int.from_bytes(header[:4], "little") == L.MAGIC else 0

    @classmethod
    async def create(cls, filename: str, options: dict[str, Any], *,
                     open_file: Any = None) -> None:
        size = -(-int(options.get("size", 0)) // L.SECTOR) * L.SECTOR
        cs = int(options.get("cluster_size", L.DEFAULT_CLUSTER_SIZE))
        ts = int(options.get("table_size", L.DEFAULT_TABLE_SIZE))
        prealloc = str(options.get("preallocation", "off"))
        if prealloc not in [p.value for p in Prealloc]:
            raise InvalidArgument(f"invalid parameter value: {prealloc}")
        if prealloc == Prealloc.METADATA.value:
            raise NotSupported(f"Unsupported preallocation mode: {prealloc}")
        if not L.cluster_size_valid(cs):
            raise InvalidArgument("QED cluster size must be within range [%d, %d] and power "
                                  "of 2" % (L.MIN_CLUSTER_SIZE, L.MAX_CLUSTER_SIZE))
        if not L.table_size_valid(ts):
            raise InvalidArgument("QED table size must be within range [%d, %d] and power "
                                  "of 2" % (L.MIN_TABLE_SIZE, L.MAX_TABLE_SIZE))
        if not L.image_size_valid(size, cs, ts):
            raise InvalidArgument("QED image size must be a non-zero multiple of cluster "
                                  "size and less than %d bytes" % L.max_image_size(cs, ts))
        header, name = Header(cluster_size=cs, table_size=ts, l1_table_offset=cs,
                              image_size=size), b""
        if options.get("backing_file"):
            header, name = _header_for(header, options["backing_file"],
                                       options.get("backing_fmt"))
        if L.HEADER_SIZE + len(name) > cs or len(name) > L.MAX_BACKING_NAME:
            raise InvalidArgument("Backing file name too long for the QED header")
        if open_file is None:
            raise NotSupported("Driver 'qed' needs a protocol to create images on")
        file = await open_file(filename)
        try:
            await file.truncate(cs + ts * cs)
            await file.write(0, header.build() + name)
            await file.flush()
        finally:
            await file.close()

    # ---- open and close ---------------------------------------------------------------
    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        file = self.node.file
        if file is None:
            raise InvalidArgument("A 'qed' node needs a 'file' child")
        self.queue = AllocQueue()
        raw = await file.read(0, min(L.HEADER_SIZE, file.total_bytes))
        header = Header.parse(raw)
        file_size = L.validate_header(header, file.total_bytes)
        if header.has(L.F_BACKING_FILE):
            name = await file.read(header.backing_filename_offset,
                                   header.backing_filename_size)
            self.backing_name = name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        geo = L.Geometry.of(header)
        l1 = await read_table(file, header.l1_table_offset, geo)
        self.img = QedImage(file, header, file_size, l1)
        if flags.read_only:
            return
        if header.autoclear_features & ~L.AUTOCLEAR_FEATURE_MASK:
            self.img.header = header.with_(
                autoclear_features=header.autoclear_features & L.AUTOCLEAR_FEATURE_MASK)
            await self.img.write_header()
            await file.flush()
        if header.has(L.F_NEED_CHECK) and not flags.check:
            # not closed cleanly: repair what can be, and clear the bit if nothing is left
            await check_image(self.img, fix=True)

    async def close(self) -> None:
        self._cancel_timer()
        if self._timer_task is not None:
            with contextlib.suppress(BaseException):
                await self._timer_task
        if hasattr(self, "img") and not self.node.read_only:
            async with self.queue.turn():
                await self._clear_need_check()

    async def release(self) -> None:
        """After a failed open: stop the timer, write nothing."""
        self._cancel_timer()

    def limits(self) -> Limits:
        cs = self.img.geo.cluster_size
        return Limits(request_alignment=1, pwrite_zeroes_alignment=cs,
                      max_pwrite_zeroes=((1 << 31) - 1) // cs * cs,
                      opt_transfer=cs)

    # ---- the need-check protocol ------------------------------------------------------
    async def _mark_dirty(self) -> None:
        """Before the first allocating write: set NEED_CHECK and make it durable."""
        img = self.img
        if img.header.has(L.F_NEED_CHECK):
            return
        img.header = img.header.with_(features=img.header.features | L.F_NEED_CHECK)
        await img.write_header()
        await img.file.flush()

    async def _clear_need_check(self) -> None:
        """Flush, then clear NEED_CHECK (the caller holds the allocation queue)."""
        img = self.img
        if not img.header.has(L.F_NEED_CHECK) or img.file.closed:
            return
        await img.file.flush()
        img.header = img.header.with_(features=img.header.features & ~L.F_NEED_CHECK)
        await img.write_header()
        await img.file.flush()

    def _arm_timer(self) -> None:
        self._cancel_timer()
        if self.img.header.has(L.F_NEED_CHECK):
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(NEED_CHECK_TIMEOUT, self._timer_fired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        if self._timer_task is None or self._timer_task.done():
            self._timer_task = asyncio.ensure_future(self._timer_work())

    async def _timer_work(self) -> None:
        try:
            with metadata_io():     # metadata work of this node, not a request from outside
                async with self.queue.turn():
                    if self._timer is None and not self.node.closed:
                        await self._clear_need_check()
        except BlockError:
            pass                    # stays dirty; the next open checks it

    # ---- read -------------------------------------------------------------------------
    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        img = self.img
        run = await img.find(offset, length)
        if run.length == length:
            return await self._read_run(run, offset)
        out = bytearray(length)
        pos, end = offset, offset + length
        while True:
            if run.kind is not Kind.ZERO:
                out[pos - offset:pos - offset + run.length] = await self._read_run(run, pos)
            pos += run.length
            if pos >= end:
                return out
            run = await img.find(pos, end - pos)

    async def _read_run(self, run: Run, pos: int) -> bytes | bytearray:
        if run.kind is Kind.DATA:
            return await self.img.file.read(run.host, run.length)
        if run.kind is Kind.ZERO:
            return _zeros(run.length)
        return await self._read_backing(pos, run.length)

    async def _read_backing(self, pos: int, length: int) -> bytes | bytearray:
        """The backing file's bytes, zeroes where it has none (or is shorter)."""
        backing = self.node.backing
        if backing is None or pos >= backing.total_bytes:
            return _zeros(length)
        n = min(length, backing.total_bytes - pos)
        data = await backing.read(pos, n)
        return data if n == length else bytes(data) + _zeros(length - n)

    # ---- write ------------------------------------------------------------------------
    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        await self._write(offset, len(data), memoryview(data))

    async def write_zeroes(self, offset: int, length: int, flags: ReqFlag) -> None:
        cs = self.img.geo.cluster_size
        if offset % cs or length % cs:
            raise NotSupported("QED zeroes whole clusters only")
        await self._write(offset, length, None)

    async def _write(self, offset: int, length: int, data: memoryview | None) -> None:
        """Write ``data`` (zeroes when None) run by run."""
        pos, end = offset, offset + length
        while pos < end:
            run = await self.img.find(pos, end - pos)
            if run.kind is Kind.DATA:
                await self._write_in_place(run, _piece(data, pos - offset, run.length))
                pos += run.length
            else:
                pos += await self._allocating_write(pos, end - pos, data, pos - offset)

    async def _write_in_place(self, run: Run, data: memoryview | None) -> None:
        file = self.img.file
        if data is None:
            await file.write_zeroes(run.host, run.length)
        else:
            await file.write(run.host, data)

    async def _allocating_write(self, pos: int, length: int, data: memoryview | None,
                                rel: int) -> int:
        """One run that needs new metadata, in the queue; returns the bytes done."""
        img = self.img
        async with self.queue.turn():
            self._cancel_timer()
            try:
                run = await img.find(pos, length)      # another writer may have allocated it
                piece = _piece(data, rel, run.length)
                if run.kind is Kind.DATA:
                    await self._write_in_place(run, piece)
                    return run.length
                if data is None and run.kind is Kind.ZERO:
                    return run.length
                await self._mark_dirty()
                geo = img.geo
                n = geo.bytes_to_clusters(geo.offset_into_cluster(pos) + run.length)
                if data is None:
                    entries = array("Q", [L.ZERO_CLUSTER]) * n
                else:
                    host = img.alloc_clusters(n)
                    await self._fill_clusters(host, pos, run, piece)
                    entries = array("Q", range(host, host + n * geo.cluster_size,
                                               geo.cluster_size))
                await self._update_l2(pos, run.kind, entries)
                return run.length
            finally:
                if self.queue.waiting == 0:
                    self._arm_timer()

    async def _fill_clusters(self, host: int, pos: int, run: Run,
                             data: memoryview | None) -> None:
        """Write new clusters: the guest data, and around it what was there before
        (the backing file's bytes, or zeroes for a zero cluster or no backing file)."""
        geo, file = self.img.geo, self.img.file
        start = geo.start_of_cluster(pos)
        end = pos + run.length
        tail_end = geo.start_of_cluster(end + geo.cluster_size - 1)
        head = await self._old_contents(start, pos - start, run.kind)
        tail = await self._old_contents(end, tail_end - end, run.kind)
        assert data is not None
        if run.length <= BIG_WRITE:
            await file.write(host, b"".join((head, data, tail)))
        else:
            if head:
                await file.write(host, head)
            await file.write(host + len(head), data)
            if tail:
                await file.write(host + len(head) + run.length, tail)
        if self.node.backing is not None:
            # the copied backing data must be durable before the L2 table points at it
            await file.flush()

    async def _old_contents(self, pos: int, length: int, kind: Kind) -> bytes | bytearray:
        if length == 0:
            return b""
        if kind is Kind.ZERO:
            return _zeros(length)
        return await self._read_backing(pos, length)

    async def _update_l2(self, pos: int, kind: Kind, entries: array) -> None:
        """Point the L2 entries for ``pos`` at ``entries`` (a new table if needed)."""
        img, geo = self.img, self.img.geo
        idx, l1_idx = geo.l2_index(pos), geo.l1_index(pos)
        count = len(entries)
        if kind is Kind.NO_L2:
            entry = await img.new_l2()
            try:
                entry.table[idx:idx + count] = entries
                await img.write_l2(entry)
                img.l1[l1_idx] = entry.offset
                try:
                    await img.write_l1(l1_idx)
                except BaseException:
                    img.l1[l1_idx] = L.UNALLOCATED
                    raise
            finally:
                img.cache.release(entry)
            return
        entry = await img.l2_table(img.l2_offset(pos))
        try:
            old = entry.table[idx:idx + count]
            entry.table[idx:idx + count] = entries
            try:
                await img.write_l2(entry, idx, count)
            except BaseException:
                entry.table[idx:idx + count] = old
                raise
        finally:
            img.cache.release(entry)

    # ---- status, size, info -------------------------------------------------------------
    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        run = await self.img.find(offset, length)
        if run.kind is Kind.DATA:
            return BlockStatus(Status.DATA | Status.OFFSET_VALID, run.length, run.host,
                               self.img.file)
        if run.kind is Kind.ZERO:
            return BlockStatus(Status.ZERO, run.length)
        return BlockStatus(Status.NONE, run.length)

    async def get_length(self) -> int:
        return self.img.header.image_size

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        if prealloc is not Prealloc.OFF:
            raise NotSupported(f"Unsupported preallocation mode '{prealloc.value}'")
        h = self.img.header
        if not L.image_size_valid(size, h.cluster_size, h.table_size):
            raise InvalidArgument("Invalid image size specified")
        if size < h.image_size:
            raise NotSupported("Shrinking images is currently not supported")
        async with self.queue.turn():
            self.img.header = h.with_(image_size=size)
            try:
                await self.img.write_header()
                await self.img.file.flush()
            except BlockError as exc:
                self.img.header = h
                raise BlockError(f"Failed to update the image size: {exc.strerror}",
                                 exc.errno) from None

    def has_zero_init(self) -> bool:
        return self.node.backing is None and not self.img.header.has(L.F_BACKING_FILE)

    def get_info(self) -> DriverInfo:
        return DriverInfo(cluster_size=self.img.geo.cluster_size,
                          is_dirty=self.img.header.has(L.F_NEED_CHECK))

    # ---- reopen -----------------------------------------------------------------------
    async def reopen_prepare(self, options: dict[str, Any], read_only: bool) -> Any:
        if read_only and not self.node.read_only:
            self._cancel_timer()
            async with self.queue.turn():
                await self._clear_need_check()
        return None

    # ---- image management ---------------------------------------------------------------
    async def check(self, mode: CheckMode) -> CheckResult:
        async with self.queue.turn():
            return await check_image(self.img, fix=bool(mode & CheckMode.FIX_ALL))

    def backing_file_name(self) -> tuple[str | None, str | None]:
        if not self.img.header.has(L.F_BACKING_FILE):
            return None, None
        fmt = "raw" if self.img.header.has(L.F_BACKING_FORMAT_NO_PROBE) else None
        return self.backing_name, fmt

    async def change_backing_file(self, backing_file: str | None,
                                  backing_fmt: str | None) -> None:
        img = self.img
        if backing_file and img.header.compat_features & ~L.COMPAT_FEATURE_MASK:
            raise NotSupported("Cannot change the backing file of a QED image with unknown "
                               "compatible features")
        header, name = _header_for(img.header, backing_file, backing_fmt)
        if L.HEADER_SIZE + len(name) > header.header_bytes or len(name) > L.MAX_BACKING_NAME:
            raise NoSpace("Backing file name too long for the QED header", errno.ENOSPC)
        async with self.queue.turn():
            await img.file.write(0, header.build() + name)
            await img.file.flush()
            img.header = header
            self.backing_name = backing_file or None

def _piece(data: memoryview | None, rel: int, n: int) -> memoryview | None:
    return None if data is None else data[rel:rel + n]


def _header_for(header: Header, backing_file: str | None,
                backing_fmt: str | None) -> tuple[Header, bytes]:
    """``header`` with the backing-file fields for ``backing_file``, and the name bytes."""
    features = header.features & ~(L.F_BACKING_FILE | L.F_BACKING_FORMAT_NO_PROBE)
    if not backing_file:
        return header.with_(features=features, backing_filename_offset=L.HEADER_SIZE,
                            backing_filename_size=0), b""
    name = backing_file.encode("utf-8", "surrogateescape")
    features |= L.F_BACKING_FILE
    if backing_fmt == "raw":
        features |= L.F_BACKING_FORMAT_NO_PROBE
    return header.with_(features=features, backing_filename_offset=L.HEADER_SIZE,
                        backing_filename_size=len(name)), name
