"""``snapshot``: list, create, apply and delete internal snapshots (through the driver)."""
from __future__ import annotations

import asyncio
import time

from blocklayer.core.errors import BlockError

from .args import UsageError, parse
from .common import close_all, new_graph, open_img


def main(argv: list[str]) -> int:
    p = parse(argv, "la:c:d:hqU", ["object=", "image-opts", "force-share"])
    actions = [(o, v) for o, v in p.opts if o in ("-l", "-a", "-c", "-d")]
    if len({o for o, _ in actions}) > 1 or len(actions) > 1 and actions[0][0] != "-l":
        raise UsageError("Cannot mix '-l', '-a', '-c', '-d'")
    if len(p.args) != 1:
        raise UsageError("Expecting one image file name")
    action, name = actions[0] if actions else ("-l", "")
    return asyncio.run(run(p, action, name))


def _fail(what: str, name: str, exc: BlockError) -> BlockError:
    return exc.with_prefix(f"Could not {what} snapshot '{name}': ")


async def run(p, action: str, name: str) -> int:  # type: ignore[no-untyped-def]
    from blocklayer.core.driver import SnapshotInfo
    from blocklayer.core.errors import NotSupported
    from .info import snapshot_table
    read_only = action == "-l"
    node = await open_img(new_graph(), p.args[0],
                          image_opts=p.has("--image-opts"), read_only=read_only,
                          force_share=p.has("-U"), backing=False)
    drv = node.driver
    try:
        if action == "-l":
            snaps = await drv.snapshot_list()
            if snaps:
                print("Snapshot list:")
                print("\n".join(snapshot_table(snaps)))
        elif action == "-c":
            now = time.time_ns()
            info = SnapshotInfo(id="", name=name, date_sec=now // 10**9,
                                date_nsec=now % 10**9 // 1000 * 1000, icount=0)
            try:
                await drv.snapshot_create(info)
            except NotSupported as exc:     # qemu-img 7.2 prints the bare errno here
                raise BlockError(f"Could not create snapshot '{name}': -{exc.errno} "
                                 f"({exc.strerror})", exc.errno) from None
            except BlockError as exc:
                raise _fail("create", name, exc)
        elif action == "-a":
            try:
                await drv.snapshot_goto(name)
            except NotSupported as exc:
                raise BlockError(f"Could not apply snapshot '{name}': Block driver does not "
                                 "support snapshots", exc.errno) from None
            except BlockError as exc:
                raise _fail("apply", name, exc)
        elif action == "-d":
            # qemu-img deletes by name only (bdrv_snapshot_delete(bs, NULL, name))
            found = next((sn for sn in await drv.snapshot_list() if sn.name == name), None)
            if found is None:
                raise BlockError(f"Could not delete snapshot '{name}': snapshot not found")
            try:
                await drv.snapshot_delete(found.id, found.name)
            except BlockError as exc:
                raise _fail("delete", name, exc)
        if not read_only:
            await node.flush()
    finally:
        await close_all(node)
    return 0
