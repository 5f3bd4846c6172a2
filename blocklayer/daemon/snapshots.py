"""Snapshots (external and internal) and image creation."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from blocklayer.core.driver import SnapshotInfo
from blocklayer.core.errors import BlockError, NotSupported
from blocklayer.core.node import BlockNode
from blocklayer.qmp.dispatch import Context
from blocklayer.qmp.protocol import CommandError

from .lookup import lookup_bs, node_by_name, root_bs


class ExternalSnapshot:
    """blockdev-snapshot and blockdev-snapshot-sync as a transaction action: prepare
    puts the overlay on top (QEMU does it there too, so later actions see it), abort
    takes it off again, commit makes the old top read-only."""

    def __init__(self, daemon: Any, args: dict[str, Any]) -> None:
        self.daemon, self.args = daemon, args
        self.top: BlockNode | None = None
        self.overlay: BlockNode | None = None

    async def open_overlay(self) -> tuple[BlockNode, BlockNode]:
        """The existing overlay of blockdev-snapshot (checked, as QEMU checks it)."""
        daemon, args = self.daemon, self.args
        top = node_by_name(daemon, args["node"], "Cannot find device='' nor node-name='{}'")
        overlay = node_by_name(daemon, args["overlay"],
                               "Cannot find device='' nor node-name='{}'")
        if overlay.parents or overlay.users:
            raise CommandError("The overlay is already in use")
        if not overlay.driver.supports_backing:
            raise CommandError("The overlay does not support backing images")
        if overlay.backing is not None:
            raise CommandError("The overlay already has a backing image")
        return top, overlay.ref()

    async def prepare(self) -> None:
        from blocklayer.core.graph import append_overlay
        top, overlay = await self.open_overlay()
        try:
            async with top.drained():
                append_overlay(top, overlay)
        except BlockError:
            await overlay.unref()
            raise
        self.top, self.overlay = top, overlay

    async def abort(self) -> None:
        from blocklayer.core.graph import replace_node
        top, overlay = self.top, self.overlay
        if top is None or overlay is None:
            return
        async with overlay.drained():
            replace_node(overlay, top)
            overlay.detach_child("backing")
        await overlay.unref()

    async def commit(self) -> None:
        assert self.top is not None and self.overlay is not None
        await _old_top_read_only(self.daemon, self.top)
        await self.release(self.overlay)

    async def release(self, overlay: BlockNode) -> None:
        """Drop the transaction's reference to the overlay."""
        await overlay.unref()


class ExternalSnapshotSync(ExternalSnapshot):
    async def open_overlay(self) -> tuple[BlockNode, BlockNode]:
        from blocklayer.core.create import create_image
        from blocklayer.core.open import open_node
        daemon, args = self.daemon, self.args
        top = lookup_bs(daemon, args.get("device"), args.get("node-name"))
        fmt = args.get("format", "qcow2")
        new_name = args.get("snapshot-node-name")
        if new_name is not None and new_name in daemon.graph.nodes:
            raise CommandError(f"Duplicate nodes with node-name='{new_name}'")
        if top.read_only:
            raise CommandError(f"Node '{top.name}' is read only")
        path = args["snapshot-file"]
        if args.get("mode", "absolute-paths") == "absolute-paths":
            await create_image(path, fmt, top.total_bytes, {"backing_file": top.filename,
                                                             "backing_fmt": top.format_name})
        elif not os.path.exists(path):
            raise CommandError(f"Could not open '{path}': No such file or directory")
        opts: dict[str, Any] = {"driver": fmt, "file.driver": "file", "file.filename": path,
                                "backing": None}
        if new_name is not None:
            opts["node-name"] = new_name
        return top, await open_node(daemon.graph, None, opts)

    async def prepare(self) -> None:
        await super().prepare()
        overlay = self.overlay
        assert overlay is not None
        overlay.backing_file, overlay.backing_format = overlay.driver.backing_file_name()
        self.daemon.watch_threshold(overlay)

    async def release(self, overlay: BlockNode) -> None:
        # QEMU: when only the transaction held the new overlay (nothing moved onto it)
        # it goes away again (the image file stays, the old top stays read-only)
        if not overlay.parents and not overlay.users:
            await overlay.unref()


async def blockdev_snapshot_sync(ctx: Context, args: dict[str, Any]) -> None:
    await run_action(ExternalSnapshotSync(ctx.app, args))


async def run_action(action: Any) -> None:
    """A transaction action run alone: prepared, then committed."""
    await action.prepare()
    await action.commit()


async def _old_top_read_only(daemon: Any, top: BlockNode) -> None:
    """QEMU's external_snapshot_commit: the old top becomes read-only (best effort)."""
    from blocklayer.core.reopen import ReopenQueue

    from .nodes import queue_reopen
    if not top.read_only and not top.flags.copy_on_read:
        queue = ReopenQueue()
        queue_reopen(daemon, queue, top, None, True)
        try:
            await queue.run()
        except BlockError:
            pass


async def blockdev_snapshot(ctx: Context, args: dict[str, Any]) -> None:
    await run_action(ExternalSnapshot(ctx.app, args))


def _snapshot_json(s: SnapshotInfo) -> dict[str, Any]:
    from blocklayer.tools.img.info import snapshot_json
    return snapshot_json(s)


@contextmanager
def _internal_snapshots(node: BlockNode, device: str) -> Iterator[None]:
    """QEMU's text for a format without internal snapshots."""
    try:
        yield
    except NotSupported:
        raise CommandError(f"Block format '{node.format_name}' used by device '{device}' "
                           "does not support internal snapshots") from None


class InternalSnapshot:
    """blockdev-snapshot-internal-sync: prepare takes the snapshot, abort deletes it."""

    def __init__(self, daemon: Any, args: dict[str, Any]) -> None:
        self.daemon, self.args = daemon, args
        self.node: BlockNode | None = None

    async def prepare(self) -> None:
        device, name = self.args["device"], self.args["name"]
        node = root_bs(self.daemon, device)
        if not name:
            raise CommandError("Name is empty")
        if node.read_only:
            raise CommandError(f"Device '{device}' is read only")
        drv = node.driver
        with _internal_snapshots(node, device):
            snaps = await drv.snapshot_list()
        if any(s.name == name for s in snaps):
            raise CommandError(f"Snapshot with name '{name}' already exists on device "
                               f"'{device}'")
        now = time.time_ns()
        # QSD has no guest: its virtual clock reads the host's wall clock, no icount
        info = SnapshotInfo(id="", name=name, date_sec=now // 10**9,
                            date_nsec=now % 10**9 // 1000 * 1000,
                            vm_clock_nsec=time.time_ns(), icount=None)
        async with node.drained():
            with _internal_snapshots(node, device):
                await drv.snapshot_create(info)
        self.node = node

    async def commit(self) -> None:
        pass

    async def abort(self) -> None:
        if self.node is not None:
            async with self.node.drained():
                await self.node.driver.snapshot_delete(None, self.args["name"])


async def snapshot_internal_sync(ctx: Context, args: dict[str, Any]) -> None:
    await run_action(InternalSnapshot(ctx.app, args))


async def snapshot_delete_internal_sync(ctx: Context, args: dict[str, Any]) -> Any:
    device = args["device"]
    snap_id, name = args.get("id"), args.get("name")
    node = root_bs(ctx.app, device)
    if snap_id is None and name is None:
        raise CommandError("Name or id must be provided")
    drv = node.driver
    with _internal_snapshots(node, device):
        snaps = await drv.snapshot_list()
    match = [s for s in snaps if (snap_id is None or s.id == snap_id)
             and (name is None or s.name == name)]
    if not match:
        raise CommandError(f"Snapshot with id '{_c(snap_id)}' and name '{_c(name)}' "
                           f"does not exist on device '{device}'")
    async with node.drained():
        await drv.snapshot_delete(match[0].id, match[0].name)
    return _snapshot_json(match[0])


def _c(text: str | None) -> str:
    """A C string in QEMU's messages: NULL prints as ``null``."""
    return "null" if text is None else text


#: BlockdevCreateOptions member -> qemu-img -o name
_CREATE_NAMES = {"version": "compat", "backing-file": "backing_file", "backing-fmt": "backing_fmt",
                 "cluster-size": "cluster_size", "lazy-refcounts": "lazy_refcounts",
                 "refcount-bits": "refcount_bits", "extended-l2": "extended_l2",
                 "compression-type": "compression_type", "data-file": "data_file",
                 "data-file-raw": "data_file_raw", "table-size": "table_size",
                 "preallocation": "preallocation", "nocow": "nocow",
                 "extent-size-hint": "extent_size_hint"}


async def blockdev_create(ctx: Context, args: dict[str, Any]) -> None:
    """Runs to completion before the reply (QSD runs a 'create' job); the job's
    JOB_STATUS_CHANGE events follow the reply and it waits for job-dismiss."""
    daemon = ctx.app
    job_id = args["job-id"]
    if job_id in daemon.jobs:
        raise CommandError(f"Job ID '{job_id}' already in use")
    from .state import Job
    job = Job(job_id, "create")
    daemon.jobs[job_id] = job
    for status in ("created", "running"):
        daemon.emit("JOB_STATUS_CHANGE", {"id": job_id, "status": status})
    try:
        await _create(daemon, dict(args["options"]))
    except (BlockError, CommandError, OSError) as exc:
        job.error = exc.message if isinstance(exc, BlockError) else \
            exc.desc if isinstance(exc, CommandError) else str(exc)
    for status in ("waiting", "pending", "concluded"):
        daemon.emit("JOB_STATUS_CHANGE", {"id": job_id, "status": status})


async def _create(daemon: Any, options: dict[str, Any]) -> None:
    from blocklayer.core import registry
    driver = options.pop("driver")
    size = options.pop("size")
    if driver == "file":
        filename = options.pop("filename")
        opts = {_CREATE_NAMES.get(k, k): v for k, v in options.items()}
        await registry.get_driver("file").create(filename, {"size": size, **opts})
        return
    file_ref = options.pop("file")
    file_node = node_by_name(daemon, file_ref, "Cannot find device='' nor node-name='{}'") \
        if isinstance(file_ref, str) else None
    if file_node is None:
        raise CommandError("blockdev-create takes the 'file' node by name")
    opts = {_CREATE_NAMES.get(k, k): v for k, v in options.items()}
    if opts.get("compat") is not None:
        opts["compat"] = {"v2": "0.10", "v3": "1.1"}[opts["compat"]]
    if file_node.users or file_node.parents:
        raise CommandError(f"Node '{file_node.name}' is in use")
    # The image is written through a file node of its own over the same file (drivers
    # close the node they create on); the named node holds no locks while unused and
    # sees the new length afterwards.  Only file-backed nodes can be created on.
    from blocklayer.core.create import create_image
    from blocklayer.core.node import BlockGraph
    if file_node.format_name != "file":
        raise CommandError(f"Driver '{driver}' can be created only on a file node")
    await create_image(file_node.filename, driver, size, opts, graph=BlockGraph())
    await file_node.refresh_total_bytes()


HANDLERS = {
    "blockdev-snapshot-sync": blockdev_snapshot_sync,
    "blockdev-snapshot": blockdev_snapshot,
    "blockdev-snapshot-internal-sync": snapshot_internal_sync,
    "blockdev-snapshot-delete-internal-sync": snapshot_delete_internal_sync,
    "blockdev-create": blockdev_create,
}
