"""A client machine and a server session connected in memory, without sockets."""
from __future__ import annotations

from collections.abc import Mapping

from blocklayer.nbd.events import (
    CLIENT, NEED_DATA, ClientFlags, Event, GoOption, InvalidRequest, Request,
    SetMetaContextOption, StructuredReplyOption,
)
from blocklayer.nbd.export import Export
from blocklayer.nbd.protocol import Connection, State
from blocklayer.nbd.session import ServerSession
from blocklayer.nbd.wire import ClientFlag, InfoType


def drain(conn: Connection) -> list[Event]:
    out: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return out
        out.append(event)          # type: ignore[arg-type]
        if conn.state is State.CLOSED:
            return out


class Pair:
    """One client talking to one server session; events cross as bytes."""

    def __init__(self, exports: Mapping[str, Export],
                 flags: int = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES) -> None:
        self.session = ServerSession(exports)
        self.server = self.session.conn
        self.client = Connection(CLIENT)
        assert self.to_client(self.session.greeting())
        assert self.to_server(ClientFlags(flags)) == [ClientFlags(flags)]

    def to_server(self, event: Event) -> list[Event]:
        self.server.receive_data(self.client.send(event))
        return drain(self.server)

    def to_client(self, event: Event) -> list[Event]:
        self.client.receive_data(self.server.send(event))
        return drain(self.client)

    def option(self, event: Event) -> list[Event]:
        """Send an option; the session answers; what the client received."""
        got = []
        for server_event in self.to_server(event):
            for reply in self.session.answer_option(server_event):
                got += self.to_client(reply)
        return got

    def go(self, name: str = "", contexts: tuple[str, ...] = (),
           structured: bool = True) -> list[Event]:
        if structured:
            self.option(StructuredReplyOption())
        if contexts:
            self.option(SetMetaContextOption(name, contexts))
        return self.option(GoOption(name, (InfoType.BLOCK_SIZE,)))

    async def call(self, req: Request) -> list[Event]:
        """One request through the server session; the client's reply events."""
        got: list[Event] = []
        for event in self.to_server(req):
            if isinstance(event, InvalidRequest):
                got += self.to_client(self.session.refuse(event))
                continue
            assert isinstance(event, Request)
            async for reply in self.session.serve(event):
                got += self.to_client(reply)
        return got
