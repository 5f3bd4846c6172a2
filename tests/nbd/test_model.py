"""Random request sequences from several clients, through the client and server machines
and the server session onto a real node, against a bytearray model."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocklayer.core.open import open_image
from blocklayer.nbd import events as ev
from blocklayer.nbd import wire
from blocklayer.nbd.export import Export
from blocklayer.nbd.wire import Cmd, CmdFlag, Errno

from .memory import Pair

SIZE = 256 * 1024
CLIENTS = 3

KINDS = ["read", "read", "read_df", "write", "write", "write_fua", "zero", "zero_nohole",
         "zero_fast", "trim", "flush", "cache", "status", "status_one", "past_end",
         "bad_flag"]


@st.composite
def batches(draw: st.DrawFn) -> list[list[tuple[int, str, int, int, int]]]:
    """Batches of requests in flight at once, from random clients, on disjoint ranges."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        cuts = sorted(set(draw(st.lists(st.integers(0, SIZE), min_size=2, max_size=17))))
        batch = []
        for start, end in list(zip(cuts[::2], cuts[1::2]))[:8]:
            batch.append((draw(st.integers(0, CLIENTS - 1)), draw(st.sampled_from(KINDS)),
                          start, end - start, draw(st.integers(1, 255))))
        out.append(batch)
    return out


def _request(pair: Pair, kind: str, off: int, n: int, pat: int) -> ev.Request:
    c = pair.client
    if kind.startswith("read"):
        df = kind == "read_df" and c.structured_replies
        return c.request(Cmd.READ, off, n, CmdFlag.DF if df else 0)
    if kind.startswith("write"):
        return c.request(Cmd.WRITE, off, n, CmdFlag.FUA if kind == "write_fua" else 0,
                         bytes([pat]) * n)
    if kind.startswith("zero"):
        flags = {"zero": 0, "zero_nohole": CmdFlag.NO_HOLE,
                 "zero_fast": CmdFlag.FAST_ZERO}[kind]
        return c.request(Cmd.WRITE_ZEROES, off, n, flags)
    if kind.startswith("status"):
        return c.request(Cmd.BLOCK_STATUS, off, max(n, 1),
                         CmdFlag.REQ_ONE if kind == "status_one" else 0)
    if kind == "past_end":
        return ev.Request(Cmd.READ, c.request(Cmd.READ).cookie, SIZE - n // 2, n + 1)
    if kind == "bad_flag":
        return ev.Request(Cmd.FLUSH, c.request(Cmd.FLUSH).cookie, 0, 0, 0x40)
    return c.request({"trim": Cmd.TRIM, "flush": Cmd.FLUSH, "cache": Cmd.CACHE}[kind],
                     off, n)


def _send_unchecked(pair: Pair, req: ev.Request) -> list[ev.Event]:
    """A request the client machine would refuse, forced onto the wire."""
    from blocklayer.nbd.protocol import InFlight
    pair.server.receive_data(wire.RequestHeader(req.flags, req.command, req.cookie,
                                                req.offset, req.length).build())
    pair.client.in_flight[req.cookie] = InFlight(req.command, req.offset, req.length, 0)
    from .memory import drain
    return drain(pair.server)


async def _one(pair: Pair, kind: str, off: int, n: int, pat: int,
               model: bytearray) -> tuple[str, int, int, int, int]:
    req = _request(pair, kind, off, n, pat)
    if kind in ("past_end", "bad_flag"):
        (refused,) = _send_unchecked(pair, req)
        assert isinstance(refused, ev.InvalidRequest)
        replies = pair.to_client(pair.session.refuse(refused))
        assert len(replies) == 1 and replies[0].error == Errno.EINVAL
        return kind, off, n, pat, Errno.EINVAL
    replies = await pair.call(req)
    assert replies and replies[-1].done and req.cookie not in pair.client.in_flight
    assert all(r.cookie == req.cookie for r in replies)
    error = next((r.error for r in replies if getattr(r, "error", 0)), 0)
    if kind.startswith("read") and not error:
        got = bytearray(n)
        covered = 0
        for r in replies:
            if isinstance(r, ev.ReadData):
                got[r.offset - off:r.offset - off + len(r.data)] = r.data
                covered += len(r.data)
            elif isinstance(r, ev.ReadHole):
                covered += r.size
            elif isinstance(r, ev.SimpleReply):
                got[:] = r.data
                covered = n
        assert covered == n
        if kind == "read_df" and pair.client.structured_replies:
            assert len(replies) == 1
        assert bytes(got) == bytes(model[off:off + n]), f"read {off}+{n} differs"
    if kind.startswith("status") and not error:
        (chunk,) = replies
        extents = chunk.extents
        assert sum(e.length for e in extents) <= n or len(extents) == 1
        if kind == "status_one":
            assert len(extents) == 1
        pos = off
        for e in extents:
            end = min(pos + e.length, off + n)
            if e.flags & wire.STATE_ZERO:
                assert not any(model[pos:end]), f"status says {pos}..{end} is zero"
            pos += e.length
    if kind == "zero_fast":
        assert error in (0, Errno.ENOTSUP)
    else:
        assert not error, (kind, replies)
    return kind, off, n, pat, error


def _model_update(model: bytearray, kind: str, off: int, n: int, pat: int,
                  error: int) -> None:
    if error:
        return
    if kind.startswith("write"):
        model[off:off + n] = bytes([pat]) * n
    elif kind.startswith("zero"):
        model[off:off + n] = bytes(n)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=batches(), structured=st.lists(st.booleans(), min_size=CLIENTS,
                                          max_size=CLIENTS))
def test_random_requests_from_several_clients(tmp_path: Path, ops: Any,
                                              structured: list[bool]) -> None:
    path = tmp_path / "model.raw"
    seed = bytes((i * 7 + 3) % 251 for i in range(SIZE // 2)) + bytes(SIZE // 2)
    path.write_bytes(seed)
    model = bytearray(seed)

    async def main() -> None:
        node = await open_image(str(path), fmt="raw")
        try:
            exports = {"": Export("", node, multi_conn=True)}
            pairs = [Pair(exports) for _ in range(CLIENTS)]
            for pair, s in zip(pairs, structured):
                pair.go("", ("base:allocation",) if s else (), structured=s)
            for batch in ops:
                batch = [op for op in batch
                         if structured[op[0]] or not op[1].startswith("status")]
                done = await asyncio.gather(*(_one(pairs[c], k, o, n, p, model)
                                              for c, k, o, n, p in batch))
                for result in done:
                    _model_update(model, *result)
            check = pairs[0]
            got = await check.call(check.client.request(Cmd.READ, 0, SIZE, CmdFlag.DF
                                                        if structured[0] else 0))
            data = got[0].data
            assert bytes(data) == bytes(model)
            await node.flush()
        finally:
            await node.close()

    asyncio.run(main())
    assert path.read_bytes() == bytes(model)
