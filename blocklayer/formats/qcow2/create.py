"""Creating a qcow2 image laid out as qemu-img lays it out: header in cluster 0, the
refcount table in cluster 1, its first refcount block in cluster 2, then the L1 table
(written to its exact length: the file is not padded to a cluster)."""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ...core.driver import ChildRole, Prealloc
from ...core.errors import BlockError, InvalidArgument, NotSupported
from ...core.io import metadata_io
from ...core.options import OpenFlags, parse_bool
from . import layout as L

if TYPE_CHECKING:
    from .driver import Qcow2Driver

V3_SUFFIX = "(use version=v3 or greater)"
#: qemu-img 7.2 writes the feature name table only into clusters this big [obs]
FEATURE_TABLE_MIN_CLUSTER = 8192


def _version(compat: Any) -> int:
    if compat is None:
        return 3
    table = {"0.10": 2, "v2": 2, "1.1": 3, "v3": 3}
    if str(compat) not in table:
        raise InvalidArgument(f"Parameter 'version' does not accept value '{compat}'")
    return table[str(compat)]


def build_create_header(options: dict[str, Any]) -> tuple[L.Header, int, Prealloc]:
    """Validate the create options (QEMU's messages) and make the initial header."""
    version = _version(options.get("compat"))
    cs = int(options.get("cluster_size") or 65536)
    if cs < 512 or cs > (2 << 20) or cs & (cs - 1):
        raise InvalidArgument("Cluster size must be a power of two between 512 and 2048k")
    extended = parse_bool(options.get("extended_l2", False), "extended_l2")
    if extended:
        if version < 3:
            raise InvalidArgument("Extended L2 entries are only supported with "
                                  f"compatibility level 1.1 and above {V3_SUFFIX}")
        if cs < 16384:
            raise InvalidArgument("Extended L2 entries are only supported with cluster "
                                  "sizes of at least 16384 bytes")
    bits = int(options.get("refcount_bits") or 16)
    if bits > 64 or bits < 1 or bits & (bits - 1):
        raise InvalidArgument("Refcount width must be a power of two and may not exceed "
                              "64 bits")
    if version < 3 and bits != 16:
        raise InvalidArgument("Different refcount widths than 16 bits require "
                              f"compatibility level 1.1 or above {V3_SUFFIX}")
    lazy = parse_bool(options.get("lazy_refcounts", False), "lazy_refcounts")
    if lazy and version < 3:
        raise InvalidArgument("Lazy refcounts only supported with compatibility level 1.1 "
                              f"and above {V3_SUFFIX}")
    ctype_name = str(options.get("compression_type") or "zlib")
    ctypes = {v: k for k, v in L.COMPRESSION_NAMES.items()}
    if ctype_name not in ctypes:
        raise InvalidArgument(f"Parameter 'compression-type' does not accept value "
                              f"'{ctype_name}'")
    ctype = ctypes[ctype_name]
    if ctype != L.COMPRESSION_ZLIB and version < 3:
        raise InvalidArgument("Non-zlib compression type is only supported with "
                              f"compatibility level 1.1 and above {V3_SUFFIX}")
    prealloc_name = str(options.get("preallocation") or "off")
    try:
        prealloc = Prealloc(prealloc_name)
    except ValueError:
        raise InvalidArgument(f"Parameter 'preallocation' does not accept value "
                              f"'{prealloc_name}'") from None
    data_file = options.get("data_file")
    data_raw = parse_bool(options.get("data_file_raw", False), "data_file_raw")
    backing = options.get("backing_file")
    if data_raw and not data_file:
        raise InvalidArgument("data-file-raw requires data-file")
    if data_file and version < 3:
        raise InvalidArgument("External data files are only supported with compatibility "
                              f"level 1.1 and above {V3_SUFFIX}")
    if data_raw and prealloc is Prealloc.OFF:
        # the L2 entries must point at the right place in the raw data file from the start
        prealloc = Prealloc.METADATA
    if backing and data_raw:
        raise InvalidArgument("Backing file and data-file-raw cannot be used at the same "
                              "time")
    if options.get("backing_fmt") and not backing:
        raise InvalidArgument("Backing format cannot be used without backing file")
    if backing and prealloc is not Prealloc.OFF and not extended:
        raise InvalidArgument("Backing file and preallocation can only be used at the same "
                              "time if extended_l2 is on")
    if options.get("encrypt.format") or parse_bool(options.get("encryption", False),
                                                   "encryption"):
        raise NotSupported("qcow2: creating encrypted images is not supported")
    h = L.Header(version=version, cluster_bits=cs.bit_length() - 1,
                 refcount_table_offset=cs, refcount_table_clusters=1,
                 refcount_order=bits.bit_length() - 1, compression_type=ctype,
                 header_length=L.V3_HEADER_LENGTH if version >= 3 else L.V2_HEADER_LENGTH)
    if data_file:
        h.incompatible_features |= L.INCOMPAT_DATA_FILE
    if ctype != L.COMPRESSION_ZLIB:
        h.incompatible_features |= L.INCOMPAT_COMPRESSION
    if extended:
        h.incompatible_features |= L.INCOMPAT_EXTL2
    if lazy:
        h.compatible_features |= L.COMPAT_LAZY_REFCOUNTS
    if data_raw:
        h.autoclear_features |= L.AUTOCLEAR_DATA_FILE_RAW
    size = -(-int(options.get("size") or 0) // 512) * 512
    return h, size, prealloc


async def create_qcow2(cls: type["Qcow2Driver"], filename: str, options: dict[str, Any],
                       open_file: Any) -> None:
    h, size, prealloc = build_create_header(options)
    if open_file is None:
        raise NotSupported("Driver 'qcow2' needs a protocol to create images on")
    backing, backing_fmt = options.get("backing_file"), options.get("backing_fmt")
    if "size" not in options and backing:
        size = await _backing_size(filename, str(backing), backing_fmt)
    cs = h.cluster_size
    file = await open_file(filename)
    node = None
    try:
        await file.write(0, h.build_fixed().ljust(cs, b"\0"))
        await file.write(cs, L.build_entries(2 * cs).ljust(2 * cs, b"\0"))
        await file.flush()
        node = await _open_new(cls, file, filename, options)
        drv = node.driver
        assert isinstance(drv, cls)
        with metadata_io():
            async with drv.lock:
                offset = await drv.refcounts.alloc_clusters(3 * cs)
            if offset != 0:
                raise BlockError("Could not allocate clusters for qcow2 header and "
                                 "refcount table", errno.EIO)
            if options.get("data_file"):
                drv.header.data_file = str(options["data_file"])
            if h.version >= 3 and cs >= FEATURE_TABLE_MIN_CLUSTER:
                drv.header.feature_table = list(L.QEMU_FEATURE_TABLE)
                drv.header.has_feature_table = True
            await drv.update_header()
            await drv.truncate(size, False, prealloc)
            if backing:
                await drv.change_backing_file(str(backing), backing_fmt)
            await drv.flush_caches()
            await file.flush()
    finally:
        if node is not None:
            await node.close()
        else:
            await file.close()


async def _open_new(cls: type["Qcow2Driver"], file: Any, filename: str,
                    options: dict[str, Any]) -> Any:
    """A qcow2 node over the freshly written file (and its new data file)."""
    from ...core.node import BlockNode
    graph = file.graph
    node = BlockNode(graph, cls, name=None, flags=OpenFlags(), options={},
                     filename=filename)
    try:
        node.attach_child("file", ChildRole.FILE, file)
        data_file = options.get("data_file")
        if data_file:
            data_node = await _create_data_file(graph, filename, str(data_file),
                                                int(options.get("size", 0)))
            node.attach_child("data-file", ChildRole.DATA, data_node)
        await node.driver.open({}, node.flags)
        return node
    except BaseException:
        await node.close()
        raise


async def _create_data_file(graph: Any, image: str, name: str, size: int) -> Any:
    """The external data file, created at the image's size (so its first block is
    allocated, as QEMU creates it with the image's options)."""
    from ...protocols.file import FileDriver
    from ...core.open import open_node
    await FileDriver.create(name, {"size": size})
    return await open_node(graph, name, {"driver": "file"}, flags=OpenFlags(),
                           role=ChildRole.DATA)


async def _backing_size(filename: str, backing: str, fmt: Any) -> int:
    from ...core.open import full_backing_filename, open_image
    path = full_backing_filename(filename, backing)
    try:
        node = await open_image(path, fmt=fmt, read_only=True, backing=False)
    except BlockError as exc:
        raise BlockError(f"Could not open backing image: {exc.message}", exc.errno) from None
    try:
        return node.total_bytes
    finally:
        await node.close()
