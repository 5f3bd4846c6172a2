"""The ``copy-before-write`` filter (QEMU's ``block/copy-before-write.c``): before a
write, write-zeroes or discard changes a cluster of the filtered node for the first
time, the cluster's old data is copied to ``target``.  The target so holds the node as
it was when the filter was put in: the point in time a backup copies, or a fleecing
image serves through ``snapshot-access``.

Options: ``file``, ``target`` (node references), ``bitmap`` (``{node, name}``: only
what is dirty in it is copied), ``on-cbw-error`` (``break-guest-write``: the guest's
write fails; ``break-snapshot``: the write goes on and the snapshot is invalid from
then), ``cbw-timeout`` (seconds, 0 = none).

The snapshot side (:meth:`snapshot_read`, :meth:`snapshot_status`,
:meth:`snapshot_discard`) is what ``snapshot-access`` uses: a cluster the filter has
copied is read from the target, any other from the filtered node (a guest write to it
waits until such a read is done).
"""
from __future__ import annotations

import asyncio
import errno as _errno
from typing import TYPE_CHECKING, Any

from blocklayer.core import dirty
from blocklayer.core.driver import BlockStatus, ChildRole, DriverInfo, Perm, Status
from blocklayer.core.errors import BlockError, InvalidArgument
from blocklayer.core.filter import FilterDriver
from blocklayer.jobs.blockcopy import BlockCopy, bitmap

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode
    from blocklayer.core.options import OpenFlags

ON_CBW_ERROR = ("break-guest-write", "break-snapshot")


class CopyBeforeWriteDriver(FilterDriver):
    format_name = "copy-before-write"
    open_options = ("target", "bitmap", "bitmap.node", "bitmap.name", "on-cbw-error",
                    "cbw-timeout")

    async def open(self, options: dict[str, Any], flags: "OpenFlags") -> None:
        await super().open(options, flags)
        graph = self.node.graph
        ref = options.get("target")
        if ref is None:
            raise InvalidArgument("Parameter 'target' is missing")
        target = graph.nodes.get(str(ref)) if isinstance(ref, str) else None
        if target is None:
            raise InvalidArgument(f"Cannot find device='{ref}' nor node-name='{ref}'")
        self.on_cbw_error = str(options.get("on-cbw-error", "break-guest-write"))
        if self.on_cbw_error not in ON_CBW_ERROR:
            raise InvalidArgument("Parameter 'on-cbw-error' does not accept value "
                                  f"'{self.on_cbw_error}'")
        self.cbw_timeout = int(options.get("cbw-timeout", 0))
        self.node.attach_child("target", ChildRole.OTHER, target.ref())
        self.bcs = BlockCopy(self.child, target)
        bm_node, bm_name = options.get("bitmap.node"), options.get("bitmap.name")
        if bm_name is not None:
            holder = graph.nodes.get(str(bm_node))
            if holder is None:
                raise InvalidArgument(f"Cannot find device='{bm_node}' nor "
                                      f"node-name='{bm_node}'")
            source = dirty.find(holder, str(bm_name))
            self.bcs.copy_bitmap.set_range(0, self.bcs.size, False)
            dirty.merge_into(self.bcs.copy_bitmap, source)
        size, g = self.bcs.size, self.bcs.cluster
        #: clusters this filter copied (the snapshot reads them from the target)
        self.done = bitmap(size, g, False)
        #: what the snapshot still offers (snapshot-access discards from it)
        self.access = bitmap(size, g, True)
        dirty.add_internal(self.node, self.done)
        dirty.add_internal(self.node, self.access)
        self.snapshot_error = False
        self.readers: list[tuple[int, int, asyncio.Future[None]]] = []
        self.node.filename = self.child.filename

    async def close(self) -> None:
        bcs = getattr(self, "bcs", None)
        if bcs is not None:
            bcs.close()
            dirty.remove_internal(self.node, self.done)
            dirty.remove_internal(self.node, self.access)
        await super().close()

    def get_info(self) -> DriverInfo:
        return self.child.driver.get_info()

    def child_perm(self, role: ChildRole, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        if role is ChildRole.OTHER:       # the target: written by us alone
            return Perm.WRITE | Perm.CONSISTENT_READ, Perm.WRITE_UNCHANGED | Perm.CONSISTENT_READ
        return super().child_perm(role, perm, shared)

    # ---- the guest's side ----------------------------------------------------------------
    async def before_change(self, offset: int, length: int) -> None:
        if self.snapshot_error or length <= 0:
            return
        await self._wait_readers(offset, length)
        try:
            coro = self.bcs.copy(offset, length)
            if self.cbw_timeout:
                await asyncio.wait_for(coro, self.cbw_timeout)
            else:
                await coro
        except (BlockError, asyncio.TimeoutError) as exc:
            if self.on_cbw_error == "break-guest-write":
                if isinstance(exc, BlockError):
                    raise
                raise BlockError("copy-before-write timed out", _errno.ETIMEDOUT) from exc
            self.snapshot_error = True
            return
        a, b = self.bcs.clusters(offset, length)
        self.done.bits.set(a, b, True)

    async def _wait_readers(self, offset: int, length: int) -> None:
        while True:
            busy = [f for a, b, f in self.readers if a < offset + length and offset < b]
            if not busy:
                return
            await asyncio.wait(busy)

    # ---- the snapshot's side -------------------------------------------------------------
    def _snapshot_check(self, offset: int, length: int) -> None:
        if self.snapshot_error:
            raise BlockError("The snapshot is invalid: a copy before write failed",
                             _errno.EACCES)
        a, b = self.bcs.clusters(offset, length)
        if any(True for _ in self._gaps(self.access, a, b)):
            raise BlockError("The range was discarded from the snapshot", _errno.EACCES)

    @staticmethod
    def _gaps(bm: dirty.DirtyBitmap, a: int, b: int) -> list[tuple[int, int]]:
        out, pos = [], a
        for x, y in bm.bits.runs(a, b):
            if x > pos:
                out.append((pos, x))
            pos = y
        if pos < b:
            out.append((pos, b))
        return out

    def _from_target(self, offset: int) -> tuple[bool, int]:
        """Whether the cluster at ``offset`` is read from the target, and how many
        bytes from ``offset`` on are read from the same place."""
        c = self.bcs.cluster
        i = offset // c
        copied = bool(self.done.bits.b[i >> 3] >> (i & 7) & 1)
        j = i + 1
        while j * c < self.bcs.size and bool(self.done.bits.b[j >> 3] >> (j & 7) & 1) == copied:
            j += 1
        return copied, min(j * c, self.bcs.size) - offset

    async def snapshot_read(self, offset: int, length: int) -> bytes:
        self._snapshot_check(offset, length)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (offset, offset + length, fut)
        self.readers.append(entry)
        try:
            out = bytearray()
            pos, end = offset, offset + length
            while pos < end:
                copied, n = self._from_target(pos)
                n = min(n, end - pos)
                node = self.bcs.target if copied else self.child
                out += await node.read(pos, n)
                pos += n
            return bytes(out)
        finally:
            self.readers.remove(entry)
            fut.set_result(None)

    async def snapshot_status(self, offset: int, length: int) -> BlockStatus:
        self._snapshot_check(offset, length)
        copied, n = self._from_target(offset)
        n = min(n, length)
        if copied:    # what we wrote there is data (the target's holes are not ours)
            return BlockStatus(Status.DATA | Status.ALLOCATED, n)
        st = await self.child.block_status_above(None, offset, n)
        return BlockStatus(st.flags & (Status.DATA | Status.ZERO) | Status.ALLOCATED,
                           max(min(st.length, n), 1))

    def snapshot_discard(self, offset: int, length: int) -> None:
        """The snapshot's user needs no more of the range: no more copies of it."""
        c = self.bcs.cluster
        a, b = -(-offset // c), min(offset + length, self.bcs.size) // c
        if offset + length >= self.bcs.size:
            b = -(-self.bcs.size // c)
        if a < b:
            self.access.bits.set(a, b, False)
            self.bcs.copy_bitmap.bits.set(a, b, False)
