"""What an NBD server exports: one :class:`Export` per name, each serving one node.

An export decides what qemu-nbd 7.2 decides for it: the transmission flags, the block
size constraints, which metadata contexts a query selects (``base:allocation``,
``qemu:allocation-depth``, ``qemu:dirty-bitmap:NAME``) and their extents.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core import dirty
from . import wire
from .wire import Extent
from .wire import TransmissionFlag as TF

if TYPE_CHECKING:
    from ..core.node import BlockNode

BASE_ALLOCATION = "base:allocation"
ALLOCATION_DEPTH = "qemu:allocation-depth"
DIRTY_BITMAP_PREFIX = "qemu:dirty-bitmap:"

# qemu-nbd's context ids: fixed per context, bitmaps from 2 on.
ID_BASE_ALLOCATION = 0
ID_ALLOCATION_DEPTH = 1
ID_DIRTY_BITMAP = 2


@dataclass
class Export:
    """One export: a name, a node, and what qemu-nbd's options made of it."""

    name: str
    node: BlockNode
    description: str = ""
    readonly: bool = False
    multi_conn: bool = False
    allocation_depth: bool = False          # -A
    bitmaps: tuple[str, ...] = ()           # -B NAME: bitmaps exported by name
    dirty_bitmaps: dict[str, dirty.Handle] = field(default_factory=dict)  # their bitmaps

    async def ready(self) -> None:
        """Wait while the node is drained: requests from clients are held at the export
        (QEMU holds them at the BlockBackend) so that a graph change made in the drained
        section, which may move the export to another node, is seen by them."""
        from ..core.io import wait_resumed
        while self.node.state.quiesce:
            await wait_resumed(self.node)

    @property
    def size(self) -> int:
        return self.node.total_bytes

    def flags(self, structured: bool) -> int:
        """The transmission flags for a client (DF only with structured replies)."""
        flags = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_CACHE
        if self.readonly:
            flags |= TF.READ_ONLY
        else:
            flags |= TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO
        if self.multi_conn:
            flags |= TF.CAN_MULTI_CONN
        if structured:
            flags |= TF.SEND_DF
        return int(flags)

    @property
    def request_alignment(self) -> int:
        return max(1, self.node.limits.request_alignment)

    def block_size(self, asked: bool) -> wire.InfoBlockSize:
        """NBD_INFO_BLOCK_SIZE as qemu-nbd sends it: the minimum is the node's alignment
        only when the client asked for block sizes (or used INFO), else 1."""
        minimum = self.request_alignment if asked else 1
        max_transfer = self.node.limits.max_transfer or wire.MAX_PAYLOAD
        return wire.InfoBlockSize(minimum, max(4096, minimum),
                                  min(max_transfer, wire.MAX_PAYLOAD))

    # -- metadata contexts -------------------------------------------------------------

    def contexts(self) -> dict[int, str]:
        """Every context this export offers, by id."""
        found = {ID_BASE_ALLOCATION: BASE_ALLOCATION}
        if self.allocation_depth:
            found[ID_ALLOCATION_DEPTH] = ALLOCATION_DEPTH
        for i, bitmap in enumerate(self.bitmaps):
            found[ID_DIRTY_BITMAP + i] = DIRTY_BITMAP_PREFIX + bitmap
        return found

    def match_contexts(self, queries: tuple[str, ...], listing: bool) -> dict[int, str]:
        """The contexts the queries select, in id order (qemu-nbd's reply order).  An
        empty list or an empty leaf (``base:``, ``qemu:``, ``qemu:dirty-bitmap:``)
        selects all of its kind when listing, nothing when setting; unknown
        namespaces select nothing."""
        offered = self.contexts()
        if listing and not queries:
            return offered
        chosen: set[int] = set()
        for query in queries:
            chosen |= {i for i, name in offered.items()
                       if _query_selects(query, name, listing)}
        return {i: offered[i] for i in sorted(chosen)}

    # -- extents ----------------------------------------------------------------------

    async def extents(self, context: str, offset: int, length: int,
                      max_extents: int) -> list[Extent]:
        """The extents of one context over ``[offset, offset+length)``, merged where
        neighbours agree, at most ``max_extents`` of them (qemu-nbd's way)."""
        out: list[Extent] = []
        async for n, flags in self._runs(context, offset, offset + length):
            if out and out[-1].flags == flags:
                out[-1] = Extent(out[-1].length + n, flags)
            elif len(out) == max_extents:
                break
            else:
                out.append(Extent(n, flags))
        return out

    async def _runs(self, context: str, offset: int, end: int
                    ) -> AsyncIterator[tuple[int, int]]:
        """``(length, flags)`` runs of one context from ``offset`` up to ``end``."""
        node = self.node
        if context.startswith(DIRTY_BITMAP_PREFIX):
            bm = self.dirty_bitmaps.get(context[len(DIRTY_BITMAP_PREFIX):])
            if bm is None:              # a bare export (tests): every bit clean
                yield end - offset, 0
                return
            for _, n, is_dirty in dirty.extents(bm, offset, end - offset, self.size):
                yield n, wire.STATE_DIRTY if is_dirty else 0
            return
        while offset < end:
            if context == BASE_ALLOCATION:
                st = await node.block_status_above(None, offset, end - offset)
                n = st.length
                flags = (0 if st.data else wire.STATE_HOLE) | \
                    (wire.STATE_ZERO if st.zero else 0)
            else:
                flags, n = await node.is_allocated_above(None, offset, end - offset)
            if n <= 0:
                return
            yield n, flags
            offset += n


def _query_selects(query: str, name: str, listing: bool) -> bool:
    """Does one query select the context ``name`` (qemu-nbd's matching)?"""
    if query == name:
        return True
    if not listing:
        return False
    if query == "base:":
        return name.startswith("base:")
    if query == "qemu:":
        return name.startswith("qemu:")
    if query == DIRTY_BITMAP_PREFIX:
        return name.startswith(DIRTY_BITMAP_PREFIX)
    return False
