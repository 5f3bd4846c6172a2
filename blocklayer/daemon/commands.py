"""The daemon's command table: every handler module contributes ``HANDLERS``."""
from __future__ import annotations

from blocklayer.qmp.dispatch import Dispatcher
from blocklayer.qmp.schema import Schema


def build_dispatcher(schema: Schema) -> Dispatcher:
    from . import control, exportcmds, nodes, objects, query, snapshots
    dispatcher = Dispatcher(schema)
    for module in (control, nodes, snapshots, query, objects, exportcmds):
        dispatcher.add(module.HANDLERS)
    return dispatcher
