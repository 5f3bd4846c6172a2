"""Run the same QMP session against the real qemu-storage-daemon and ours with
qemu.qmp's QMPClient and normalise what comes back (timestamps, paths, automatic node
names -- nothing else)."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient

from tests.qmp.qsd import daemon

Step = tuple[Any, ...]   # ("cmd", name, args) | ("wait", event name, status or None)


class Normaliser:
    def __init__(self, tmp: Path) -> None:
        self.tmp = str(tmp)
        self.auto: dict[str, str] = {}

    def text(self, value: str) -> str:
        value = value.replace(self.tmp, "$TMP")
        return re.sub(r"#block\d+", lambda m: self.auto.setdefault(m.group(0),
                                                                    f"#auto{len(self.auto)}"),
                      value)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if k in ("timestamp", "date-sec", "date-nsec", "vm-clock-sec", "vm-clock-nsec",
                         "package"):
                    v = "<ts>" if k != "package" else "<package>"
                out[self.text(k)] = self(v)
            return out
        return value


async def _session(sock: Path, steps: list[Step], norm: Normaliser) -> list[Any]:
    client = QMPClient("diff")
    listener = EventListener()
    client.register_listener(listener)
    for attempt in range(3):
        # wait_listening's probe connection may still hold the one monitor slot while
        # it closes; a client that connects then can see the socket close first
        try:
            await client.connect(str(sock))
            break
        except ConnectError:
            if attempt == 2:
                raise
            await asyncio.sleep(0.2)
    out: list[Any] = []      # (command, reply, events up to the next command)
    try:
        for step in steps:
            if step[0] == "wait":   # until the event arrives; it joins the last command's
                events = out[-1][2]
                while not any(_matches(e, step) for e in events):
                    events.append(norm(dict(await asyncio.wait_for(listener.get(), 60))))
                continue
            _, name, args = step
            try:
                reply: Any = {"return": await client.execute(name, args)}
            except ExecuteError as exc:
                reply = {"error": {"class": exc.error_class, "desc": exc.error.error.desc}}
            await client.execute("query-version")      # a barrier: earlier events are in
            events = []
            while not listener.empty():
                events.append(norm(dict(await listener.get())))
            out.append((name, norm(reply), events))
    finally:
        await client.disconnect()
    return out


def _matches(event: dict[str, Any], step: Step) -> bool:
    """("wait", event, status or None[, job id])"""
    data = event.get("data", {})
    return bool(event["event"] == step[1] and (step[2] is None or data.get("status") == step[2])
                and (len(step) < 4 or data.get("id") == step[3]))


def run_both(tmp: Path, prepare: Any, steps: list[Step], session: Any = None
             ) -> tuple[list[Any], list[Any]]:
    """``prepare(dir)`` makes the images each daemon starts from; ``session(work, sock,
    steps)`` runs the steps (default: QMP only)."""
    results = []
    for which in ("qsd", "ours"):
        work = tmp / which
        work.mkdir()
        prepare(work)
        with daemon(which, work) as sock:
            if session is None:
                results.append(asyncio.run(_session(sock, steps, Normaliser(work))))
            else:
                results.append(asyncio.run(asyncio.wait_for(session(work, sock, steps), 120)))
    return results[0], results[1]


def diff(a: list[Any], b: list[Any]) -> list[tuple[Any, Any]]:
    """The pairs that differ (with the step that shows them)."""
    out = [(x, y) for x, y in zip(a, b) if x != y]
    for x, y in out:
        print("QSD: ", x, "\nOURS:", y, "\n")
    if len(a) != len(b):
        out.append((a[len(b):], b[len(a):]))
    return out
