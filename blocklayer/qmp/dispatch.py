"""One dispatcher for every command: look the command up in the schema, validate its
arguments there (QEMU's texts), then call the handler registered under its name.

Handlers are plain ``async def handler(ctx, args)`` functions; ``args`` is the validated
arguments dict (member names as QMP spells them).  Errors raised on purpose
(:class:`CommandError`, or a :class:`blocklayer.core.errors.BlockError` carrying its QMP
class) become error replies; anything else is reported as a GenericError with its text,
never as a traceback on the wire.
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .protocol import Command, CommandError, Rejected, ServerConnection, State
from .schema import Schema

Handler = Callable[["Context", dict[str, Any]], Awaitable[Any]]


@dataclass
class Context:
    """What a handler may use: the application (the daemon) and the calling monitor."""

    app: Any
    monitor: ServerConnection


@dataclass
class Dispatcher:
    schema: Schema
    handlers: dict[str, Handler] = field(default_factory=dict)

    def register(self, name: str) -> Callable[[Handler], Handler]:
        if self.schema.command(name) is None:
            raise ValueError(f"{name} is not a command of the schema")

        def deco(fn: Handler) -> Handler:
            self.handlers[name] = fn
            return fn
        return deco

    def add(self, table: dict[str, Handler]) -> None:
        for name, fn in table.items():
            self.register(name)(fn)

    async def handle(self, conn: ServerConnection, event: Command | Rejected, app: Any) -> bytes:
        """The reply (bytes) to one input event."""
        if isinstance(event, Rejected):
            return conn.error(event, event.error)
        try:
            value = await self.call(conn, event, app)
        except CommandError as err:
            return conn.error(event, err)
        return conn.reply(event, value)

    async def call(self, conn: ServerConnection, cmd: Command, app: Any) -> Any:
        entity = self.schema.command(cmd.name)
        if entity is None or (conn.state is State.NEGOTIATION and cmd.name != "qmp_capabilities"):
            raise CommandError(f"The command {cmd.name} has not been found", "CommandNotFound")
        if cmd.oob and not entity.get("allow-oob"):
            raise CommandError(f"The command {cmd.name} does not support OOB")
        self.schema.check_arguments(cmd.name, cmd.arguments)
        handler = self.handlers.get(cmd.name)
        if handler is None:
            raise CommandError(f"Command '{cmd.name}' is not implemented by blocklayer yet")
        try:
            result = await handler(Context(app, conn), cmd.arguments)
        except CommandError:
            raise
        except Exception as exc:   # the edge: every failure becomes an error reply
            raise _as_command_error(exc) from exc
        return {} if result is None else result


def _as_command_error(exc: Exception) -> CommandError:
    from blocklayer.core.errors import BlockError
    if isinstance(exc, BlockError):
        return CommandError(exc.message, exc.qmp_class)
    if isinstance(exc, OSError):
        return CommandError(exc.strerror or str(exc))
    traceback.print_exception(exc, file=sys.stderr)
    return CommandError(str(exc) or type(exc).__name__)
