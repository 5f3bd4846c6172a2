"""The QMP core in memory: bytes in, events out, replies out (texts as QSD 7.2's)."""
from __future__ import annotations

import json

import pytest

from blocklayer.qmp import qjson
from blocklayer.qmp.dispatch import Dispatcher
from blocklayer.qmp.protocol import (
    TRANSITIONS,
    Command,
    CommandError,
    Input,
    LocalProtocolError,
    Rejected,
    ServerConnection,
    State,
    transition,
)
from blocklayer.qmp.schema import qsd_schema
from tests.conftest import run

VERSION = {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "test"}


def dispatcher() -> Dispatcher:
    from blocklayer.daemon import control
    d = Dispatcher(qsd_schema())
    d.add(control.HANDLERS)
    return d


class App:
    schema = qsd_schema()
    version = VERSION


def session(*inputs: bytes) -> list[bytes]:
    """Feed a fresh connection; every output message (greeting first)."""
    conn = ServerConnection(VERSION)
    d = dispatcher()
    out = [conn.greeting()]

    async def go() -> None:
        for data in inputs:
            for ev in conn.receive_data(data):
                out.append(await d.handle(conn, ev, App()))
    run(go())
    return out


def test_greeting_bytes() -> None:
    assert session()[0] == (b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, '
                            b'"major": 7}, "package": "test"}, "capabilities": ["oob"]}}\r\n')


def test_commands_before_negotiation_are_refused() -> None:
    out = session(b'{"execute":"query-version"}', b'{"execute":"nope","id":3}',
                  b'{"execute":"qmp_capabilities","id":1}',
                  b'{"execute":"qmp_capabilities","id":2}')
    want = b"Expecting capabilities negotiation with 'qmp_capabilities'"
    assert json.loads(out[1]) == {"error": {"class": "CommandNotFound", "desc": want.decode()}}
    assert json.loads(out[2])["error"]["desc"] == want.decode()
    assert out[3] == b'{"return": {}, "id": 1}\r\n'
    assert out[4] == (b'{"id": 2, "error": {"class": "CommandNotFound", "desc": "Capabilities '
                      b'negotiation is already complete, command ignored"}}\r\n')


NEG = b'{"execute":"qmp_capabilities"}'


@pytest.mark.parametrize("data, desc", [
    (b"[1]", "QMP input must be a JSON object"),
    (b'"a"', "QMP input must be a JSON object"),
    (b'{"foo":1}', "QMP input member 'foo' is unexpected"),
    (b"{bad}", "JSON parse error, invalid keyword 'bad'"),
    (b'{"execute":1}', "QMP input member 'execute' must be a string"),
    (b'{"execute":"blockdev-del","arguments":[]}', "QMP input member 'arguments' must be an object"),
    (b"{}", "QMP input lacks member 'execute'"),
    (b'{"execute":"nope"}', "The command nope has not been found"),
    (b'{"exec-oob":"query-version"}', "QMP input member 'exec-oob' is unexpected"),
    (b'{1:2}', "JSON parse error, key is not a string in object"),
    (b'{"a" 2}', "JSON parse error, missing : in object pair"),
    (b'{"a":1 "b":2}', "JSON parse error, expected separator in dict"),
    (b'{"a":1,"a":2}', "JSON parse error, duplicate key"),
    (b'[1 2]', "JSON parse error, expected separator in list"),
    (b'{"a":"\\x"}', "JSON parse error, invalid escape sequence in string"),
    (b"\x1b", "JSON parse error, stray '\x1b'"),
    (b"\xff", "JSON parse error, stray '\ufffd'"),
])
def test_malformed_input(data: bytes, desc: str) -> None:
    out = session(NEG, data)
    assert json.loads(out[2])["error"]["desc"] == desc


def test_ids_echoed_and_key_order() -> None:
    out = session(NEG, b'{"execute":"query-version","id":{"a":[1,2.5]}}',
                  b'{"execute":"blockdev-del","id":"x"}')
    assert out[2].startswith(b'{"return": {"qemu": ')
    assert out[2].endswith(b', "id": {"a": [1, 2.5]}}\r\n')
    assert out[3] == (b'{"id": "x", "error": {"class": "GenericError", "desc": "Parameter '
                      b'\'node-name\' is missing"}}\r\n')


def test_pipelined_and_split_messages() -> None:
    msgs = b"".join(b'{"execute":"query-version","id":%d}' % i for i in range(300))
    out = session(NEG, msgs[:1001], msgs[1001:])
    assert [json.loads(m)["id"] for m in out[2:]] == list(range(300))


def test_single_quotes_and_unicode() -> None:
    out = session(NEG, "{'execute':'n\u00e9\U0001F600'}".encode())
    assert out[2] == (b'{"error": {"class": "CommandNotFound", "desc": "The command '
                      b'n\\u00E9\\uD83D\\uDE00 has not been found"}}\r\n')


def test_huge_message_is_bounded() -> None:
    conn = ServerConnection(VERSION, max_message=4096)
    conn.greeting()
    events = conn.receive_data(b'{"execute":"x","arguments":{"a":"' + b"y" * 10000)
    assert [e.error.desc for e in events if isinstance(e, Rejected)] == \
        ["JSON token size limit exceeded"]
    assert conn._streamer.size == 0 and not conn._streamer.lexer.parts
    events = conn.receive_data(b'{"execute":"qmp_capabilities"}')
    assert [e.name for e in events if isinstance(e, Command)] == ["qmp_capabilities"]


def test_nesting_limit() -> None:
    out = session(NEG, b"[" * 1100 + b"]" * 1100)
    assert json.loads(out[2])["error"]["desc"] == "JSON nesting depth limit exceeded"


def test_events_only_after_negotiation() -> None:
    conn = ServerConnection(VERSION)
    conn.greeting()
    assert conn.event("BLOCK_EXPORT_DELETED", {"id": "e"}, 12.5) == b""
    conn.negotiate([])
    assert conn.event("BLOCK_EXPORT_DELETED", {"id": "e"}, 12.5) == (
        b'{"timestamp": {"seconds": 12, "microseconds": 500000}, "event": '
        b'"BLOCK_EXPORT_DELETED", "data": {"id": "e"}}\r\n')


def test_state_table() -> None:
    assert transition(State.GREETING, Input.SEND_GREETING) is State.NEGOTIATION
    with pytest.raises(LocalProtocolError):
        transition(State.COMMAND, Input.NEGOTIATE)
    conn = ServerConnection(VERSION)
    with pytest.raises(LocalProtocolError):
        conn.reply(Command("x", {}), {})
    conn.close()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"{}")
    assert all(isinstance(k[0], State) for k in TRANSITIONS)


def test_oob_capability() -> None:
    out = session(b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}',
                  b'{"exec-oob":"query-version","id":1}',
                  b'{"execute":"qmp_capabilities","arguments":{"enable":["x"]}}')
    assert json.loads(out[2])["error"]["desc"] == "The command query-version does not support OOB"


def test_qdict_order_matches_qemu() -> None:
    assert qjson.qdict_order(["return", "id"]) == ["return", "id"]
    assert qjson.qdict_order(["error", "id"]) == ["id", "error"]
    assert qjson.qdict_order(["major", "minor", "micro"]) == ["micro", "minor", "major"]
    assert qjson.qdict_order(["event", "data", "timestamp"]) == ["timestamp", "event", "data"]


def test_command_error_class() -> None:
    err = CommandError("x", "DeviceNotFound")
    conn = ServerConnection(VERSION)
    conn.greeting()
    conn.negotiate([])
    assert json.loads(conn.error(Command("y", {}), err)) == {
        "error": {"class": "DeviceNotFound", "desc": "x"}}
