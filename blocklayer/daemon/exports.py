"""Where the daemon meets the NBD server (``blocklayer/nbd/server.py``, wired by the lead).

:class:`ExportHooks` is the interface: the daemon validates every call against the
schema and then calls one of these methods with the validated arguments (QMP names).
:class:`NoExports` is the stand-in until the NBD server is wired: it refuses with a
clear error and reports no exports.
"""
from __future__ import annotations

from typing import Any, Protocol

from blocklayer.qmp.protocol import CommandError


class ExportHooks(Protocol):
    async def nbd_server_start(self, daemon: Any, args: dict[str, Any]) -> None:
        """``nbd-server-start`` (addr is SocketAddressLegacy) or ``--nbd-server`` (the
        flat SocketAddress form, converted to the legacy one by the daemon)."""

    async def nbd_server_stop(self, daemon: Any) -> None: ...

    async def nbd_server_add(self, daemon: Any, args: dict[str, Any]) -> None: ...

    async def nbd_server_remove(self, daemon: Any, args: dict[str, Any]) -> None: ...

    async def block_export_add(self, daemon: Any, args: dict[str, Any]) -> None:
        """``block-export-add`` or ``--export``: BlockExportOptions."""

    async def block_export_del(self, daemon: Any, args: dict[str, Any]) -> None:
        """Must emit ``BLOCK_EXPORT_DELETED {id}`` through ``daemon.emit`` when done."""

    def query_block_exports(self, daemon: Any) -> list[dict[str, Any]]: ...

    async def shutdown(self, daemon: Any) -> None:
        """Close every export and the server (daemon exit)."""


class NoExports:
    """No NBD server wired in yet: every export command fails, none exist."""

    NOT_WIRED = "NBD exports are not available in this build of blocklayer-storage-daemon"

    async def nbd_server_start(self, daemon: Any, args: dict[str, Any]) -> None:
        raise CommandError(self.NOT_WIRED)

    async def nbd_server_stop(self, daemon: Any) -> None:
        raise CommandError("NBD server not running")

    async def nbd_server_add(self, daemon: Any, args: dict[str, Any]) -> None:
        raise CommandError("NBD server not running")

    async def nbd_server_remove(self, daemon: Any, args: dict[str, Any]) -> None:
        raise CommandError("NBD server not running")

    async def block_export_add(self, daemon: Any, args: dict[str, Any]) -> None:
        raise CommandError(self.NOT_WIRED)

    async def block_export_del(self, daemon: Any, args: dict[str, Any]) -> None:
        raise CommandError(f"Export '{args['id']}' is not found")

    def query_block_exports(self, daemon: Any) -> list[dict[str, Any]]:
        return []

    async def shutdown(self, daemon: Any) -> None:
        return None


def make_exports() -> ExportHooks:
    """The daemon's export implementation.  WIRING POINT: return the NBD server's
    ExportHooks here once ``blocklayer/nbd/server.py`` provides one."""
    return NoExports()
