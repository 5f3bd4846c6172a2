"""length, info, map, alloc, truncate: commands about the image rather than its data."""
from __future__ import annotations

import errno

from ...core.driver import BlockDriver, Perm, Prealloc
from ...core.errors import describe
from ...core.node import BlockNode
from .args import Options, num, strerror, usage
from .cmd_rw import FAILED
from .output import REQUEST_MAX_BYTES, cvtstr, format_specific
from .session import Session
from .table import command

#: protocols whose get_info answers in QEMU (file-posix) although they do not override it
_INFO_PROTOCOLS = ("file", "host_device")


@command("length", "gets the length of the current file", altname="l")
async def length_cmd(session: Session, argv: list[str]) -> int:
    assert session.node is not None
    session.out(cvtstr(session.node.total_bytes) + "\n")
    return 0


def _has_info(node: BlockNode | None) -> bool:
    """Would QEMU's bdrv_get_info succeed on this node?"""
    if node is None:
        return False
    if node.format_name in _INFO_PROTOCOLS:
        return True
    if node.format_name == "raw" or node.driver.is_filter:
        return _has_info(node.file or node.data_child)
    return type(node.driver).get_info is not BlockDriver.get_info


@command("info", "prints information about the current file", altname="i")
async def info_cmd(session: Session, argv: list[str]) -> int:
    node = session.node
    assert node is not None
    session.out(f"format name: {node.format_name}\n")
    if node.driver.is_protocol:
        session.out(f"format name: {node.format_name}\n")
    if not _has_info(node):
        return -1                # QEMU: bdrv_get_info failed, the command fails silently
    try:
        info = node.driver.get_info()
        specific = node.driver.get_specific_info()
    except FAILED:
        return -1
    session.out(f"cluster size: {cvtstr(info.cluster_size)}\n")
    session.out(f"vm state offset: {cvtstr(info.vm_state_offset)}\n")
    if specific:
        session.out("Format specific information:\n")
        session.out(format_specific(specific.get("data", {})))
    return 0


@command("map", "prints the allocated areas of a file", args="", argmin=0, argmax=0)
async def map_cmd(session: Session, argv: list[str]) -> int:
    node = session.node
    assert node is not None
    offset, remaining = 0, node.total_bytes
    while remaining:
        try:
            allocated, n = await node.is_allocated(offset, min(remaining, REQUEST_MAX_BYTES))
            while n < remaining:          # merge runs of the same status
                more_alloc, more = await node.is_allocated(
                    offset + n, min(remaining - n, REQUEST_MAX_BYTES))
                if more_alloc != allocated or not more:
                    break
                n += more
        except FAILED as exc:
            session.error(f"Failed to get allocation status: {strerror(exc)}")
            return -errno.EIO
        if not n:
            session.error("Unexpected end of image")
            return -errno.EIO
        what = "    allocated" if allocated else "not allocated"
        session.out(f"{cvtstr(n)} (0x{n:x}) bytes {what} at offset {cvtstr(offset)} "
                    f"(0x{offset:x})\n")
        offset += n
        remaining -= n
    return 0


@command("alloc", "checks if offset is allocated in the file", altname="a",
         args="offset [count]", argmin=1, argmax=2)
async def alloc_cmd(session: Session, argv: list[str]) -> int:
    node = session.node
    assert node is not None
    start = offset = num(session, argv[1])
    count = 512
    if len(argv) == 3:
        count = num(session, argv[2])
        limit = 0x7FFFFFFF * 512
        if count > limit:
            session.out(f"length argument cannot exceed {limit}, given {argv[2]}\n")
            return -errno.EINVAL
    remaining, allocated_sum = count, 0
    while remaining:
        try:
            allocated, n = await node.is_allocated(offset, remaining)
        except FAILED as exc:
            session.out(f"is_allocated failed: {strerror(exc)}\n")
            return -errno.EIO
        offset += n
        remaining -= n
        if allocated:
            allocated_sum += n
        if n == 0:
            count -= remaining
            remaining = 0
    session.out(f"{allocated_sum}/{count} bytes allocated at offset {cvtstr(start)}\n")
    return 0


@command("truncate", "truncates the current file at the given offset", altname="t",
         args="[-m prealloc_mode] off", argmin=1, argmax=3, perm=Perm.WRITE | Perm.RESIZE)
async def truncate_cmd(session: Session, argv: list[str]) -> int:
    prealloc = Prealloc.OFF
    opts = Options(session, argv, "m:")
    for opt, arg in opts:
        if opt == "m":
            try:
                prealloc = Prealloc(arg)
            except ValueError:
                session.error(f"Invalid preallocation mode '{arg}'")
                return -errno.EINVAL
    if len(opts.operands) != 1:
        return usage(session, "truncate")
    size = num(session, opts.operands[0])
    node = session.node
    assert node is not None
    try:
        await node.truncate(size, False, prealloc)
    except FAILED as exc:
        session.error(describe(exc))
        return -errno.EIO
    return 0
