"""The daemon's command table: every handler module contributes ``HANDLERS``."""
from __future__ import annotations

from blocklayer.qmp.dispatch import Dispatcher
from blocklayer.qmp.schema import Schema


def build_dispatcher(schema: Schema) -> Dispatcher:
    from . import (
        bitmapcmds,
        control,
        exportcmds,
        jobcmds,
        nodes,
        objects,
        query,
        snapshots,
        transaction,
    )
    dispatcher = Dispatcher(schema)
    for module in (bitmapcmds, control, nodes, snapshots, query, objects, exportcmds,
                   transaction, jobcmds):
        dispatcher.add(module.HANDLERS)
    return dispatcher
