"""``transaction``: every action is prepared in order; if one fails, the prepared ones
are aborted in reverse order and its error is the reply; otherwise all are committed
(QEMU's qmp_transaction).  Actions are the commands' own :class:`~.bitmapcmds.Action`
objects and the snapshot actions of :mod:`.snapshots`."""
from __future__ import annotations

from typing import Any

from blocklayer.core.errors import BlockError
from blocklayer.qmp.dispatch import Context
from blocklayer.qmp.protocol import CommandError

from . import bitmapcmds, snapshots


class Abort(bitmapcmds.Action):
    async def prepare(self) -> None:
        raise CommandError("Transaction aborted using Abort action")


class Backup(bitmapcmds.Action):
    """blockdev-backup: prepared (filter in, bitmap frozen) with the others, started
    on commit, undone on abort."""

    #: the transaction's jobs when completion-mode is grouped (they finish together)
    txn: Any = None

    async def prepare(self) -> None:
        from blocklayer.jobs import qmp_commands as jobs
        args = {k.replace("-", "_"): v for k, v in self.args.items()}
        self.job = await jobs.prepare_backup(self.daemon, txn=self.txn, **args)

    async def commit(self) -> None:
        from blocklayer.jobs import qmp_commands as jobs
        await jobs.start_backup(self.daemon, self.job, hold=True)


    async def abort(self) -> None:
        from blocklayer.jobs import qmp_commands as jobs
        await jobs.abort_backup(self.job)


#: drive-backup opens its target itself (not yet)
NOT_YET = ("drive-backup",)

ACTIONS: dict[str, Any] = {
    "abort": Abort,
    **bitmapcmds.ACTIONS,
    "blockdev-snapshot": snapshots.ExternalSnapshot,
    "blockdev-snapshot-sync": snapshots.ExternalSnapshotSync,
    "blockdev-snapshot-internal-sync": snapshots.InternalSnapshot,
    "blockdev-backup": Backup,
}


async def transaction(ctx: Context, args: dict[str, Any]) -> None:
    mode = args.get("properties", {}).get("completion-mode", "individual")
    actions = []
    from blocklayer.jobs.job import JobTxn
    txn = JobTxn() if mode == "grouped" else None
    for item in args["actions"]:
        kind = item["type"]
        if kind in NOT_YET:
            raise CommandError(f"Action '{kind}' is not supported by "
                               "blocklayer-storage-daemon yet")
        action = ACTIONS[kind](ctx.app, item["data"])
        if mode != "individual":
            if not isinstance(action, Backup):
                raise CommandError(f"Action '{kind}' does not support Transaction "
                                   f"property completion-mode = {mode}")
            action.txn = txn
        actions.append(action)
    done: list[Any] = []
    try:
        for action in actions:
            await action.prepare()
            done.append(action)
    except (BlockError, CommandError) as exc:
        for action in reversed(done):
            await action.abort()
        if isinstance(exc, BlockError):
            raise CommandError(exc.message) from exc
        raise
    for action in actions:
        await action.commit()
    held = [a.job for a in actions if isinstance(a, Backup)]
    if held:                 # the drained section ends: the backups run
        from blocklayer.jobs import qmp_commands as jobs
        await jobs.release_backups(held)


HANDLERS = {"transaction": transaction}
