"""The QMP server protocol, sans I/O (docs/interop/qmp-spec.rst, as QSD 7.2 speaks it).

Bytes go in (:meth:`ServerConnection.receive_data`) and events come out: a
:class:`Command` to dispatch, or a :class:`Rejected` input that already carries QEMU's
error.  Replies and events go in (:meth:`reply`, :meth:`error`, :meth:`event`) and bytes
come out.  The connection never touches a socket.

The states and what each input does to them are one table, :data:`TRANSITIONS`, checked
by :func:`transition`; a misuse by the local side raises :class:`LocalProtocolError`.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from . import qjson

CRLF = b"\r\n"
NEGOTIATION_REQUIRED = "Expecting capabilities negotiation with 'qmp_capabilities'"


class QMPError(Exception):
    """Root of the QMP package's errors."""


class LocalProtocolError(QMPError):
    """The local side used the connection in a way its state does not allow."""


class CommandError(QMPError):
    """A command failed: becomes ``{"error": {"class", "desc"}}`` on the wire."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class


class State(enum.Enum):
    GREETING = "greeting"          # nothing sent yet
    NEGOTIATION = "negotiation"    # greeting sent; only qmp_capabilities works
    COMMAND = "command"            # capabilities negotiated
    CLOSED = "closed"


class Input(enum.Enum):
    SEND_GREETING = "send greeting"
    NEGOTIATE = "negotiate"
    COMMAND = "command"            # a reply or a command received
    EVENT = "event"
    CLOSE = "close"


#: state x input -> next state; a missing pair is a local protocol error
TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.GREETING, Input.SEND_GREETING): State.NEGOTIATION,
    (State.GREETING, Input.CLOSE): State.CLOSED,
    (State.NEGOTIATION, Input.COMMAND): State.NEGOTIATION,
    (State.NEGOTIATION, Input.NEGOTIATE): State.COMMAND,
    (State.NEGOTIATION, Input.EVENT): State.NEGOTIATION,       # dropped, as QEMU does
    (State.NEGOTIATION, Input.CLOSE): State.CLOSED,
    (State.COMMAND, Input.COMMAND): State.COMMAND,
    (State.COMMAND, Input.EVENT): State.COMMAND,
    (State.COMMAND, Input.CLOSE): State.CLOSED,
    (State.CLOSED, Input.CLOSE): State.CLOSED,
}


def transition(state: State, what: Input) -> State:
    """The state after ``what`` happens in ``state``; raises LocalProtocolError."""
    try:
        return TRANSITIONS[(state, what)]
    except KeyError:
        raise LocalProtocolError(f"cannot {what.value} in state {state.value}") from None


# ---- events out of the connection ---------------------------------------------------------
@dataclass
class Command:
    """A well-formed command to dispatch; ``arguments`` not yet validated."""

    name: str
    arguments: dict[str, Any]
    id: Any = None
    has_id: bool = False
    oob: bool = False


@dataclass
class Rejected:
    """Input refused before dispatch; reply with :meth:`ServerConnection.error`."""

    error: CommandError
    id: Any = None
    has_id: bool = False


Event = Command | Rejected


@dataclass
class ServerConnection:
    """One monitor's side of one QMP connection."""

    version: dict[str, Any]
    capabilities: list[str] = field(default_factory=lambda: ["oob"])
    max_message: int = qjson.MAX_TOKEN_SIZE
    state: State = State.GREETING
    enabled: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._streamer = qjson.Streamer(self.max_message)

    def _go(self, what: Input) -> None:
        self.state = transition(self.state, what)

    # ---- output ---------------------------------------------------------------------------
    def greeting(self) -> bytes:
        self._go(Input.SEND_GREETING)
        return _frame({"QMP": {"version": self.version, "capabilities": self.capabilities}})

    def negotiate(self, enable: list[str]) -> None:
        """qmp_capabilities succeeded: enter command mode with these capabilities."""
        for cap in enable:
            if cap not in self.capabilities:
                raise CommandError(f"Capability '{cap}' not available")
        self._go(Input.NEGOTIATE)
        self.enabled = set(enable)

    def reply(self, cmd: Command, value: Any) -> bytes:
        self._go(Input.COMMAND)
        return _frame(_with_id({"return": value}, cmd))

    def error(self, cmd: Command | Rejected, err: CommandError) -> bytes:
        self._go(Input.COMMAND)
        desc = err.desc
        if self.state is State.NEGOTIATION and err.error_class == "CommandNotFound":
            desc = NEGOTIATION_REQUIRED
        return _frame(_with_id({"error": {"class": err.error_class, "desc": desc}}, cmd))

    def event(self, name: str, data: dict[str, Any] | None = None,
              timestamp: float | None = None) -> bytes:
        """An asynchronous event; nothing while negotiating (QEMU does not deliver)."""
        self._go(Input.EVENT)
        if self.state is not State.COMMAND:
            return b""
        return _frame(event_message(name, data, timestamp))

    def close(self) -> None:
        self._go(Input.CLOSE)

    # ---- input ----------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        if self.state is State.CLOSED:
            raise LocalProtocolError("cannot receive data in state closed")
        return [self._message(item) for item in self._streamer.feed(data)]

    def _message(self, item: Any) -> Event:
        if isinstance(item, qjson.JSONParseError):
            return Rejected(CommandError(item.desc))
        if not isinstance(item, dict):
            return Rejected(CommandError("QMP input must be a JSON object"))
        has_id = "id" in item
        ident = item.get("id")
        try:
            name, oob = self._check_members(item)
        except CommandError as err:
            return Rejected(err, ident, has_id)
        return Command(name, item.get("arguments", {}), ident, has_id, oob)

    def _check_members(self, msg: dict[str, Any]) -> tuple[str, bool]:
        """QEMU's qmp_dispatch_check_obj: members judged in QDict order."""
        allow_oob = "oob" in self.enabled
        exec_key = None
        for key in qjson.qdict_order(list(msg)):
            value = msg[key]
            if key == "execute" or (key == "exec-oob" and allow_oob):
                if not isinstance(value, str):
                    raise CommandError(f"QMP input member '{key}' must be a string")
                if exec_key is not None:
                    raise CommandError(f"QMP input member '{key}' clashes with '{exec_key}'")
                exec_key = key
            elif key == "arguments":
                if not isinstance(value, dict):
                    raise CommandError("QMP input member 'arguments' must be an object")
            elif key != "id":
                raise CommandError(f"QMP input member '{key}' is unexpected")
        if exec_key is None:
            raise CommandError("QMP input lacks member 'execute'")
        return msg[exec_key], exec_key == "exec-oob"


def _with_id(msg: dict[str, Any], cmd: Command | Rejected) -> dict[str, Any]:
    if cmd.has_id:
        msg["id"] = cmd.id
    return msg


def _frame(msg: dict[str, Any]) -> bytes:
    return qjson.dumps(msg).encode("ascii") + CRLF


def event_message(name: str, data: dict[str, Any] | None = None,
                  timestamp: float | None = None) -> dict[str, Any]:
    """QEMU's event shape: ``timestamp`` as seconds and microseconds of the wall clock."""
    now = time.time() if timestamp is None else timestamp
    seconds = int(now)
    msg: dict[str, Any] = {"event": name}
    if data is not None:
        msg["data"] = data
    msg["timestamp"] = {"seconds": seconds,
                        "microseconds": round((now - seconds) * 1e6) % 1000000}
    return msg
