"""The qcow2 format driver: the table of operations of one open image.

The state of the image is :class:`~.state.Qcow2State` (the driver is built on it);
each concern is a component that gets the state and the components it needs as
explicit references: the write path (:mod:`.alloc`), zeroes and discard
(:mod:`.zeroes`), resizing (:mod:`.resize`), copy offloading (:mod:`.copyrange`) and
dirty bitmaps (:mod:`.bitmap`); snapshots, amend and check are operations on the
whole image (:mod:`.snapshot`, :mod:`.amend`, :mod:`.check`).  Open and close, the
read path, block status and information are here.  All metadata is touched under
``self.lock`` (QEMU's s->lock); guest data moves without it, while the guest clusters
involved are held in ``self.ranges`` (shared for reads, exclusive for anything that
may change their mapping).
"""
from __future__ import annotations

import asyncio
import errno
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ...core.driver import (BlockDriver, BlockStatus, Cap, CheckMode, CheckResult, ChildRole,
                            CreateOption, DriverInfo, Limits, Prealloc, ReqFlag,
                            SnapshotInfo, Status, StatusShape)
from ...core.errors import BlockError, InvalidArgument, NotSupported
from ...core.io import metadata_io, node_try_read
from ...core.options import OpenFlags, parse_bool
from . import layout as L
from . import snapshot
from .alloc import WritePath
from .amend import AMEND_OPTIONS, amend
from .bitmap import Bitmap, BitmapOps, load as load_bitmaps
from .cache import MetadataCache, cache_sizes
from .copyrange import CopyRangePath
from .mapping import SC, Geometry, Mapping, Run
from .overlap import MetadataClusters
from .ranges import RangeLock
from .refcount import Discard, Refcounts, count_used
from .resize import ResizePath
from .state import Qcow2State
from .zeroes import ZeroPath

if TYPE_CHECKING:
    import numpy as np

    from ...core.node import BlockNode

#: how many L2 tables one block-status answer may look at
MAX_MERGED_LOOKUPS = 256
_DATA_AT = Status.DATA | Status.OFFSET_VALID
_DATA_AT_RECURSE = _DATA_AT | Status.RECURSE
DISCARD_OPTIONS = {"pass-discard-request": Discard.REQUEST,
                   "pass-discard-snapshot": Discard.SNAPSHOT,
                   "pass-discard-other": Discard.OTHER}


class Qcow2Driver(Qcow2State, BlockDriver):
    format_name = "qcow2"
    is_format = True
    supports_backing = True
    caps = (Cap.WRITE_ZEROES | Cap.DISCARD | Cap.BLOCK_STATUS | Cap.COMPRESSED_WRITE
            | Cap.ALLOCATES_IN_ORDER | Cap.PERSISTENT_BITMAPS)
    #: block status answers go on into the following L2 tables (QEMU's stop at the end
    #: of one) unless ``set_status_shape`` asked for QEMU's cuts (False), or for them
    #: except in runs that read as zeroes without a backing file ("holes")
    merge_status_runs: bool | str = True
    open_options = ("data-file", "l2-cache-size", "l2-cache-entry-size",
                    "refcount-cache-size", "cache-size", "cache-clean-interval",
                    "lazy-refcounts", "pass-discard-request", "pass-discard-snapshot",
                    "pass-discard-other", "discard-no-unref", "overlap-check",
                    "encrypt.key-secret", "encrypt.format")
    #: in the order ``qemu-img create`` prints them in its ``Formatting`` line
    create_options = (
        CreateOption("encryption", "bool", "Encrypt the image with format 'aes'. "
                     "(Deprecated in favor of encrypt.format=aes)"),
        CreateOption("cluster_size", "size", "qcow2 cluster size", 65536),
        CreateOption("extended_l2", "bool", "Extended L2 tables", False),
        CreateOption("preallocation", "string", "Preallocation mode (allowed values: off, "
                     "metadata, falloc, full)"),
        CreateOption("compression_type", "string", "Compression method used for image "
                     "cluster compression", "zlib"),
        CreateOption("size", "size", "Virtual disk size"),
        CreateOption("compat", "string", "Compatibility level (v2 [0.10] or v3 [1.1])"),
        CreateOption("backing_file", "string", "File name of a base image"),
        CreateOption("backing_fmt", "string", "Image format of the base image"),
        CreateOption("data_file", "string", "File name of an external data file"),
        CreateOption("data_file_raw", "bool", "The external data file must stay valid "
                     "as a raw image"),
        CreateOption("encrypt.format", "string", "Encrypt the image, format choices: "
                     "'aes', 'luks'"),
        CreateOption("lazy_refcounts", "bool", "Postpone refcount updates", False),
        CreateOption("refcount_bits", "number", "Width of a reference count entry in bits",
                     16),
        CreateOption("nocow", "bool", "Turn off copy-on-write (valid only on btrfs)"),
        CreateOption("extent_size_hint", "size", "Extent size hint for the image file, 0 to "
                     "disable"),
    )
    create_defaults_shown = ("cluster_size", "extended_l2", "compression_type",
                             "lazy_refcounts", "refcount_bits")

    amend_options = AMEND_OPTIONS

    def __init__(self, node: BlockNode) -> None:
        super().__init__(node)
        self.writes = WritePath(self)
        self.zeroes = ZeroPath(self)
        self.resizer = ResizePath(self, self.writes, self.zeroes)
        self.copier = CopyRangePath(self, self.writes)
        self.bitmap_ops = BitmapOps(self)
        self.reopen_lock = asyncio.Lock()

    # ---- probe and create -----------------------------------------------------------
    @classmethod
    def probe(cls, header: bytes, filename: str | None) -> int:
        version = L.probe_version(header)
        return 100 if version is not None and version >= 2 else 0

    @classmethod
    async def measure(cls, options: dict[str, Any], source: Any = None) -> dict[str, int]:
        """``qemu-img measure`` (see :mod:`.measure`)."""
        from .measure import measure
        return await measure(options, source)

    @classmethod
    async def create(cls, filename: str, options: dict[str, Any], *,
                     open_file: Any = None) -> None:
        from .create import create_qcow2
        await create_qcow2(cls, filename, options, open_file)

    # ---- open -----------------------------------------------------------------------------
    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        with metadata_io():
            await self._open(options, flags)

    async def _open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        file = self.node.file
        if file is None:
            raise InvalidArgument("A 'qcow2' node needs a 'file' child")
        self.file = file
        self.flags = flags
        writable = not flags.read_only
        head = await file.read(0, min(L.V3_HEADER_LENGTH, file.total_bytes))
        cb = L.peek_cluster_bits(head)
        if cb is not None and L.MIN_CLUSTER_BITS <= cb <= L.MAX_CLUSTER_BITS:
            head = await file.read(0, 1 << cb)
        h = L.parse_header(bytes(head), writable=writable and not flags.check)
        L.validate_bitmaps_ext(h)
        self.header = h
        self.geo = geo = Geometry(h)
        self.cluster_size = cs = h.cluster_size
        if h.crypt_method and not flags.no_io:
            if "encrypt.key-secret" not in options:         # QEMU's words first
                raise InvalidArgument("Parameter 'encrypt.key-secret' is required for cipher")
            raise NotSupported("qcow2: encrypted images are not supported")
        self.lock = asyncio.Lock()
        self.ranges = RangeLock()
        # caches
        l2_n, rc_n = cache_sizes(options, cs, h.size, h.l2_entry_size)
        self.l2_cache = MetadataCache("L2", file, cs, l2_n,
                                      "Q", self.overlap_check)
        self.rb_cache = MetadataCache("refcount", file, cs, rc_n,
                                      L.refcount_typecode(h.refcount_order),
                                      self.overlap_check)
        # tables
        l1 = L.empty_table(h.l1_size * 8)
        if h.l1_size:
            raw = await file.read(h.l1_table_offset, h.l1_size * 8)
            l1 = L.parse_table(raw.ljust(h.l1_size * 8, b"\0"))
        self.mapping = Mapping(geo, l1, self.l2_cache, self.corrupt)
        self.metadata_clusters = MetadataClusters()
        rt_bytes = h.refcount_table_clusters * cs
        raw = await file.read(h.refcount_table_offset, rt_bytes)
        table = Refcounts.load_table(bytes(raw).ljust(rt_bytes, b"\0"), rt_bytes // 8)
        self.refcounts = Refcounts(file, h.cluster_bits, h.refcount_order,
                                   h.refcount_table_offset, table, self.rb_cache,
                                   self.corrupt)
        self.refcounts.other_caches.append(self.l2_cache)
        self.refcounts.write_header_reftable = self.write_header_reftable
        self._discard_options(options, flags)
        self.lazy_refcounts = h.lazy_refcounts
        if "lazy-refcounts" in options:
            self.lazy_refcounts = parse_bool(options["lazy-refcounts"], "lazy-refcounts")
            if self.lazy_refcounts and h.version < 3:
                raise InvalidArgument("Lazy refcounts require a qcow2 image with at least "
                                      "qemu 1.1 compatibility level")
        self.metadata_prealloc = None
        self.bitmap_info = None
        await snapshot.load(self)
        await load_bitmaps(self)
        self.data_node = file
        await self._open_data_file(options, flags)
        if writable:
            await self._open_writable()

    def _discard_options(self, options: dict[str, Any], flags: OpenFlags) -> None:
        passthrough = self.refcounts.discard_passthrough
        passthrough[Discard.REQUEST] = flags.discard_unmap
        for key, kind in DISCARD_OPTIONS.items():
            if key in options:
                passthrough[kind] = parse_bool(options[key], key)

    async def _open_data_file(self, options: dict[str, Any], flags: OpenFlags) -> None:
        h = self.header
        existing = self.node.child_by_role(ChildRole.DATA)
        if not h.has_data_file:
            if existing is not None or options.get("data-file"):
                raise InvalidArgument("'data-file' can only be set for images with an "
                                      "external data file")
            return
        if existing is not None:
            self.data_node = existing
            return
        ref = options.get("data-file")
        if isinstance(ref, str) and ref in self.node.graph.nodes:     # a node name
            self.data_node = self.node.graph.find(ref).ref()
            self.node.attach_child("data-file", ChildRole.DATA, self.data_node)
            return
        if flags.no_io:
            self.data_node = None        # metadata only: never open it
            return
        name = options.get("data-file") or h.data_file
        if not name:
            raise InvalidArgument("'data-file' is required for this image")
        if not options.get("data-file") and not flags.allow_external_files:
            raise BlockError(f"Could not open data file: opening '{name}' named by the "
                             f"image is not allowed", errno.EPERM)
        if str(name).startswith("json:"):
            raise InvalidArgument("Could not open data file: json: names are not allowed "
                                  "in images")
        from ...core.open import open_node
        path = str(name)             # QEMU 7.2: relative to the working directory
        dflags = flags.with_(copy_on_read=False, detect_zeroes="off", discard_unmap=True)
        node = await open_node(self.node.graph, path, {"driver": "file"}, flags=dflags,
                               role=ChildRole.DATA)
        try:
            self.node.attach_child("data-file", ChildRole.DATA, node)
        except BaseException:
            await node.close()
            raise
        self.data_node = node

    async def _open_writable(self) -> None:
        h = self.header
        update = False
        if h.incompatible_features & L.INCOMPAT_DIRTY and not self.flags.check:
            from .repair import rebuild_refcounts
            await rebuild_refcounts(self)
            h.incompatible_features &= ~L.INCOMPAT_DIRTY
            update = True
        if h.autoclear_features & ~L.AUTOCLEAR_MASK:
            h.autoclear_features &= L.AUTOCLEAR_MASK
            update = True
        if h.bitmaps is not None and not h.autoclear_features & L.AUTOCLEAR_BITMAPS:
            h.bitmaps = None            # disowned by a program without bitmap support
            update = True
        await self.bitmap_ops.open_writable()   # loaded bitmaps become in-use on disk
        if self.lazy_refcounts != h.lazy_refcounts:
            h.compatible_features ^= L.COMPAT_LAZY_REFCOUNTS
            update = True
        if update:
            await self.update_header()

    # ---- close and flush ------------------------------------------------------------------
    async def close(self) -> None:
        if not hasattr(self, "header") or self.node.read_only:     # open failed early
            return
        with metadata_io():
            await self.bitmap_ops.store_bitmaps()
            await self.flush_caches()
            if self.header.incompatible_features & L.INCOMPAT_DIRTY:
                self.header.incompatible_features &= ~L.INCOMPAT_DIRTY
                await self.update_header()
                await self.file.flush()

    async def release(self) -> None:
        """After a failed open: nothing is written (what the open repaired is on disk)."""

    async def flush_to_os(self) -> None:
        if not self.node.read_only:
            await self.flush_caches()

    # ---- geometry ---------------------------------------------------------------------------
    def limits(self) -> Limits:
        cs = self.cluster_size
        return Limits(request_alignment=1, max_transfer=0,
                      pwrite_zeroes_alignment=self.geo.subcluster_size,
                      pdiscard_alignment=cs, opt_transfer=cs)

    async def get_length(self) -> int:
        return self.header.size

    def has_zero_init(self) -> bool:
        """QEMU's rule: an image without any L2 table reads as zeroes; a preallocated
        one only if its data file does."""
        preallocated = len(self.mapping.l1) > 0 and self.mapping.l1[0] != 0
        if not preallocated:
            return True
        if self.header.crypt_method or self.data_node is None:
            return False
        return self.data_node.driver.has_zero_init()

    def get_info(self) -> DriverInfo:
        h = self.header
        l1_vm = L.size_to_l1(h.size, h.cluster_bits, h.l2_entries)
        return DriverInfo(cluster_size=self.cluster_size,
                          vm_state_offset=l1_vm << (h.cluster_bits + self.geo.l2_bits),
                          is_dirty=bool(h.incompatible_features & L.INCOMPAT_DIRTY),
                          encrypted=bool(h.crypt_method),
                          is_corrupt=bool(h.incompatible_features & L.INCOMPAT_CORRUPT))

    def get_specific_info(self) -> dict[str, Any] | None:
        h = self.header
        data: dict[str, Any] = {"compat": "0.10" if h.version == 2 else "1.1",
                                "compression-type": L.COMPRESSION_NAMES[h.compression_type],
                                "refcount-bits": h.refcount_bits}
        if h.version >= 3:
            data["lazy-refcounts"] = h.lazy_refcounts
            data["corrupt"] = bool(h.incompatible_features & L.INCOMPAT_CORRUPT)
            data["extended-l2"] = h.extended_l2
            if self.bitmap_info:
                data["bitmaps"] = self.bitmap_info
        if h.data_file:
            data["data-file"] = h.data_file
        if h.has_data_file:
            data["data-file-raw"] = h.data_file_raw
        return {"type": "qcow2", "data": data}

    async def load_bitmap_info(self) -> None:
        """Read the bitmap directory for ``qemu-img info`` (bounded by the header)."""
        h = self.header
        ext = h.bitmaps
        if ext is None or not h.autoclear_features & L.AUTOCLEAR_BITMAPS:
            return
        with metadata_io():
            raw = await self.file.read(ext.directory_offset, ext.directory_size)
        self.bitmap_info = L.parse_bitmap_directory(bytes(raw), ext.nb_bitmaps)

    def backing_file_name(self) -> tuple[str | None, str | None]:
        return self.header.backing_file, self.header.backing_format

    def data_file_name(self) -> str | None:
        return self.header.data_file

    # ---- read -------------------------------------------------------------------------------
    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        cs = self.cluster_size
        start, end = offset - offset % cs, -(-(offset + length) // cs) * cs
        async with self.ranges.shared(start, end):
            return await self.read_unlocked(offset, length)

    def try_read(self, offset: int, length: int) -> bytes | bytearray | None:
        """The synchronous fast path: one normal cluster mapped by a cached table, while
        no metadata update is under way and no exclusive hold covers the cluster."""
        data = self.data_node
        if data is None or self.lock.locked():
            return None
        if self.ranges.holds:
            cs = self.cluster_size
            start = offset - offset % cs
            end = start + cs
            if any(h.exclusive and h.start < end and start < h.end for h in self.ranges.holds):
                return None
        host = self.mapping.cached_host(offset, length)
        if host is None:
            return None
        return node_try_read(data, host, length)

    # ---- block status -----------------------------------------------------------------------
    def set_status_shape(self, shape: StatusShape) -> None:
        merge: dict[StatusShape, bool | str] = {StatusShape.MERGED: True,
                                                StatusShape.HOLES: "holes",
                                                StatusShape.QEMU: False}
        self.merge_status_runs = merge[shape]

    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        async with self.lock:
            if self.metadata_prealloc is None:
                self.metadata_prealloc = await self._detect_metadata_prealloc()
            run = await self.mapping.lookup(offset, length)
            run = await self._extend_run(run, offset, length)
        kind = run.kind
        if kind is SC.NORMAL:               # the common answers without Flag arithmetic
            flags = _DATA_AT_RECURSE if self.metadata_prealloc else _DATA_AT
            return BlockStatus(flags, run.length, run.host, self.data_node)
        if kind is SC.UNALLOCATED_PLAIN:
            return BlockStatus(Status.NONE, run.length, None, None)
        flags = Status.NONE
        host = file = None
        if run.kind.has_host:
            flags |= Status.OFFSET_VALID
            host, file = run.host, self.data_node
        if run.kind in (SC.ZERO_PLAIN, SC.ZERO_ALLOC):
            flags |= Status.ZERO
        elif run.kind not in (SC.UNALLOCATED_PLAIN, SC.UNALLOCATED_ALLOC):
            flags |= Status.DATA
        if self.metadata_prealloc and flags & Status.DATA and flags & Status.OFFSET_VALID:
            flags |= Status.RECURSE
        if run.kind is SC.COMPRESSED:
            flags |= Status.COMPRESSED
        return BlockStatus(flags, run.length, host, file)

    async def _extend_run(self, run: Run, offset: int, length: int) -> Run:
        """Merge the runs of the following L2 tables while they continue this one (same
        kind, contiguous host offsets), so block status answers long runs at once."""
        kind, mode = run.kind, self.merge_status_runs
        if not mode or (kind is not SC.NORMAL and kind is not SC.UNALLOCATED_PLAIN
                        and kind is not SC.ZERO_PLAIN):
            return run
        if mode == "holes" and (kind is SC.NORMAL or self.node.backing is not None):
            return run
        total = run.length
        for _ in range(MAX_MERGED_LOOKUPS):
            if total >= length:
                break
            nxt = await self.mapping.lookup(offset + total, length - total)
            if nxt.kind is not kind or (kind is SC.NORMAL
                                        and nxt.host != (run.host or 0) + total):
                break
            total += nxt.length
        if total != run.length:
            run = replace(run, length=total)
        return run

    async def _detect_metadata_prealloc(self) -> bool:
        """QEMU's qcow2_detect_metadata_preallocation: far more clusters referenced
        than the file really holds."""
        file_length = self.file.total_bytes
        real = await self.file.allocated_file_size()
        if real < 0:
            return False
        real_clusters = real // self.cluster_size
        threshold = max(real_clusters * 10 // 9, real_clusters + 2)
        end = -(-file_length // self.cluster_size)
        count, i = 0, 0
        while i < end and count < threshold:
            counts = await self.refcounts.get_run(i, end - i)
            count += count_used(counts)
            i += len(counts)
        return count >= threshold

    # ---- check ------------------------------------------------------------------------------
    async def check(self, mode: CheckMode) -> CheckResult:
        from .check import check        # numpy: imported when an image is checked
        with metadata_io():
            return await check(self, mode)


    # ---- writes (the write path, zeroes and discard, copy offloading) ----------------------
    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        if self.reopened_rw:
            await self.finish_reopen_rw()
        await self.writes.write(offset, data, flags)

    def compress_ahead(self, offset: int, data: memoryview) -> None:
        self.writes.compress_ahead(offset, data)

    async def end_compressed(self) -> None:
        await self.writes.end_compressed()

    async def write_zeroes(self, offset: int, length: int, flags: ReqFlag) -> None:
        if self.reopened_rw:
            await self.finish_reopen_rw()
        await self.zeroes.write_zeroes(offset, length, flags)

    async def discard(self, offset: int, length: int) -> None:
        if self.reopened_rw:
            await self.finish_reopen_rw()
        await self.zeroes.discard(offset, length)

    async def copy_range_from(self, offset: int, dst: BlockNode, dst_offset: int,
                              length: int, flags: ReqFlag) -> None:
        await self.copier.copy_range_from(offset, dst, dst_offset, length, flags)

    async def copy_range_to(self, src: BlockNode, src_offset: int, offset: int,
                            length: int, flags: ReqFlag) -> None:
        if self.reopened_rw:
            await self.finish_reopen_rw()
        await self.copier.copy_range_to(src, src_offset, offset, length, flags)

    # ---- resize, backing file, emptying -------------------------------------------------
    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        """Resizing keeps the bitmaps (resized) unless one cannot be used."""
        self.bitmap_ops.check_resizable()
        if self.reopened_rw:
            await self.finish_reopen_rw()
        await self.resizer.truncate(size, exact, prealloc)
        self.bitmap_ops.resized(size)

    async def change_backing_file(self, backing_file: str | None,
                                  backing_fmt: str | None) -> None:
        await self.resizer.change_backing_file(backing_file, backing_fmt)

    async def make_empty(self) -> None:
        await self.resizer.make_empty()

    # ---- reopen -----------------------------------------------------------------------------
    async def reopen_prepare(self, options: dict[str, Any], read_only: bool) -> Any:
        if read_only and not self.node.read_only:
            with metadata_io():                 # become clean while the file is writable
                await self.flush_caches()
                if self.header.incompatible_features & L.INCOMPAT_DIRTY:
                    await self.set_incompatible(self.header.incompatible_features
                                                & ~L.INCOMPAT_DIRTY)
        if not read_only and self.node.read_only \
                and self.header.incompatible_features & L.INCOMPAT_CORRUPT:
            raise BlockError("qcow2: Image is corrupt; cannot be opened read/write",
                             errno.EACCES)
        return not read_only and self.node.read_only

    async def reopen_commit(self, state: Any) -> None:
        # the file child becomes writable only after this: finish on the first change
        self.reopened_rw = bool(state)

    async def finish_reopen_rw(self) -> None:
        """What a read-write open does (repair a dirty image, clear unknown autoclear
        bits), done when a node reopened read-write first changes."""
        async with self.reopen_lock:
            if self.reopened_rw:
                with metadata_io():
                    await self._open_writable()
                self.reopened_rw = False

    # ---- internal snapshots -------------------------------------------------------------
    async def snapshot_list(self) -> list[SnapshotInfo]:
        return [sn.info() for sn in self.snapshots]

    async def snapshot_create(self, info: SnapshotInfo) -> None:
        with metadata_io():
            await snapshot.create(self, info)

    async def snapshot_goto(self, name_or_id: str) -> None:
        with metadata_io():
            await snapshot.goto(self, name_or_id)

    async def snapshot_delete(self, snapshot_id: str | None,
                              name: str | None) -> SnapshotInfo:
        with metadata_io():
            return await snapshot.delete(self, snapshot_id, name)

    async def snapshot_load_tmp(self, snapshot_id: str | None, name: str | None) -> None:
        with metadata_io():
            await snapshot.load_tmp(self, snapshot_id, name)

    # ---- dirty bitmaps (see :class:`~.bitmap.BitmapOps`) -----------------------------------
    def bitmap_find(self, name: str) -> Bitmap:
        return self.bitmap_ops.bitmap_find(name)

    def bitmap_list(self) -> list[dict[str, Any]]:
        return self.bitmap_ops.bitmap_list()

    async def bitmap_add(self, name: str, granularity: int | None = None,
                         persistent: bool = True, disabled: bool = False) -> None:
        await self.bitmap_ops.bitmap_add(name, granularity, persistent, disabled)

    async def bitmap_remove(self, name: str) -> None:
        await self.bitmap_ops.bitmap_remove(name)

    async def bitmap_clear(self, name: str) -> None:
        await self.bitmap_ops.bitmap_clear(name)

    async def bitmap_set_enabled(self, name: str, enabled: bool) -> None:
        await self.bitmap_ops.bitmap_set_enabled(name, enabled)

    async def bitmap_merge(self, target: str, source: str | Bitmap) -> None:
        await self.bitmap_ops.bitmap_merge(target, source)

    def bitmap_get(self, name: str) -> np.ndarray:
        return self.bitmap_ops.bitmap_get(name)

    def bitmap_set(self, name: str, offset: int, length: int, value: bool = True) -> None:
        self.bitmap_ops.bitmap_set(name, offset, length, value)

    async def store_bitmaps(self) -> None:
        """Write the persistent bitmaps to the image (done at close)."""
        await self.bitmap_ops.store_bitmaps()

    # ---- amend ------------------------------------------------------------------------------
    async def amend(self, options: dict[str, Any], force: bool) -> None:
        with metadata_io():
            await amend(self, options, force)
