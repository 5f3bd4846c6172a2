"""The block driver interface (QEMU's ``BlockDriver``), with its small value types.

A driver is a class.  One instance serves one node (``self.node``); the node layer in
:mod:`blocklayer.core.node` and :mod:`blocklayer.core.io` calls the driver only with requests that
are in bounds, aligned to ``limits().request_alignment`` and no larger than
``limits().max_transfer``.  A driver does only what is specific to it: what it can do is
declared once (``caps``, asked through :meth:`BlockDriver.capabilities`), every operation a
caller may use is declared here with its default (raising :class:`NotSupported`, doing
nothing, or answering conservatively), and the fallbacks live once, in the request path.
No caller looks an operation up by name.

To add a driver, copy :mod:`blocklayer.protocols.null` (protocol),
:mod:`blocklayer.filters.blkdebug` (filter, on :class:`blocklayer.core.filter.FilterDriver`)
or :mod:`blocklayer.formats.qed` (format), change the names and register it in
:mod:`blocklayer.core.registry`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import NotSupported

if TYPE_CHECKING:
    from .node import BlockNode
    from .options import OpenFlags


# ---------------------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------------------

class ReqFlag(enum.IntFlag):
    """Flags of one request (QEMU's BdrvRequestFlags)."""

    NONE = 0
    FUA = 0x1            # write: durable before completion
    MAY_UNMAP = 0x2      # write zeroes: may deallocate
    NO_FALLBACK = 0x4    # write zeroes: fail with ENOTSUP instead of writing a buffer
    COMPRESSED = 0x8     # write: store compressed
    COPY_ON_READ = 0x10  # read: copy what comes from the backing chain into this node


class Cap(enum.IntFlag):
    """What a driver can do beyond read and write (nbdkit's ``can_*`` answers).

    A driver declares its own in ``caps``; :meth:`BlockDriver.capabilities` answers for
    the open node (a filter adds its child's, and may hide some).  The node caches the
    answer at open (``BlockNode.caps``); the request path falls back where one is
    missing.
    """

    NONE = 0
    WRITE_ZEROES = 0x1        # write_zeroes() (else the request path writes zero buffers)
    DISCARD = 0x2             # discard() (else discard is a no-op)
    BLOCK_STATUS = 0x4        # block_status() (else "all data")
    FUA = 0x8                 # write(FUA) is durable (else the request path flushes)
    COMPRESSED_WRITE = 0x10   # write(COMPRESSED)
    #: a write takes its place in the image (allocates, or takes a FIFO lock under
    #: which it will) before it first waits, so writes started one after another, each
    #: before the last completes, are laid out as if each had waited (a copy may then
    #: keep several in flight); without it, callers that care about layout wait in turn
    ALLOCATES_IN_ORDER = 0x20
    PERSISTENT_BITMAPS = 0x40  # the bitmap_* operations (dirty bitmaps stored in the image)


class StatusShape(enum.Enum):
    """How block status answers may run on (:meth:`BlockDriver.set_status_shape`)."""

    MERGED = "merged"   # as long as the driver can tell at once (the default)
    HOLES = "holes"     # cut where QEMU's are, except zero runs without a backing file
    QEMU = "qemu"       # cut where QEMU's answers are (qcow2: at each L2 table)


class Status(enum.IntFlag):
    """Block status bits (QEMU's BDRV_BLOCK_*)."""

    NONE = 0
    DATA = 0x1            # reads come from the file
    ZERO = 0x2            # reads as zeroes
    OFFSET_VALID = 0x4    # ``offset`` is a host offset in ``file``
    RAW = 0x8             # pass-through: the answer is ``file``'s at ``offset``
    ALLOCATED = 0x10      # the content is determined by this layer
    EOF = 0x20            # the range reaches the end of the image
    RECURSE = 0x40        # ask ``file`` at ``offset`` whether the data reads as zeroes
    COMPRESSED = 0x80


@dataclass(slots=True)
class BlockStatus:
    """The answer of a block-status query for ``[offset, offset + length)``."""

    flags: Status
    length: int
    offset: int | None = None          # host offset in ``file`` when OFFSET_VALID
    file: "BlockNode | None" = None    # the node that holds the data at ``offset``
    depth: int = 0                     # filled in by the chain walk (0 = this node)

    @property
    def allocated(self) -> bool:
        return bool(self.flags & Status.ALLOCATED)

    @property
    def zero(self) -> bool:
        return bool(self.flags & Status.ZERO)

    @property
    def data(self) -> bool:
        return bool(self.flags & Status.DATA)


@dataclass(slots=True)
class Limits:
    """What requests the driver accepts (QEMU's BlockLimits)."""

    request_alignment: int = 1
    max_transfer: int = 0               # 0: no limit
    opt_transfer: int = 0
    pdiscard_alignment: int = 0
    max_pdiscard: int = 0
    pwrite_zeroes_alignment: int = 0
    max_pwrite_zeroes: int = 0
    min_mem_alignment: int = 1
    opt_mem_alignment: int = 1


class Prealloc(str, enum.Enum):
    OFF = "off"
    METADATA = "metadata"
    FALLOC = "falloc"
    FULL = "full"


@dataclass(slots=True)
class DriverInfo:
    """What ``qemu-img info`` / ``qemu-io info`` print besides the size (BlockDriverInfo)."""

    cluster_size: int = 0
    vm_state_offset: int = 0
    is_dirty: bool = False
    needs_compressed_writes: bool = False
    encrypted: bool = False
    is_corrupt: bool = False       # marked corrupt (qcow2's corrupt bit)


@dataclass(slots=True)
class SnapshotInfo:
    """One internal snapshot (QEMU's QEMUSnapshotInfo)."""

    id: str
    name: str
    vm_state_size: int = 0
    date_sec: int = 0
    date_nsec: int = 0
    vm_clock_nsec: int = 0
    icount: int | None = None


@dataclass
class CheckResult:
    """The result of a consistency check (QEMU's BdrvCheckResult)."""

    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    image_end_offset: int = 0
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    messages: list[str] = field(default_factory=list)   # per-item lines for stderr


class CheckMode(enum.IntFlag):
    NONE = 0
    FIX_LEAKS = 1
    FIX_ERRORS = 2
    FIX_ALL = 3


@dataclass(slots=True)
class CreateOption:
    """One ``-o`` option a driver's create accepts (QemuOptDesc)."""

    name: str
    type: str            # "size" | "number" | "bool" | "string"
    help: str = ""
    default: Any = None


class ChildRole(str, enum.Enum):
    FILE = "file"
    BACKING = "backing"
    DATA = "data-file"
    OTHER = "other"


class Perm(enum.IntFlag):
    """Permissions on a node (QEMU's BLK_PERM_*), as the image locks know them."""

    NONE = 0
    CONSISTENT_READ = 0x1
    WRITE = 0x2
    WRITE_UNCHANGED = 0x4
    RESIZE = 0x8
    ALL = 0xF

    def describe(self) -> str:
        names = {Perm.CONSISTENT_READ: "consistent read", Perm.WRITE: "write",
                 Perm.WRITE_UNCHANGED: "write unchanged", Perm.RESIZE: "resize"}
        return ", ".join(n for p, n in names.items() if self & p)


PERM_LOCK_NAMES = {Perm.CONSISTENT_READ: "consistent read", Perm.WRITE: "write",
                   Perm.WRITE_UNCHANGED: "write unchanged", Perm.RESIZE: "resize"}


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------

class BlockDriver:
    """Base class of every driver.  Override what the driver does; leave the rest.

    Class attributes describe the driver; instance methods serve one node.  Every I/O
    method is ``async`` and runs on the node's event loop.
    """

    format_name: ClassVar[str] = ""
    #: formats are probed by content; protocols are picked by a ``prefix:`` or are ``file``
    is_format: ClassVar[bool] = False
    is_protocol: ClassVar[bool] = False
    #: a filter has exactly one child that holds the data (``file`` or ``backing``)
    is_filter: ClassVar[bool] = False
    #: the child role through which guest data flows for formats/filters
    data_child_role: ClassVar[ChildRole] = ChildRole.FILE
    supports_backing: ClassVar[bool] = False
    #: the option prefix and child name of the file child (blkdebug calls it "image")
    file_child_key: ClassVar[str] = "file"
    create_options: ClassVar[tuple[CreateOption, ...]] = ()
    #: the options ``qemu-img amend`` accepts; empty: the driver cannot amend
    amend_options: ClassVar[tuple[CreateOption, ...]] = ()
    #: the options whose default ``qemu-img create`` shows in its ``Formatting`` line
    #: (QEMU prints only options that have a default string); None: every default
    create_defaults_shown: ClassVar[tuple[str, ...] | None] = None
    #: options accepted by ``open`` besides the generic ones (documentation and checking)
    open_options: ClassVar[tuple[str, ...]] = ()

    #: what the driver itself can do (see :class:`Cap`); ask :meth:`capabilities`
    caps: ClassVar[Cap] = Cap.NONE

    def __init__(self, node: "BlockNode") -> None:
        self.node = node

    def capabilities(self) -> Cap:
        """What this open node can do: by default what the class declares in ``caps``.
        Asked once the node is open (and after a reopen); the node caches the answer."""
        return self.caps

    @property
    def allocates_in_order(self) -> bool:
        """Shorthand for ``Cap.ALLOCATES_IN_ORDER in capabilities()``."""
        return bool(self.capabilities() & Cap.ALLOCATES_IN_ORDER)

    # ---- class-level -------------------------------------------------------------
    @classmethod
    def probe(cls, header: bytes, filename: str | None) -> int:
        """Score 0..100 for how sure the driver is that ``header`` is its format."""
        return 0

    @classmethod
    def parse_filename(cls, filename: str) -> tuple[dict[str, Any], str] | None:
        """A driver with a filename syntax of its own (``blkdebug:CONFIG:IMAGE``) turns
        ``filename`` (which starts with ``format_name:``) into options and the filename
        left for its file child.  Default None: the filename is passed on as it is."""
        return None

    @classmethod
    def exact_filename(cls, options: dict[str, Any]) -> str | None:
        """The plain filename QEMU would refresh a protocol node opened with ``options``
        and no filename to (``null-co://``); None: a ``json:`` name is made."""
        return None

    @classmethod
    async def create(cls, filename: str, options: dict[str, Any], *,
                     open_file: Any = None) -> None:
        """Create an image.  ``options`` has the ``-o`` options parsed (``size`` an int).

        ``open_file`` is a coroutine function that creates the protocol file and returns
        its open node (so formats need not know how files are made).
        """
        raise NotSupported(f"Driver '{cls.format_name}' does not support image creation")

    @classmethod
    async def measure(cls, options: dict[str, Any],
                      source: "BlockNode | None" = None) -> dict[str, int]:
        """``qemu-img measure``: ``{"required", "fully-allocated"}`` bytes (and
        ``"bitmaps"`` when the format stores them) for an image made with ``options``
        (``size`` an int), or holding the data of ``source``."""
        raise NotSupported(f"Block driver '{cls.format_name}' does not support size "
                           "measurement")

    # ---- lifecycle ---------------------------------------------------------------
    async def open(self, options: dict[str, Any], flags: "OpenFlags") -> None:
        """Open the node.  ``options`` are the driver's own (children already consumed
        and opened, available as ``self.node.file`` / ``.backing``)."""

    async def close(self) -> None:
        """Release everything; flush what must reach the disk."""

    async def release(self) -> None:
        """Release everything after a failed open, writing nothing (formats override
        :meth:`close` writes; drivers without them release by closing)."""
        await self.close()

    def limits(self) -> Limits:
        return Limits()

    def child_perm(self, role: ChildRole, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        """What this node needs on a child, given what its parents need on it.

        Default: format-driver semantics for storage children (metadata may change even
        when the guest does not write), pass-through for the data child of a filter.
        """
        if self.is_filter or role is ChildRole.BACKING:
            if role is ChildRole.BACKING:
                return (Perm.CONSISTENT_READ,
                        Perm.CONSISTENT_READ | Perm.WRITE | Perm.WRITE_UNCHANGED | Perm.RESIZE)
            return perm, shared
        need = Perm.CONSISTENT_READ
        if perm & (Perm.WRITE | Perm.WRITE_UNCHANGED) or not self.node.read_only:
            need |= Perm.WRITE | Perm.RESIZE
        share = Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED
        if self.node.flags.force_share:
            share |= Perm.WRITE | Perm.RESIZE
        return need, share

    def set_perm(self, perm: Perm, shared: Perm) -> None:
        """Apply the node's cumulative permissions (the file driver takes locks here)."""

    def check_perm(self, perm: Perm, shared: Perm) -> None:
        """Raise :class:`PermissionConflict` if ``perm``/``shared`` cannot be had."""

    # ---- I/O ---------------------------------------------------------------------
    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        raise NotSupported(f"Driver '{self.format_name}' cannot read")

    def try_read(self, offset: int, length: int) -> bytes | bytearray | None:
        """The synchronous fast path of :meth:`read` (no flags): the data, if it can be
        had without blocking or waiting for anything (a page-cache hit; a mapping in
        cache), else ``None`` having changed nothing (the request path then calls
        :meth:`read`).  Errors too give ``None``: :meth:`read` reports them."""
        return None

    async def write(self, offset: int, data: bytes | bytearray | memoryview,
                    flags: ReqFlag) -> None:
        raise NotSupported(f"Driver '{self.format_name}' cannot write")

    async def write_zeroes(self, offset: int, length: int, flags: ReqFlag) -> None:
        raise NotSupported("write zeroes not supported")

    async def discard(self, offset: int, length: int) -> None:
        raise NotSupported("discard not supported")

    async def copy_range_from(self, offset: int, dst: "BlockNode", dst_offset: int,
                              length: int, flags: ReqFlag) -> None:
        """Source side of a copy offload (see :func:`blocklayer.core.io.node_copy_range`):
        resolve ``[offset, offset+length)`` to where it is stored and pass it on, a
        format or filter to a child's ``copy_range``, a protocol to
        ``dst.copy_range_to(self.node, ...)``.  Raise :class:`NotSupported` for any
        part it cannot."""
        raise NotSupported(f"Driver '{self.format_name}' cannot offload copies")

    async def copy_range_to(self, src: "BlockNode", src_offset: int, offset: int,
                            length: int, flags: ReqFlag) -> None:
        """Target side of a copy offload: make ``[offset, offset+length)`` writable as a
        write would (allocate) and pass it on to a child's ``copy_range_to``; a
        protocol copies from the protocol node ``src``.  Raise :class:`NotSupported`
        for any part it cannot."""
        raise NotSupported(f"Driver '{self.format_name}' cannot offload copies")

    async def flush_to_os(self) -> None:
        """Push cached data to the OS (default: nothing is cached)."""

    async def flush_to_disk(self) -> None:
        """Make everything written so far durable (default: nothing to do)."""

    async def block_status(self, offset: int, length: int, want_zero: bool) -> BlockStatus:
        """Status of ``[offset, offset+length)``; may answer for a shorter prefix.

        Called only when ``capabilities()`` has :attr:`Cap.BLOCK_STATUS`; without it
        the request path answers: everything is data, allocated here for protocols,
        and recursed into the data child for filters.
        """
        return BlockStatus(Status.DATA | Status.ALLOCATED, length)

    def set_status_shape(self, shape: StatusShape) -> None:
        """How long block status answers may be from now on.  A caller whose work is
        cut where the answers are cut (a copy that must make QEMU's requests) asks for
        :attr:`StatusShape.QEMU`.  Default: the driver's answers already are."""

    async def truncate(self, size: int, exact: bool, prealloc: Prealloc) -> None:
        raise NotSupported(f"Image format '{self.format_name}' does not support resizing")

    async def get_length(self) -> int:
        raise NotImplementedError

    async def get_allocated_file_size(self) -> int:
        """Bytes the image takes on the host (``disk size``); -1 if unknown."""
        file = self.node.file
        return await file.allocated_file_size() if file is not None else -1

    def has_zero_init(self) -> bool:
        return False

    def get_info(self) -> DriverInfo:
        return DriverInfo()

    def get_specific_info(self) -> dict[str, Any] | None:
        """The ``format-specific`` data of ``qemu-img info`` (``{"type", "data"}``)."""
        return None

    # ---- reopen ------------------------------------------------------------------
    async def reopen_prepare(self, options: dict[str, Any], read_only: bool) -> Any:
        """Check that the node can switch to ``options``/``read_only``; return state."""
        return None

    async def reopen_commit(self, state: Any) -> None:
        """Switch; must not fail."""

    async def reopen_abort(self, state: Any) -> None:
        """Forget what prepare did."""

    # ---- image management ----------------------------------------------------------
    async def check(self, mode: CheckMode) -> CheckResult:
        """Check (and with ``mode`` repair) the image.  A check that cannot complete
        raises :class:`BlockError`, with the lines found so far in ``check_messages``.
        The node was opened with ``OpenFlags.check``: no repair happened on open."""
        raise NotSupported("This image format does not support checks")

    async def amend(self, options: dict[str, Any], force: bool) -> None:
        """Change format options (the ``amend_options``, values parsed)."""
        raise NotSupported(f"Format driver '{self.format_name}' does not support option amendment")

    async def change_backing_file(self, backing_file: str | None,
                                  backing_fmt: str | None) -> None:
        raise NotSupported(f"Driver '{self.format_name}' does not support changing the backing file")

    async def make_empty(self) -> None:
        raise NotSupported(f"Driver '{self.format_name}' does not support emptying the image")

    def backing_file_name(self) -> tuple[str | None, str | None]:
        """The backing file name and format recorded in the image header, if any."""
        return None, None

    def data_file_name(self) -> str | None:
        return None

    async def backing_changed(self) -> None:
        """The node's ``backing`` child was attached or replaced (default: nothing)."""

    # compressed writes (with :attr:`Cap.COMPRESSED_WRITE`)
    def compress_ahead(self, offset: int, data: memoryview) -> None:
        """A hint: a compressed write of this very ``data`` at ``offset`` follows; the
        driver may start compressing it now (default: nothing)."""

    async def end_compressed(self) -> None:
        """A run of compressed writes is over (default: nothing)."""

    # persistent dirty bitmaps (with :attr:`Cap.PERSISTENT_BITMAPS`); callers use
    # :mod:`blocklayer.core.bitmaps`, which checks the capability first
    def bitmap_list(self) -> list[dict[str, Any]]:
        """Each bitmap: ``{"name", "granularity", "flags", "recording", "persistent",
        "inconsistent", "count"}``."""
        return []

    async def bitmap_add(self, name: str, granularity: int | None = None,
                         persistent: bool = True, disabled: bool = False) -> None:
        raise NotSupported(f"Driver '{self.format_name}' cannot store persistent bitmaps")

    async def bitmap_remove(self, name: str) -> None:
        raise NotSupported(f"Driver '{self.format_name}' cannot store persistent bitmaps")

    async def bitmap_clear(self, name: str) -> None:
        raise NotSupported(f"Driver '{self.format_name}' cannot store persistent bitmaps")

    async def bitmap_set_enabled(self, name: str, enabled: bool) -> None:
        raise NotSupported(f"Driver '{self.format_name}' cannot store persistent bitmaps")

    async def bitmap_merge(self, target: str, source: Any) -> None:
        """Merge into ``target`` a bitmap of this node (by name) or one that
        :meth:`bitmap_find` returned (of another node of the same driver)."""
        raise NotSupported(f"Driver '{self.format_name}' cannot store persistent bitmaps")

    def bitmap_find(self, name: str) -> Any:
        """A handle on bitmap ``name`` for :meth:`bitmap_merge`."""
        raise NotSupported(f"Driver '{self.format_name}' cannot store persistent bitmaps")

    def bitmap_get(self, name: str) -> Any:
        """The bits of ``name``, one bool per granule (a numpy array)."""
        raise NotSupported(f"Driver '{self.format_name}' cannot store persistent bitmaps")

    def bitmap_set(self, name: str, offset: int, length: int, value: bool = True) -> None:
        """Mark (or clear) the granules of ``[offset, offset + length)``."""
        raise NotSupported(f"Driver '{self.format_name}' cannot store persistent bitmaps")

    # snapshots
    async def snapshot_list(self) -> list[SnapshotInfo]:
        return []

    async def snapshot_create(self, info: SnapshotInfo) -> None:
        raise NotSupported(f"Driver '{self.format_name}' does not support internal snapshots")

    async def snapshot_goto(self, name_or_id: str) -> None:
        raise NotSupported(f"Driver '{self.format_name}' does not support internal snapshots")

    async def snapshot_delete(self, snapshot_id: str | None, name: str | None) -> SnapshotInfo:
        raise NotSupported(f"Driver '{self.format_name}' does not support internal snapshots")

    async def snapshot_load_tmp(self, snapshot_id: str | None, name: str | None) -> None:
        # QEMU's wording; tools have no device names
        raise NotSupported(f"Block format '{self.format_name}' used by device '' does not "
                           "support temporarily loading internal snapshots")
