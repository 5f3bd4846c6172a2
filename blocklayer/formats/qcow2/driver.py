"""The qcow2 format driver: open/close, the read path, block status and information.

The write path (allocation, zeroes, discard, compression, resize) is in :mod:`.alloc`,
image creation in :mod:`.create`, refcount rebuilding in :mod:`.repair`.  All metadata
is touched under ``self.lock`` (QEMU's s->lock); guest data moves without it, while the
guest clusters involved are held in ``self.ranges`` (shared for reads, exclusive for
anything that may change their mapping).
"""
from __future__ import annotations

import asyncio
import errno
import struct
from dataclasses import replace
from typing import Any

from ...core import io as _io
from ...core.driver import (BlockDriver, BlockStatus, CheckMode, CheckResult, ChildRole,
                       CreateOption, DriverInfo, Limits, ReqFlag, Status)
from ...core.errors import BlockError, ImageCorrupt, InvalidArgument, NotSupported
from ...core.options import OpenFlags, parse_bool
from . import layout as L
from .alloc import WritePath
from .cache import MetadataCache, cache_sizes
from .copyrange import CopyRangePath
from .compress import decompress
from .mapping import L1E_OFFSET_MASK, SC, Geometry, Mapping
from .overlap import MetadataClusters
from .ranges import RangeLock

#: how many L2 tables one block-status answer may look at
MAX_MERGED_LOOKUPS = 256
from .refcount import Discard, Refcounts, count_used
from .bitmap import BitmapMethods, load as load_bitmaps, open_writable as bitmaps_writable
from .amend import AmendMethods
from .snapshot import SnapshotMethods, load as load_snapshots

_DATA_AT = Status.DATA | Status.OFFSET_VALID
_DATA_AT_RECURSE = _DATA_AT | Status.RECURSE
DISCARD_OPTIONS = {"pass-discard-request": Discard.REQUEST,
                   "pass-discard-snapshot": Discard.SNAPSHOT,
                   "pass-discard-other": Discard.OTHER}


nested = _io.metadata_io       # metadata I/O of this node, not a request from outside


class Qcow2Driver(SnapshotMethods, BitmapMethods, AmendMethods, CopyRangePath, WritePath,
                  BlockDriver):
    format_name = "qcow2"
    is_format = True
    supports_backing = True
    can_write_zeroes = True
    allocates_in_order = True
    can_discard = True
    can_block_status = True
    can_compressed_write = True
    can_truncate = True
    #: block status answers go on into the following L2 tables (QEMU's stop at the end
    #: of one); a user that must cut its work where QEMU's answers end turns this off
    #: (False), or keeps it for runs that read as zeroes without a backing file to
    #: consult ("holes": where such a run is cut decides no request)
    merge_status_runs: bool | str = True
    can_check = True
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

    header: L.Header
    corrupt_reported = False

    @property
    def encrypted(self) -> bool:
        """``info`` says ``encrypted: yes`` (the image opens for metadata only)."""
        return bool(self.header.crypt_method)

    # ---- probe and create -----------------------------------------------------------
    @classmethod
    def probe(cls, header: bytes, filename: str | None) -> int:
        if len(header) >= 8 and struct.unpack(">II", header[:8])[0] == L.MAGIC \
                and struct.unpack(">II", header[:8])[1] >= 2:
            return 100
        return 0

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
        with nested():
            await self._open(options, flags)

    async def _open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        file = self.node.file
        if file is None:
            raise InvalidArgument("A 'qcow2' node needs a 'file' child")
        self.file = file
        self.flags = flags
        writable = not flags.read_only
        head = await file.read(0, min(L.V3_HEADER_LENGTH, file.total_bytes))
        if len(head) >= 24 and struct.unpack_from(">I", head)[0] == L.MAGIC:
            cb = struct.unpack_from(">I", head, 20)[0]
            if L.MIN_CLUSTER_BITS <= cb <= L.MAX_CLUSTER_BITS:
                head = await file.read(0, 1 << cb)
        h = L.parse_header(head, writable=writable and not flags.check)
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
                                      "Q", self._overlap_check)
        self.rb_cache = MetadataCache("refcount", file, cs, rc_n,
                                      L.refcount_typecode(h.refcount_order),
                                      self._overlap_check)
        # tables
        l1 = L.empty_table(h.l1_size * 8)
        if h.l1_size:
            raw = await file.read(h.l1_table_offset, h.l1_size * 8)
            l1 = L.parse_table(raw.ljust(h.l1_size * 8, b"\0"))
        self.mapping = Mapping(geo, l1, self.l2_cache, self._corrupt)
        self.metadata_clusters = MetadataClusters()
        rt_bytes = h.refcount_table_clusters * cs
        raw = await file.read(h.refcount_table_offset, rt_bytes)
        table = Refcounts.load_table(raw.ljust(rt_bytes, b"\0"), rt_bytes // 8)
        self.refcounts = Refcounts(file, h.cluster_bits, h.refcount_order,
                                   h.refcount_table_offset, table, self.rb_cache,
                                   self._corrupt)
        self.refcounts.other_caches.append(self.l2_cache)
        self.refcounts.write_header_reftable = self._write_header_reftable
        self._discard_options(options, flags)
        self.lazy_refcounts = h.lazy_refcounts
        if "lazy-refcounts" in options:
            self.lazy_refcounts = parse_bool(options["lazy-refcounts"], "lazy-refcounts")
            if self.lazy_refcounts and h.version < 3:
                raise InvalidArgument("Lazy refcounts require a qcow2 image with at least "
                                      "qemu 1.1 compatibility level")
        self.metadata_prealloc: bool | None = None
        self.bitmap_info: list[dict[str, object]] | None = None
        await load_snapshots(self)
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
        await bitmaps_writable(self)    # loaded bitmaps become in-use on disk
        if self.lazy_refcounts != h.lazy_refcounts:
            h.compatible_features ^= L.COMPAT_LAZY_REFCOUNTS
            update = True
        if update:
            await self.update_header()

    # ---- close and flush ------------------------------------------------------------------
    async def close(self) -> None:
        if not hasattr(self, "header") or self.node.read_only:
            return
        with nested():
            await self.store_bitmaps()
            await self.flush_caches()
            if self.header.incompatible_features & L.INCOMPAT_DIRTY:
                self.header.incompatible_features &= ~L.INCOMPAT_DIRTY
                await self.update_header()
                await self.file.flush()

    async def release(self) -> None:
        """After a failed open: nothing is written (what the open repaired is on disk)."""

    async def flush_caches(self) -> None:
        async with self.lock:
            await self.l2_cache.write_back()
            await self.rb_cache.write_back()
            await self.refcounts.process_discards()

    async def flush_to_os(self) -> None:
        if not self.node.read_only:
            await self.flush_caches()

    # ---- header updates -----------------------------------------------------------------
    async def update_header(self) -> None:
        """Rewrite cluster 0 from ``self.header`` (QEMU's qcow2_update_header)."""
        buf = self.header.build()
        await self.file.write(0, buf + bytes(self.cluster_size - len(buf)))

    async def _write_header_reftable(self, offset: int, clusters: int) -> None:
        await self.file.write(48, struct.pack(">QI", offset, clusters))
        await self.file.flush()
        self.header.refcount_table_offset = offset
        self.header.refcount_table_clusters = clusters

    async def write_header_l1(self, offset: int, size: int) -> None:
        await self.file.write(36, struct.pack(">IQ", size, offset))
        await self.file.flush()
        self.header.l1_table_offset, self.header.l1_size = offset, size

    async def set_incompatible(self, value: int) -> None:
        await self.file.write(72, struct.pack(">Q", value))
        await self.file.flush()
        self.header.incompatible_features = value

    async def _corrupt(self, message: str, offset: int, size: int) -> None:
        """QEMU's qcow2_signal_corruption: mark a writable image corrupt, fail with EIO."""
        fatal = not self.node.read_only
        if fatal and not self.header.incompatible_features & L.INCOMPAT_CORRUPT:
            try:
                await self.set_incompatible(self.header.incompatible_features
                                            | L.INCOMPAT_CORRUPT)
            except BlockError:
                pass
        if not self.corrupt_reported:
            self.corrupt_reported = True
            self.node.graph.emit("BLOCK_IMAGE_CORRUPTED", {
                "device": "", "node-name": self.node.name, "msg": message,
                "offset": offset, "size": size, "fatal": fatal})
        raise ImageCorrupt(f"qcow2: Image is corrupt: {message}", errno.EIO)

    async def _overlap_check(self, offset: int, length: int) -> None:
        """Refuse metadata writes over the header, the L1 or the refcount table."""
        h = self.header
        for start, n in ((0, self.cluster_size),
                         (h.l1_table_offset, h.l1_size * 8),
                         (h.refcount_table_offset,
                          h.refcount_table_clusters * self.cluster_size)):
            if n and offset < start + n and start < offset + length:
                await self._corrupt(f"Preventing invalid write on metadata (overlaps with "
                                    f"active table at {start:#x})", offset, length)

    async def data_overlap_check(self, offset: int, length: int) -> None:
        """Refuse guest data writes over any active metadata (QEMU's overlap check,
        ``cached`` template): a hostile L2 entry must not aim guest data at tables."""
        if self.header.has_data_file or length <= 0:
            return
        await self._overlap_check(offset, length)
        start = offset - offset % self.cluster_size
        l1, reftable = self.mapping.l1, self.refcounts.table
        if not self.metadata_clusters.overlap(l1, reftable, start, offset + length):
            return
        for name, offsets in (("L2", [e & L1E_OFFSET_MASK for e in l1]),
                              ("refcount block", reftable)):
            # the first in table order, as QEMU names it
            where = next((t for t in offsets if start <= t < offset + length), None)
            if where is not None:
                await self._corrupt(f"Preventing invalid write on metadata (overlaps with "
                                    f"active {name} table at {where:#x})", offset, length)

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
                          is_dirty=bool(h.incompatible_features & L.INCOMPAT_DIRTY))

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
        with nested():
            raw = await self.file.read(ext.directory_offset, ext.directory_size)
        self.bitmap_info = L.parse_bitmap_directory(raw, ext.nb_bitmaps)

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

    async def read_unlocked(self, offset: int, length: int) -> bytes | bytearray:
        """Read through the mapping; the caller holds the guest range."""
        if length <= 0:
            return bytearray()
        async with self.lock:
            run = await self.mapping.lookup(offset, length)
        if run.length == length and run.kind is SC.NORMAL and self.data_node is not None:
            return await self.data_node.read(run.host, length)    # one run: no copy
        out = bytearray(length)
        view = memoryview(out)
        pos, end = offset, offset + length
        while True:
            n = run.length
            dst = view[pos - offset:pos - offset + n]
            if run.kind in (SC.UNALLOCATED_PLAIN, SC.UNALLOCATED_ALLOC):
                await self._read_backing(pos, dst)
            elif run.kind is SC.NORMAL:
                if self.data_node is None:
                    raise BlockError("qcow2: the data file is not open", errno.EIO)
                dst[:] = await self.data_node.read(run.host, n)
            elif run.kind is SC.COMPRESSED:
                cluster = await self.read_compressed(run.entry)
                skip = self.geo.into_cluster(pos)
                dst[:] = cluster[skip:skip + n]
            pos += n
            if pos >= end:
                return out
            async with self.lock:
                run = await self.mapping.lookup(pos, end - pos)

    async def _read_backing(self, pos: int, dst: memoryview) -> None:
        backing = self.node.backing
        if backing is None:
            return
        n = min(len(dst), max(backing.total_bytes - pos, 0))
        if n > 0:
            dst[:n] = await backing.read(pos, n)

    async def read_compressed(self, entry: int) -> bytes:
        coffset, csize = self.geo.compressed(entry)
        data = await self.file.read(coffset, csize)
        return decompress(self.header.compression_type, data, self.cluster_size)

    # ---- block status -----------------------------------------------------------------------
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

    async def _extend_run(self, run: Any, offset: int, length: int) -> Any:
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
            if nxt.kind is not kind or (kind is SC.NORMAL and nxt.host != run.host + total):
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
        with nested():
            return await check(self, mode)

