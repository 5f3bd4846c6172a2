"""The ``copy-on-read`` filter (QEMU's ``block/copy-on-read.c``): reads through it copy
what comes from the filtered node's backing chain into the filtered node.

``bottom`` names the lowest layer whose data is copied: what a read finds only below
it is read as it is and not copied (the stream job puts this filter above the image
it streams into, with ``bottom`` the layer above its base).  Everything else passes
through (:class:`~blocklayer.core.filter.FilterDriver`).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from blocklayer.core.driver import ChildRole, DriverInfo, Perm, ReqFlag
from blocklayer.core.errors import InvalidArgument
from blocklayer.core.filter import FilterDriver

if TYPE_CHECKING:
    from blocklayer.core.node import BlockNode
    from blocklayer.core.options import OpenFlags


def node_options(node: "BlockNode") -> Any:
    """A node as the options QEMU's ``json:`` filename of a parent spells it."""
    if node.filename.startswith("json:"):
        return json.loads(node.filename[5:])
    if node.driver.is_protocol or node.file is None:
        return {"driver": node.format_name, "filename": node.filename}
    return {"driver": node.format_name, "file": node_options(node.file)}


class CopyOnReadDriver(FilterDriver):
    format_name = "copy-on-read"
    open_options = ("bottom",)

    async def open(self, options: dict[str, Any], flags: "OpenFlags") -> None:
        await super().open(options, flags)
        self.bottom: BlockNode | None = None
        name = options.get("bottom")
        if name is not None:
            bottom = self.node.graph.nodes.get(str(name))
            if bottom is None or bottom.closed:
                raise InvalidArgument(f"Bottom node '{name}' not found")
            if bottom.driver.is_filter:
                raise InvalidArgument(f"Bottom node '{name}' is a filter")
            self.bottom = bottom
        self.node.filename = "json:" + json.dumps({"driver": self.format_name,
                                                   "file": node_options(self.child)})

    def get_info(self) -> DriverInfo:
        return self.child.driver.get_info()      # as QEMU's bdrv_get_info of a filter

    def child_perm(self, role: ChildRole, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        perm, shared = super().child_perm(role, perm, shared)
        if role is self.data_child_role:
            return perm | Perm.WRITE_UNCHANGED, shared | Perm.WRITE_UNCHANGED
        return perm, shared

    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        if self.bottom is None:
            return await self.child.read(offset, length, ReqFlag.COPY_ON_READ)
        out = bytearray()
        end = offset + length
        while offset < end:
            n = await self._from_above_bottom(offset, end - offset)
            copy = n > 0
            n = abs(n) or end - offset
            out += await self.child.read(offset, n,
                                         ReqFlag.COPY_ON_READ if copy else ReqFlag.NONE)
            offset += n
        return out

    async def _from_above_bottom(self, offset: int, length: int) -> int:
        """``n`` > 0: the first ``n`` bytes come from the child or a layer down to
        ``bottom`` (copy them); ``-n``: they come from below ``bottom`` (do not)."""
        top = self.child
        allocated, n = await top.is_allocated(offset, length)
        if allocated:
            return max(n, 1)
        below = top.filtered_backing()
        if below is None:
            return -max(n, 1)
        bottom = self.bottom
        assert bottom is not None
        base = bottom.filtered_backing()
        depth, m = await below.is_allocated_above(base, offset, max(n, 1))
        m = max(m, 1)
        return m if depth else -m
