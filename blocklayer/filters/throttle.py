"""The ``throttle`` filter (option ``throttle-group``) and the groups it joins.

A :class:`ThrottleGroup` owns one :class:`~blocklayer.core.throttle.ThrottleState`
shared by its members; per direction, a request that must wait queues behind its
node's earlier ones and one timer releases them, one at a time, taking the nodes in
turn (QEMU's round-robin token of block/throttle-groups.c).  Reads are one direction;
writes, write-zeroes and discards the other.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..core.errors import InvalidArgument
from ..core.filter import FilterDriver
from ..core.throttle import ThrottleConfig, ThrottleState

if TYPE_CHECKING:
    from ..core.driver import ReqFlag
    from ..core.node import BlockNode
    from ..core.options import OpenFlags

#: the throttle-group objects by id (QEMU's groups are global too)
GROUPS: dict[str, ThrottleGroup] = {}


def now_ns() -> int:
    return time.monotonic_ns()


class ThrottleGroup:
    def __init__(self, name: str, cfg: ThrottleConfig) -> None:
        self.name = name
        self.state = ThrottleState(cfg, now_ns())
        self.members: list[object] = []
        self.queues: tuple[dict[object, deque[tuple[asyncio.Future[None], int]]], ...] = \
            ({}, {})
        self.token = [0, 0]
        self.timers: list[asyncio.TimerHandle | None] = [None, None]

    def configure(self, cfg: ThrottleConfig) -> None:
        self.state.configure(cfg, now_ns())
        for d in (0, 1):
            self._release(d)

    def join(self, member: object) -> None:
        self.members.append(member)
        for q in self.queues:
            q[member] = deque()

    def leave(self, member: object) -> None:
        self.members.remove(member)
        for q in self.queues:
            for fut, _ in q.pop(member, ()):
                fut.cancel()

    async def intercept(self, member: object, size: int, is_write: bool) -> None:
        """Wait until the group's limits let a request of ``size`` bytes start."""
        d = int(is_write)
        if not any(self.queues[d].values()) and not self.state.wait_ns(now_ns(), is_write):
            self.state.account(is_write, size)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queues[d][member].append((fut, size))
        self._arm(d)
        await fut

    def _arm(self, d: int) -> None:
        if self.timers[d] is None:
            wait = self.state.wait_ns(now_ns(), bool(d))
            self.timers[d] = asyncio.get_running_loop().call_later(wait / 1e9,
                                                                   self._fire, d)

    def _fire(self, d: int) -> None:
        self.timers[d] = None
        self._release(d)

    def _release(self, d: int) -> None:
        """Start the waiting requests the buckets allow, nodes in turn."""
        while any(self.queues[d].values()):
            if self.state.wait_ns(now_ns(), bool(d)):
                self._arm(d)
                return
            fut, size = self._next(d)
            self.state.account(bool(d), size)
            if not fut.done():
                fut.set_result(None)

    def _next(self, d: int) -> tuple[asyncio.Future[None], int]:
        n = len(self.members)
        for step in range(n):
            i = (self.token[d] + step) % n
            q = self.queues[d][self.members[i]]
            if q:
                self.token[d] = (i + 1) % n
                return q.popleft()
        raise AssertionError("no waiting request")


def _child_options(child: BlockNode) -> Any:
    """The child as QEMU's json: filename of the filter spells it."""
    if child.filename.startswith("json:"):
        return json.loads(child.filename[5:])
    if child.driver.is_protocol:
        return {"driver": child.format_name, "filename": child.filename}
    return child.filename


class ThrottleDriver(FilterDriver):
    format_name = "throttle"
    open_options = ("throttle-group",)

    async def open(self, options: dict[str, Any], flags: OpenFlags) -> None:
        await super().open(options, flags)
        name = options.get("throttle-group")
        if name is None:
            raise InvalidArgument("Please specify a throttle group")
        group = GROUPS.get(str(name))
        if group is None:
            raise InvalidArgument(f"Throttle group '{name}' does not exist")
        self.group: ThrottleGroup | None = group
        group.join(self)
        self.node.filename = "json:" + json.dumps({"throttle-group": name,
                                                   "driver": "throttle",
                                                   "file": _child_options(self.child)})

    async def close(self) -> None:
        group = getattr(self, "group", None)
        if group is not None:
            group.leave(self)
            self.group = None
        await super().close()

    async def _intercept(self, size: int, is_write: bool) -> None:
        if self.group is not None:
            await self.group.intercept(self, size, is_write)

    async def read(self, offset: int, length: int, flags: ReqFlag) -> bytes | bytearray:
        await self._intercept(length, False)
        return await super().read(offset, length, flags)

    async def before_change(self, offset: int, length: int) -> None:
        await self._intercept(length, True)
