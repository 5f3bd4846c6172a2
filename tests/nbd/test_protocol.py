"""The sans-I/O NBD machines in memory: handshakes, the state table, malformed input."""
from __future__ import annotations

import asyncio
import itertools
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from blocklayer.core.driver import Limits
from blocklayer.core.open import open_image
from blocklayer.nbd import events as ev
from blocklayer.nbd import wire
from blocklayer.nbd.events import CLIENT, NEED_DATA, SERVER
from blocklayer.nbd.export import Export
from blocklayer.nbd.protocol import (
    TRANSITIONS, Connection, LocalProtocolError, RemoteProtocolError, State, transition,
)
from blocklayer.nbd.wire import Cmd, CmdFlag, Errno, InfoType, Opt, Rep

from .memory import Pair, drain

SIZE = 1 << 20


def fake_export(name: str = "", **kw: Any) -> Export:
    node: Any = SimpleNamespace(total_bytes=SIZE, limits=Limits())
    return Export(name, node, **kw)


def exports(**kw: Any) -> dict[str, Export]:
    return {"": fake_export("", **kw), "other": fake_export("other", description="two")}


# -- handshakes ----------------------------------------------------------------------

def test_go_negotiates_the_same_on_both_sides() -> None:
    pair = Pair(exports(allocation_depth=True))
    got = pair.go("", ("base:allocation", "qemu:allocation-depth"))
    assert got[-1] == ev.OptionAck()
    infos = [e.info for e in got if isinstance(e, ev.InfoReply)]
    assert wire.InfoBlockSize(1, 4096, wire.MAX_PAYLOAD) in infos
    for conn in (pair.client, pair.server):
        assert conn.state is State.TRANSMISSION
        assert conn.structured_replies
        assert conn.meta_contexts == {0: "base:allocation", 1: "qemu:allocation-depth"}
        assert conn.export_size == SIZE
        assert conn.export_flags == 0xded & ~0x100   # qemu-nbd's flags, no multi-conn


OPTIONS = [
    ev.StructuredReplyOption(),
    ev.ListOption(),
    ev.InfoOption("other", (InfoType.NAME, InfoType.BLOCK_SIZE)),
    ev.ListMetaContextOption("", ()),
    ev.SetMetaContextOption("", ("base:allocation",)),
    ev.UnknownOption(42),
]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(OPTIONS)), 4)))
def test_options_in_any_order(order: tuple[int, ...]) -> None:
    pair = Pair(exports())
    structured = False
    for i in order:
        option = OPTIONS[i]
        got = pair.option(option)
        final = got[-1]
        assert isinstance(final, (ev.OptionAck, ev.OptionError))
        assert pair.client.state is pair.server.state is State.OPTIONS
        if isinstance(option, ev.StructuredReplyOption):
            structured = True
        meta = isinstance(option, (ev.ListMetaContextOption, ev.SetMetaContextOption))
        if meta and not structured or isinstance(option, ev.UnknownOption):
            assert isinstance(final, ev.OptionError)
        if isinstance(option, ev.ListOption):
            assert got[:-1] == [ev.ServerReply("", ""), ev.ServerReply("other", "two")]
        assert pair.client.meta_contexts == pair.server.meta_contexts
    assert pair.option(ev.GoOption(""))[-1] == ev.OptionAck()
    assert pair.client.state is pair.server.state is State.TRANSMISSION
    assert pair.client.structured_replies is pair.server.structured_replies is structured
    assert pair.client.meta_contexts == pair.server.meta_contexts


def test_meta_contexts_dropped_when_go_names_another_export() -> None:
    pair = Pair(exports())
    pair.option(ev.StructuredReplyOption())
    pair.option(ev.SetMetaContextOption("other", ("base:allocation",)))
    assert pair.client.meta_contexts == {0: "base:allocation"}
    pair.option(ev.GoOption(""))
    assert pair.client.meta_contexts == pair.server.meta_contexts == {}


def test_list_meta_contexts_as_qemu_nbd() -> None:
    pair = Pair(exports(allocation_depth=True, bitmaps=("b0", "b1")))
    pair.option(ev.StructuredReplyOption())
    every = [ev.MetaContextReply(0, n) for n in (
        "base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0",
        "qemu:dirty-bitmap:b1")] + [ev.OptionAck()]
    assert pair.option(ev.ListMetaContextOption("", ())) == every
    assert pair.option(ev.ListMetaContextOption("", ("qemu:", "base:"))) == every
    assert pair.option(ev.ListMetaContextOption("", ("qemu:dirty-bitmap:",))) == every[2:]
    assert pair.option(ev.ListMetaContextOption("", ("x:y", "base:nope"))) == every[-1:]
    got = pair.option(ev.SetMetaContextOption("", ("qemu:dirty-bitmap:b1", "qemu:",
                                                   "base:allocation")))
    assert got == [ev.MetaContextReply(0, "base:allocation"),
                   ev.MetaContextReply(3, "qemu:dirty-bitmap:b1"), ev.OptionAck()]
    assert pair.option(ev.SetMetaContextOption("nope", ())) == [
        ev.OptionError(Rep.ERR_UNKNOWN, "export 'nope' not present")]
    assert pair.client.meta_contexts == pair.server.meta_contexts == {}


def test_option_errors_as_qemu_nbd() -> None:
    pair = Pair(exports())
    assert pair.option(ev.InfoOption("nope")) == [
        ev.OptionError(Rep.ERR_UNKNOWN, "export 'nope' not present")]
    assert pair.option(ev.StartTLSOption()) == [
        ev.OptionError(Rep.ERR_POLICY, "TLS not configured")]
    assert pair.option(ev.UnknownOption(Opt.PEEK_EXPORT)) == [
        ev.OptionError(Rep.ERR_UNSUP, "Unsupported option 4 (peek export)")]
    assert pair.option(ev.SetMetaContextOption("", ("base:allocation",))) == [
        ev.OptionError(Rep.ERR_INVALID, "request option 'set meta context' when "
                                        "structured reply is not negotiated")]
    pair.option(ev.StructuredReplyOption())
    assert pair.option(ev.StructuredReplyOption()) == [
        ev.OptionError(Rep.ERR_INVALID, "structured reply already negotiated")]
    got = pair.option(ev.InfoOption("other"))
    assert got[-1] == ev.OptionAck()
    assert ev.InfoReply(wire.InfoDescription("two")) in got
    assert pair.option(ev.GoOption("nope"))[-1].reply == Rep.ERR_UNKNOWN
    assert pair.option(ev.AbortOption()) == [ev.OptionAck()]
    assert pair.client.state is pair.server.state is State.CLOSED


def test_block_size_required_for_info_on_an_aligned_export() -> None:
    export = fake_export()
    export.node.limits = Limits(request_alignment=512)
    pair = Pair({"": export})
    got = pair.option(ev.InfoOption(""))
    assert got[-1] == ev.OptionError(Rep.ERR_BLOCK_SIZE_REQD,
                                     "request NBD_INFO_BLOCK_SIZE to use this export")
    assert ev.InfoReply(wire.InfoBlockSize(512, 4096, wire.MAX_PAYLOAD)) in got
    got = pair.option(ev.GoOption(""))            # GO without: minimum 1
    assert ev.InfoReply(wire.InfoBlockSize(1, 4096, wire.MAX_PAYLOAD)) in got
    assert pair.client.state is State.TRANSMISSION


@pytest.mark.parametrize("no_zeroes", [False, True])
def test_export_name(no_zeroes: bool) -> None:
    flags = wire.ClientFlag.FIXED_NEWSTYLE | (wire.ClientFlag.NO_ZEROES if no_zeroes else 0)
    pair = Pair(exports(readonly=True), flags=flags)
    data = pair.client.send(ev.ExportNameOption(""))
    pair.server.receive_data(data)
    (event,) = drain(pair.server)
    (reply,) = pair.session.answer_option(event)
    raw = pair.server.send(reply)
    assert len(raw) == 10 + (0 if no_zeroes else 124)
    pair.client.receive_data(raw)
    assert drain(pair.client) == [ev.ExportInfo(SIZE, 0x40f)]
    assert pair.client.state is State.TRANSMISSION


def test_export_name_of_unknown_export_drops_the_client() -> None:
    pair = Pair(exports())
    pair.server.receive_data(pair.client.send(ev.ExportNameOption("nope")))
    assert pair.session.answer_option(drain(pair.server)[0]) == []


def test_non_fixed_newstyle_client_may_only_send_export_name() -> None:
    pair = Pair(exports(), flags=0)
    pair.server.receive_data(pair.client.send(ev.ListOption()))
    with pytest.raises(RemoteProtocolError, match="non-fixed"):
        drain(pair.server)


def test_starttls_then_negotiation_starts_afresh() -> None:
    pair = Pair(exports())
    pair.session.tls = True
    assert pair.option(ev.ListOption()) == [
        ev.OptionError(Rep.ERR_TLS_REQD, "Option 0x3 not permitted before TLS")]
    assert pair.option(ev.StartTLSOption()) == [ev.OptionAck()]
    assert pair.client.state is pair.server.state is State.TLS_HANDSHAKE
    for conn in (pair.client, pair.server):
        with pytest.raises(LocalProtocolError):
            conn.send(ev.ListOption() if conn is pair.client else ev.OptionAck())
        conn.tls_established()
    pair.session.tls_done = True
    assert pair.go("")[-1] == ev.OptionAck()


def test_plaintext_behind_starttls_is_discarded() -> None:
    pair = Pair(exports())
    pair.session.tls = True
    data = pair.client.send(ev.StartTLSOption())
    injected = wire.OptionHeader(Opt.STRUCTURED_REPLY, 0).build()
    pair.server.receive_data(data + injected)
    (event,) = [e for e in [pair.server.next_event()]]
    assert isinstance(event, ev.StartTLSOption)
    pair.server.send(pair.session.answer_option(event)[0])
    pair.server.tls_established()
    assert pair.server.next_event() is NEED_DATA
    assert not pair.server.structured_replies


# -- the state table -----------------------------------------------------------------

EVENTS: list[ev.Event] = [
    ev.Greeting(3), ev.ClientFlags(3), ev.ExportNameOption(""), ev.AbortOption(),
    ev.ListOption(), ev.StartTLSOption(), ev.InfoOption(""), ev.GoOption(""),
    ev.StructuredReplyOption(), ev.ListMetaContextOption(""),
    ev.SetMetaContextOption(""), ev.UnknownOption(99), ev.OptionAck(),
    ev.OptionError(Rep.ERR_UNSUP), ev.ServerReply("x"),
    ev.InfoReply(wire.InfoExport(SIZE, 1)), ev.MetaContextReply(0, "base:allocation"),
    ev.ExportInfo(SIZE, 1), ev.Request(Cmd.FLUSH, 7), ev.Disconnect(),
    ev.SimpleReply(7), ev.ReplyDone(7), ev.ErrorReply(7, Errno.EIO),
]


def test_table_names_every_state() -> None:
    assert set(TRANSITIONS) == set(State)


@pytest.mark.parametrize("state", list(State))
def test_every_wrong_state_call_is_refused(state: State) -> None:
    for event in EVENTS:
        sender = type(event).SENDER
        assert sender is not None
        allowed = type(event) in TRANSITIONS[state]
        conn = Connection(sender)
        conn.state = state
        conn.in_flight[7] = _flush_in_flight()
        conn.option = ev.InfoOption("")
        if allowed:
            continue
        with pytest.raises(LocalProtocolError):
            conn.send(event)
        assert conn.state is state
        with pytest.raises(RemoteProtocolError):
            transition(state, type(event), SERVER if sender is CLIENT else CLIENT,
                       sending=False)


def _flush_in_flight() -> Any:
    from blocklayer.nbd.protocol import InFlight
    return InFlight(Cmd.FLUSH, 0, 0, 0)


def test_a_side_cannot_send_the_other_sides_events() -> None:
    for event in EVENTS:
        other = CLIENT if type(event).SENDER is SERVER else SERVER
        conn = Connection(other)
        for state in State:
            conn.state = state
            with pytest.raises(LocalProtocolError):
                conn.send(event)


def test_machine_made_events_cannot_be_sent() -> None:
    conn = Connection(SERVER)
    conn.state = State.OPTIONS
    with pytest.raises(LocalProtocolError):
        conn.send(ev.BadOption(Opt.INFO, "x"))
    conn.state = State.TRANSMISSION
    with pytest.raises(LocalProtocolError):
        conn.send(ev.InvalidRequest(1, Cmd.READ, Errno.EINVAL, "x"))


def transmission(**kw: Any) -> Pair:
    pair = Pair(exports(**kw))
    pair.go("", ("base:allocation",))
    return pair


def test_client_refuses_requests_the_export_does_not_take() -> None:
    pair = transmission(readonly=True)
    client = pair.client
    bad = [
        client.request(Cmd.WRITE, 0, data=b"x"),              # read-only
        client.request(Cmd.TRIM, 0, 512),                     # not advertised
        client.request(Cmd.READ, SIZE - 1, 2),                # past the end
        client.request(Cmd.READ, 0, 512, CmdFlag.REQ_ONE),    # flag of another command
        client.request(Cmd.READ, 0, wire.MAX_PAYLOAD + 1),    # over the maximum
        client.request(Cmd.BLOCK_STATUS, 0, 0),               # empty block status
        client.request(42, 0, 0),                             # unknown command
        ev.Request(Cmd.WRITE, 9, 0, 4, 0, b"x"),              # payload and length differ
    ]
    for req in bad:
        with pytest.raises(LocalProtocolError):
            client.send(req)
    req = client.request(Cmd.READ, 0, 512)
    client.send(req)
    with pytest.raises(LocalProtocolError, match="in flight"):
        client.send(ev.Request(Cmd.READ, req.cookie, 0, 512))


def test_server_refuses_replies_that_do_not_fit() -> None:
    pair = transmission()
    pair.to_server(pair.client.request(Cmd.READ, 4096, 4096))
    cookie = next(iter(pair.server.in_flight))
    server = pair.server
    for reply in [ev.SimpleReply(cookie + 1), ev.ReadData(cookie, 0, b"x"),
                  ev.ReadHole(cookie, 4096, 8192), ev.SimpleReply(cookie, 0, b"x" * 4096),
                  ev.BlockStatusReply(cookie, 0, (wire.Extent(1, 0),))]:
        with pytest.raises(LocalProtocolError):
            server.send(reply)
    server.send(ev.ReadHole(cookie, 4096, 4096, done=True))
    with pytest.raises(LocalProtocolError):
        server.send(ev.ReplyDone(cookie))


# -- malformed input -----------------------------------------------------------------

def _fresh_server(state: State = State.OPTIONS) -> Connection:
    conn = Connection(SERVER)
    conn.send(ev.Greeting(3))
    conn.receive_data(struct.pack(">I", 3))
    assert isinstance(conn.next_event(), ev.ClientFlags)
    return conn


def _garbage_server() -> list[tuple[str, Connection, bytes]]:
    cases = []
    cases.append(("client flags", Connection(SERVER), struct.pack(">I", 0x80)))
    cases[-1][1].send(ev.Greeting(3))
    cases.append(("option magic", _fresh_server(), b"X" * 16))
    cases.append(("export name length",
                  _fresh_server(), wire.OptionHeader(Opt.EXPORT_NAME, 5000).build()))
    pair = transmission()
    cases.append(("request magic", pair.server, b"\0" * 28))
    pair = transmission()
    req = wire.RequestHeader(0, Cmd.READ, 5, 0, 512).build()
    pair.server.receive_data(req)
    drain(pair.server)
    cases.append(("cookie in flight", pair.server, req))
    return cases


@pytest.mark.parametrize("what", [c[0] for c in _garbage_server()])
def test_garbage_to_a_server_is_a_remote_error(what: str) -> None:
    (_, conn, data), = [c for c in _garbage_server() if c[0] == what]
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError):
        drain(conn)
    assert conn.state is State.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_malformed_option_data_gets_an_error_reply() -> None:
    server = _fresh_server()
    for option, data in [(Opt.INFO, b"\0\0\0\x09abc"), (Opt.GO, b"\0\0\0\0\0\x05"),
                         (Opt.SET_META_CONTEXT, b"\0\0\0\0\xff\xff\xff\xff"),
                         (Opt.LIST, b"x")]:
        server.receive_data(wire.OptionHeader(option, len(data)).build() + data)
        (event,) = drain(server)
        assert isinstance(event, ev.BadOption) and event.reply == Rep.ERR_INVALID
        server.send(ev.OptionError(event.reply, event.message))
        assert server.state is State.OPTIONS


def test_oversized_options_are_skipped_not_buffered() -> None:
    server = _fresh_server()
    n = 10 * 1024 * 1024
    server.receive_data(wire.OptionHeader(Opt.SET_META_CONTEXT, n).build())
    chunk = bytes(65536)
    for _ in range(n // len(chunk) - 1):
        server.receive_data(chunk)
        assert server.next_event() is NEED_DATA
        assert server.buffered == 0
    server.receive_data(chunk)
    (event,) = drain(server)
    assert event == ev.BadOption(Opt.SET_META_CONTEXT, "option too long", Rep.ERR_TOO_BIG)
    server.send(ev.OptionError(event.reply, event.message))
    server.receive_data(wire.OptionHeader(77, n).build() + bytes(n))
    assert drain(server) == [ev.UnknownOption(77, n)]


def test_oversized_write_is_refused_before_its_payload() -> None:
    pair = transmission()
    pair.server.receive_data(wire.RequestHeader(0, Cmd.WRITE, 1, 0, 1 << 30).build()
                             + b"x" * 100)
    (event,) = drain(pair.server)
    assert event == ev.InvalidRequest(1, Cmd.WRITE, Errno.EINVAL,
                                      "len (1073741824) is larger than max len (33554432)",
                                      fatal=True)
    assert pair.server.next_event() is NEED_DATA     # nothing more is read
    pair.server.send(pair.session.refuse(event))
    assert pair.server.state is State.CLOSED


def test_truncated_request_at_eof_is_a_remote_error() -> None:
    pair = transmission()
    pair.server.receive_data(wire.RequestHeader(0, Cmd.WRITE, 1, 0, 4096).build() + b"x")
    assert pair.server.next_event() is NEED_DATA
    pair.server.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle"):
        pair.server.next_event()


def test_eof_between_messages_is_connection_closed() -> None:
    pair = transmission()
    pair.server.receive_data(b"")
    assert drain(pair.server) == [ev.ConnectionClosed()]
    assert pair.server.state is State.CLOSED


def _client_in_transmission(structured: bool = True) -> tuple[Pair, int]:
    pair = Pair(exports())
    pair.go("", ("base:allocation",) if structured else (), structured=structured)
    req = pair.client.request(Cmd.READ, 4096, 4096)
    pair.to_server(req)
    return pair, req.cookie


def _bad_replies(cookie: int) -> dict[str, bytes]:
    def chunk(kind: int, payload: bytes, flags: int = 1, c: int = cookie) -> bytes:
        return wire.ChunkHeader(flags, kind, c, len(payload)).build() + payload
    return {
        "magic": b"\x12\x34\x56\x78" + bytes(16),
        "unknown cookie": wire.SimpleReplyHeader(0, cookie + 100).build(),
        "unknown chunk type": chunk(77, b""),
        "data outside the request": chunk(1, struct.pack(">Q", 0) + b"x"),
        "hole outside the request": chunk(2, struct.pack(">QI", 4096, 8192)),
        "oversized data chunk": wire.ChunkHeader(1, 1, cookie, 1 << 30).build(),
        "block status to a read": chunk(5, struct.pack(">III", 0, 4096, 0)),
        "none without done": chunk(0, b"", flags=0),
        "error chunk too long": wire.ChunkHeader(1, 0x8001, cookie, 100000).build(),
        "error 0": chunk(0x8001, struct.pack(">IH", 0, 0)),
    }


@pytest.mark.parametrize("what", list(_bad_replies(0)))
def test_garbage_to_a_client_is_a_remote_error(what: str) -> None:
    pair, cookie = _client_in_transmission()
    pair.client.receive_data(_bad_replies(cookie)[what])
    with pytest.raises(RemoteProtocolError):
        drain(pair.client)
    assert pair.client.state is State.ERROR


def test_structured_chunk_without_negotiation_is_a_remote_error() -> None:
    pair, cookie = _client_in_transmission(structured=False)
    pair.client.receive_data(wire.ChunkHeader(1, 0, cookie, 0).build())
    with pytest.raises(RemoteProtocolError, match="structured"):
        drain(pair.client)


def test_unknown_error_chunk_fails_the_request() -> None:
    pair, cookie = _client_in_transmission()
    payload = struct.pack(">IH", Errno.EIO, 0)
    pair.client.receive_data(wire.ChunkHeader(1, 0x8003, cookie, len(payload)).build()
                             + payload)
    (event,) = drain(pair.client)
    assert isinstance(event, ev.ErrorReply) and event.error == Errno.EIO
    assert event.chunk_type == 0x8003 and event.done
    assert not pair.client.in_flight


def test_client_garbage_in_handshake() -> None:
    client = Connection(CLIENT)
    client.receive_data(b"NBDMAGIC" + b"\0" * 10)
    with pytest.raises(RemoteProtocolError, match="oldstyle"):
        client.next_event()
    pair = Pair(exports())
    pair.client.send(ev.ListOption())
    pair.client.receive_data(wire.OptionReplyHeader(Opt.INFO, Rep.ACK, 0).build())
    with pytest.raises(RemoteProtocolError, match="option 6"):
        pair.client.next_event()
    pair = Pair(exports())
    pair.client.send(ev.ListOption())
    pair.client.receive_data(wire.OptionReplyHeader(Opt.LIST, Rep.INFO, 12).build()
                             + wire.InfoExport(1, 1).build())
    with pytest.raises(RemoteProtocolError, match="InfoReply not allowed"):
        pair.client.next_event()
    pair = Pair(exports())
    pair.client.send(ev.GoOption(""))
    pair.client.receive_data(wire.OptionReplyHeader(Opt.GO, Rep.ACK, 0).build())
    with pytest.raises(RemoteProtocolError, match="NBD_INFO_EXPORT missing"):
        pair.client.next_event()


# -- requests through the session and a node -----------------------------------------

async def _open(path: Path, **kw: Any) -> Any:
    return await open_image(str(path), fmt="raw", **kw)


def test_requests_refused_as_qemu_nbd(tmp_path: Path) -> None:
    path = tmp_path / "d.raw"
    with open(path, "wb") as f:
        f.truncate(SIZE)

    async def main() -> None:
        node = await _open(path, read_only=True)
        try:
            pair = Pair({"": Export("", node, readonly=True)})
            pair.go("", ("base:allocation",))
            hdr = wire.RequestHeader(0, Cmd.WRITE, 1, 0, 4).build() + b"abcd"
            pair.server.receive_data(hdr)
            (refused,) = drain(pair.server)
            assert refused == ev.InvalidRequest(1, Cmd.WRITE, Errno.EINVAL,
                                                "Export is read-only")
            pair.client.in_flight[1] = _flush_in_flight()
            assert pair.to_client(pair.session.refuse(refused)) == [
                ev.ErrorReply(1, Errno.EINVAL, "Export is read-only")]
            for header, message in [
                ((0, Cmd.READ, 2, SIZE, 1), f"operation past EOF; From: {SIZE}, Len: 1, "
                                            f"Size: {SIZE}"),
                ((CmdFlag.NO_HOLE, Cmd.READ, 3, 0, 1),
                 "unsupported flags for command read (got 0x2)"),
                ((0x40, Cmd.READ, 6, 0, 1),
                 "unsupported flags for command read (got 0x40)"),
                ((0, 9, 4, 0, 0), "invalid request type (9) received"),
                ((0, Cmd.BLOCK_STATUS, 5, 0, 0), "need non-zero length"),
            ]:
                pair.server.receive_data(wire.RequestHeader(*header).build())
                (refused,) = drain(pair.server)
                assert isinstance(refused, ev.InvalidRequest)
                assert refused.message == message
                pair.server.send(pair.session.refuse(refused))
            got = await pair.call(pair.client.request(Cmd.READ, 0, 8192))
            assert got == [ev.ReadHole(got[0].cookie, 0, 8192, True)]
        finally:
            await node.close()

    asyncio.run(main())
