"""The ``file`` protocol driver (and ``host_device``): regular files and block devices.

Reads that the page cache holds are served on the loop thread (RWF_NOWAIT), others
in the loop's thread pool; small writes run inline, large ones on the file's writer
thread (:mod:`.writer`), in order, so the loop never blocks on the disk and a copy
reads ahead while the kernel writes.  ``cache=none`` opens with O_DIRECT and bounces
through page-aligned buffers.  Write zeroes and discard use fallocate; block status
uses SEEK_DATA / SEEK_HOLE; flush is fdatasync.  Image locks are taken as QEMU takes
them (see :mod:`blocklayer.core.locking`).
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import mmap
import os
import stat
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ..core.driver import (BlockDriver, BlockStatus, Cap, CreateOption, Limits, Perm, Prealloc,
                      ReqFlag, Status)
from ..core.errors import BlockError, HostIOError, InvalidArgument, NotSupported
from ..core.io import OVERLAPPED
from ..host.extents import Extents, extents_of, walk
from ..host.libc import LIBC as _libc
from ..core.locking import ImageLock, ofd_supported
from ..host.memory import uninitialized
from ..core.options import OpenFlags, parse_bool
from ..host.writer import Writer, thread_name

if TYPE_CHECKING:
    from ..core.node import BlockNode

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA, SEEK_HOLE = getattr(os, "SEEK_DATA", 3), getattr(os, "SEEK_HOLE", 4)
MAX_TRANSFER = 1 << 30
INLINE_WRITE_MAX = 4 << 20
INLINE_WRITE_SMALL = 64 << 10
#: buffered writes from this size allocate their range before they copy
PREALLOCATE_MIN = 1 << 20
#: copy_file_range errors that mean "not between these two files" (callers fall back)
COPY_UNSUPPORTED = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                              errno.ETXTBSY})
T = TypeVar("T")

_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _zero_fill(fd: int, offset: int, length: int) -> None:
    chunk = bytes(min(length, 1 << 20))
    end = offset + length
    while offset < end:
        n = os.pwrite(fd, memoryview(chunk)[:min(len(chunk), end - offset)], offset)
        offset += n


class FileDriver(BlockDriver):
    format_name = "file"
    is_protocol = True
    caps = Cap.WRITE_ZEROES | Cap.DISCARD | Cap.BLOCK_STATUS | Cap.ALLOCATES_IN_ORDER
    open_options = ("filename", "aio", "aio-max-batch", "locking", "pr-manager", "x-inline-io",
                    "drop-cache", "x-check-cache-dropped")
    create_options = (
        CreateOption("size", "size", "Virtual disk size"),
        CreateOption("preallocation", "string",
                     "Preallocation mode (allowed values: off, falloc, full)", "off"),
        CreateOption("nocow", "bool", "Turn off copy-on-write (valid only on btrfs)", False),
        CreateOption("extent_size_hint", "size", "Extent size hint for the image file, 0 to disable", 1 << 20),
    )

    fd: int = -1
    lock: ImageLock | None = None
    direct: bool = False
    alignment: int = 1
    punch_ok: bool = True
    inline_reads: bool = True
    inline_writes: bool = True
    zero_range_ok: bool = True
    writer: Writer | None = None
    extents: Extents             # where the file holds data, from the last walk
    preallocate_ok: bool = True

    # ---- create -------------------------------------------------------------------------
    @classmethod
    async def create(cls, filename: str, options: dict[str, Any], *,
                     open_file: Any = None) -> None:
        size = -(-int(options.get("size", 0)) // 512) * 512     # whole sectors, as QEMU
        prealloc = Prealloc(options.get("preallocation", "off"))
        if prealloc is Prealloc.METADATA:
            raise InvalidArgument("Unsupported preallocation mode 'metadata'")
        path = _strip_prefix(filename)

        def work() -> None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                lock = ImageLock(fd, path)
                if ofd_supported(fd):
                    lock.apply(Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE,
                               Perm.CONSISTENT_READ)
                os.ftruncate(fd, 0)
                _grow(fd, 0, size, prealloc)
                if size and prealloc is Prealloc.OFF:
                    _allocate_first_block(fd, size)
                lock.release()
            finally:
                os.close(fd)

        await _run(work, f"Could not create '{path}'")

    # ---- open / close --------------------------------------------------------------------
    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        filename = options.get("filename")
        if not filename:
            raise InvalidArgument("The 'file' block driver requires a file name")
        path = _strip_prefix(str(filename))
        self.path = path
        self.direct = flags.cache.direct
        mode = os.O_RDONLY if flags.read_only else os.O_RDWR
        mode |= os.O_CLOEXEC | (os.O_DIRECT if self.direct else 0)
        try:
            self.fd = os.open(path, mode)
        except OSError as exc:
            if exc.errno == errno.EINVAL and self.direct:
                raise BlockError(f"Could not open '{path}': filesystem does not support O_DIRECT",
                                 exc.errno) from None
            raise HostIOError.from_oserror(exc, f"Could not open '{path}'") from None
        st = os.fstat(self.fd)
        problem = self.file_type_problem(path, st.st_mode)
        if problem:
            os.close(self.fd)
            self.fd = -1
            raise BlockError(problem, errno.EINVAL)
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        self.extents = extents_of(self.fd)
        self.extents.changed()      # whatever was walked before this open may be stale
        aio = str(options.get("aio", "threads"))
        if aio not in ("threads", "native", "io_uring"):
            raise InvalidArgument(f"Invalid parameter 'aio': {aio}")
        if aio == "threads" and options.get("x-inline-io") in ("off", False):
            self.inline_reads = self.inline_writes = False
        if self.is_block_device:
            self.inline_writes = False
        locking = str(options.get("locking", "auto"))
        if locking not in ("auto", "on", "off"):
            raise InvalidArgument(f"Invalid parameter 'locking': {locking}")
        if locking == "on" or (locking == "auto" and ofd_supported(self.fd)):
            self.lock = ImageLock(self.fd, path)
        if "drop-cache" in options:
            parse_bool(options["drop-cache"], "drop-cache")
        if self.direct:
            self.alignment = await asyncio.get_running_loop().run_in_executor(
                None, _probe_alignment, self.fd)

    def file_type_problem(self, path: str, mode: int) -> str | None:
        """QEMU's check of the file type each driver accepts (a read-write open of a
        directory has already failed with "Is a directory")."""
        if stat.S_ISREG(mode):
            return None
        return f"'{self.format_name}' driver requires '{path}' to be a regular file"

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.fd >= 0:
            if self.lock is not None:
                self.lock.release()
            os.close(self.fd)
            self.fd = -1

    def limits(self) -> Limits:
        return Limits(request_alignment=self.alignment, max_transfer=MAX_TRANSFER,
                      opt_transfer=0, min_mem_alignment=self.alignment,
                      opt_mem_alignment=max(self.alignment, 4096),
                      pdiscard_alignment=0, pwrite_zeroes_alignment=0)

    def check_perm(self, perm: Perm, shared: Perm) -> None:
        if self.lock is not None:
            self.lock.apply(perm, shared)

    # ---- I/O -------------------------------------------------------------------------------
    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        fd = self.fd
        if self.direct:
            return await _run(lambda: _direct_read(fd, offset, length), "read")
        if self.inline_reads:
            buf = self.try_read(offset, length)
            if buf is not None:
                return buf
        return await _run(lambda: _pread_full(fd, offset, length), "read")

    def try_read(self, offset: int, length: int) -> bytearray | None:
        """A page-cache hit, served on the loop thread (a thread hop costs more than the
        copy); ``None`` when the data is not all cached (RWF_NOWAIT fails instead of
        blocking on the disk) or on any error, which the full path then reports."""
        if not self.inline_reads:
            return None
        buf = uninitialized(length)     # read whole or thrown away
        try:
            got = os.preadv(self.fd, [buf], offset, os.RWF_NOWAIT)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self.inline_reads = False
            return None
        return buf if got == length else None

    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        fd = self.fd
        self.extents.changed()
        if self.direct:
            try:
                await _run(lambda: _direct_write(fd, offset, data), "write")
            finally:
                self.extents.changed()
        elif self.inline_writes and (len(data) <= INLINE_WRITE_SMALL or (
                len(data) <= INLINE_WRITE_MAX and self.node.state.in_flight <= 1
                and not OVERLAPPED.get())):
            # A buffered write only copies into the page cache: small, or alone with
            # nothing else for the loop to do, it is cheaper here than a thread hop.
            try:
                self._write_sync(offset, data)
            except OSError as exc:
                raise HostIOError.from_oserror(exc, "write failed") from None
        else:
            # Others go to this file's writer thread, in order, so the loop goes on
            # (reading what comes next) while the kernel copies.
            if self.writer is None:
                self.writer = Writer(thread_name(self.path))
            try:
                await self.writer.run(lambda: self._write_sync(offset, data))
            except OSError as exc:
                raise HostIOError.from_oserror(exc, "write failed") from None
            finally:
                self.extents.changed()

    def _write_sync(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """A buffered write; a long one first allocates its range (fallocate, keeping
        the size), which is what the write would allocate anyway: filling allocated
        blocks costs the kernel a third less than allocating them page by page as it
        copies (ext4's delayed allocation), and an overwrite costs one cheap call."""
        if len(data) >= PREALLOCATE_MIN and self.preallocate_ok:
            try:
                fallocate(self.fd, FALLOC_FL_KEEP_SIZE, offset, len(data))
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    self.preallocate_ok = False
                # anything else (no space) is for the write itself to report
        _pwrite_full(self.fd, offset, data)

    async def write_zeroes(self, offset: int, length: int, flags: ReqFlag) -> None:
        await self._changing(lambda: self._write_zeroes_sync(offset, length, flags),
                             "write zeroes")

    async def _changing(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` (which changes the file's extents) in a thread; the extents
        walked before it, or while it runs, are not used again."""
        self.extents.changed()
        try:
            return await _run(fn, what)
        finally:
            self.extents.changed()

    def _write_zeroes_sync(self, offset: int, length: int, flags: ReqFlag) -> None:
        size = os.fstat(self.fd).st_size
        end = offset + length
        if self.is_block_device:
            raise NotSupported("write zeroes on a block device")
        if offset >= size:
            # extending with zeroes: QEMU's file-posix zero-ranges past the end too (the
            # file grows with the blocks allocated, read as zeroes), else truncates up
            if not self._zero_range(offset, length):
                os.ftruncate(self.fd, end)
            return
        if flags & ReqFlag.MAY_UNMAP and self.punch_ok:
            try:
                fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
                          min(end, size) - offset)
                if end > size:
                    os.ftruncate(self.fd, end)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                self.punch_ok = False
        if not self._zero_range(offset, length):
            raise NotSupported("write zeroes not supported by the file system")

    def _zero_range(self, offset: int, length: int) -> bool:
        """fallocate(ZERO_RANGE) while the file system has it; False when it has not."""
        if not self.zero_range_ok:
            return False
        try:
            fallocate(self.fd, FALLOC_FL_ZERO_RANGE, offset, length)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            self.zero_range_ok = False
            return False

    async def discard(self, offset: int, length: int) -> None:
        fd = self.fd

        def punch() -> None:
            try:
                fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise NotSupported("discard not supported") from None
                raise
        await self._changing(punch, "discard")

    # ---- copy offloading ----------------------------------------------------------------
    async def copy_range_from(self, offset: int, dst: "BlockNode", dst_offset: int,
                              length: int, flags: ReqFlag) -> None:
        await dst.copy_range_to(self.node, offset, dst_offset, length, flags)

    async def copy_range_to(self, src: "BlockNode", src_offset: int, offset: int,
                            length: int, flags: ReqFlag) -> None:
        source = src.driver
        if not isinstance(source, FileDriver) or source.fd < 0:
            raise NotSupported(f"Cannot offload a copy from a '{src.format_name}' node "
                               f"to a file")
        src_fd, dst_fd = source.fd, self.fd
        await self._changing(lambda: _copy_file_range(src_fd, src_offset, dst_fd, offset,
                                                      length), "copy range")

    async def flush_to_disk(self) -> None:
        fd = self.fd
        await _run(lambda: os.fdatasync(fd), "flush")

    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        if not want_zero:
            return BlockStatus(Status.DATA | Status.OFFSET_VALID, length, offset, self.node)
        found = self.extents.lookup(offset)
        if found is None:       # one thread hop walks many extents (host/extents.py)
            fd, end = self.fd, offset + length
            generation, budget = self.extents.start_walk()
            bounds, kinds = await _run(lambda: walk(fd, offset, end, budget), "block status")
            self.extents.store(generation, bounds, kinds)
            found = kinds[0], bounds[1]
        data, extent_end = found
        n = extent_end - offset
        if data:
            align = self.alignment
            if n % align:
                n += align - n % align
        n = max(min(n, length), 1)
        return BlockStatus((Status.DATA if data else Status.ZERO) | Status.OFFSET_VALID,
                           n, offset, self.node)

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        fd = self.fd
        if self.is_block_device:
            cur = await self.get_length()
            if size > cur or (exact and size != cur):
                raise NotSupported("Cannot grow device files")
            return
        if prealloc is Prealloc.METADATA:
            raise InvalidArgument("Unsupported preallocation mode 'metadata'")

        def work() -> None:
            cur = os.fstat(fd).st_size
            if size <= cur:
                os.ftruncate(fd, size)
            else:
                _grow(fd, cur, size, prealloc)
        await self._changing(work, "truncate")

    async def get_length(self) -> int:
        if self.fd < 0:
            return 0
        if self.is_block_device:
            return os.lseek(self.fd, 0, os.SEEK_END)
        return -(-os.fstat(self.fd).st_size // 512) * 512    # whole sectors, as QEMU counts

    async def get_allocated_file_size(self) -> int:
        st = os.fstat(self.fd)
        return st.st_blocks * 512

    def has_zero_init(self) -> bool:
        return not self.is_block_device

    async def reopen_prepare(self, options: dict[str, Any], read_only: bool) -> Any:
        if read_only == self.node.read_only:
            return None
        mode = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        mode |= os.O_DIRECT if self.direct else 0
        try:
            return os.open(self.path, mode)
        except OSError as exc:
            raise HostIOError.from_oserror(exc, f"Could not reopen file '{self.path}'") from None

    async def reopen_commit(self, state: Any) -> None:
        if state is None:
            return
        old = self.fd
        self.fd = state
        if self.lock is not None:
            perm, shared = self.lock.perm, self.lock.shared
            self.lock.release()
            self.lock = ImageLock(self.fd, self.path)
            self.lock.perm, self.lock.shared = Perm.NONE, Perm.ALL
            self.lock.apply(perm, shared)
        os.close(old)

    async def reopen_abort(self, state: Any) -> None:
        if state is not None:
            os.close(state)


class HostDeviceDriver(FileDriver):
    format_name = "host_device"

    def file_type_problem(self, path: str, mode: int) -> str | None:
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            return None
        return (f"'{self.format_name}' driver requires '{path}' to be either a character "
                "or block device")


class HostCdromDriver(HostDeviceDriver):
    """``host_cdrom``: a host device opened as QEMU opens a CD-ROM (no media handling)."""
    format_name = "host_cdrom"


# ---------------------------------------------------------------------------------------
# Helpers (run in worker threads)
# ---------------------------------------------------------------------------------------

async def _run(fn: Callable[[], T], what: str) -> T:
    try:
        return await asyncio.get_running_loop().run_in_executor(None, fn)
    except OSError as exc:
        raise HostIOError.from_oserror(exc, f"{what} failed") from None


def _strip_prefix(filename: str) -> str:
    for prefix in ("file:", "host_device:", "host_cdrom:"):
        if filename.startswith(prefix):
            return filename[len(prefix):]
    return filename


def _pread_full(fd: int, offset: int, length: int) -> bytes:
    """Read ``length`` bytes; past the end of the file they read as zeroes (the node's
    size is the file's rounded up to whole sectors, as QEMU's file-posix reads)."""
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got) if data else b""
        if not more:
            parts.append(bytes(length - got))
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _pwrite_full(fd: int, offset: int, data: bytes | bytearray | memoryview) -> None:
    mv = memoryview(data)
    done = 0
    while done < len(mv):
        done += os.pwrite(fd, mv[done:], offset + done)


def _copy_file_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int,
                     length: int) -> None:
    """Copy inside the kernel (copy_file_range), looping on short copies."""
    if not hasattr(os, "copy_file_range"):
        raise NotSupported("copy_file_range is not available on this host")
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src_fd, dst_fd, length - done, src_offset + done,
                                   dst_offset + done)
        except OSError as exc:
            if exc.errno in COPY_UNSUPPORTED:
                raise NotSupported(f"copy_file_range: {os.strerror(exc.errno)}") from None
            raise
        if n == 0:
            raise NotSupported("copy_file_range: the source file ends inside the range")
        done += n


def _direct_read(fd: int, offset: int, length: int) -> bytes:
    buf = mmap.mmap(-1, max(length, 1))
    try:
        got = os.preadv(fd, [buf], offset)
        return bytes(buf[:got])
    finally:
        buf.close()


def _direct_write(fd: int, offset: int, data: bytes | bytearray | memoryview) -> None:
    buf = mmap.mmap(-1, max(len(data), 1))
    try:
        buf[:len(data)] = data
        done = 0
        while done < len(data):
            done += os.pwritev(fd, [memoryview(buf)[done:len(data)]], offset + done)
    finally:
        buf.close()


def _probe_alignment(fd: int) -> int:
    for align in (512, 1024, 2048, 4096):
        buf = mmap.mmap(-1, align)
        try:
            os.preadv(fd, [buf], 0)
            return align
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                return 4096
        finally:
            buf.close()
    return 4096


def _grow(fd: int, cur: int, size: int, prealloc: Prealloc) -> None:
    if prealloc is Prealloc.FULL:
        os.ftruncate(fd, cur)
        _zero_fill(fd, cur, size - cur)
    elif prealloc is Prealloc.FALLOC:
        os.posix_fallocate(fd, cur, size - cur)
    else:
        os.ftruncate(fd, size)


def _allocate_first_block(fd: int, size: int) -> None:
    """Like QEMU: write the first block so O_DIRECT alignment can be probed later."""
    n = min(size, 4096)
    try:
        os.pwrite(fd, bytes(n), 0)
    except OSError:
        pass
