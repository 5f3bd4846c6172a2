"""Helpers for the job tests: a qcow2 chain made with qemu-img, a jobs context on a
graph, events recorded."""
from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blocklayer.core.node import BlockGraph
from blocklayer.jobs.manager import JobManager
from tests.conftest import qemu_img

MiB = 1 << 20


def run(coro: Any, timeout: float = 120) -> Any:
    """Run a test's coroutine, bounded in time."""
    import asyncio
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def open_top(path: Path) -> tuple[Any, Ctx]:
    """Open ``path`` (and its chain) as node ``top``; a jobs context on its graph."""
    from blocklayer.core.open import open_image
    top = await open_image(str(path), node_name="top")
    return top, Ctx(top.graph)


def qemu_io(path: Path, cmd: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", cmd, str(path)], check=True,
                   capture_output=True)


def make_chain(tmp: Path, size: int = 4 * MiB) -> list[Path]:
    """base (1s at 0-1M, 4s at 3M-3.5M) <- mid (2s at 1M-2M, zeroes at 3M+64K)
    <- top (3s at 2M-2.5M)."""
    base, mid, top = tmp / "base.qcow2", tmp / "mid.qcow2", tmp / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), str(size))
    qemu_io(base, "write -P 1 0 1M")
    qemu_io(base, "write -P 4 3M 512k")
    qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2", str(mid))
    qemu_io(mid, "write -P 2 1M 1M")
    qemu_io(mid, "write -z 3136k 64k")
    qemu_img("create", "-q", "-f", "qcow2", "-b", mid.name, "-F", "qcow2", str(top))
    qemu_io(top, "write -P 3 2M 512k")
    return [base, mid, top]


def flat_copy(src: Path, dst: Path) -> Path:
    qemu_img("convert", "-O", "qcow2", str(src), str(dst))
    return dst


def info(path: Path) -> dict[str, Any]:
    return json.loads(qemu_img("info", "--output=json", "-U", str(path)).stdout)


def same(a: Path, b: Path) -> bool:
    return qemu_img("compare", "-U", str(a), str(b), check=False).returncode == 0


def clean(path: Path) -> bool:
    return qemu_img("check", str(path), check=False).returncode == 0


@dataclass
class Ctx:
    """What the job commands take: the graph and the job manager."""

    graph: BlockGraph
    job_manager: JobManager = field(init=False)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.job_manager = JobManager(self.graph)
        self.graph.event_handlers.append(lambda name, data: self.events.append((name, data)))

    def sequence(self) -> list[str]:
        """Statuses and event names, as qemu-facts 5.5 writes them."""
        return [d["status"] if n == "JOB_STATUS_CHANGE" else n for n, d in self.events
                if n.isupper()]

    async def wait(self, job_id: str) -> None:
        await self.job_manager.jobs[job_id].gone.wait()


async def _nothing() -> Any:
    return
    yield


async def qsd_events(tmp: Path, top: Path, commands: list[tuple[str, dict[str, Any]]],
                     until: str | None = "null",
                     after: dict[str, list[tuple[str, dict[str, Any]]]] | None = None,
                     replies: list[tuple[str, Any]] | None = None,
                     program: tuple[str, ...] = ("qemu-storage-daemon",)) -> list[str]:
    """Run ``commands`` on a real qemu-storage-daemon with ``top`` (and its chain) open
    as node ``top``; the statuses and event names until a job reaches ``until``
    (``after``: commands sent once a status or an event is seen; ``until`` None: none
    awaited).  ``replies`` gets each command's reply: ``("ok", value)`` or
    ``(error class, text)``.  The daemon is stopped by its PID, always."""
    import asyncio
    import os

    from qemu.qmp import ExecuteError, QMPClient

    sock = tmp / "qsd.sock"
    proc = subprocess.Popen([*program, "--chardev",  # noqa: ASYNC220
                             f"socket,id=m,path={sock},server=on,wait=off",
                             "--monitor", "chardev=m",
                             "--blockdev", f"driver=file,filename={top},node-name=topf",
                             "--blockdev", "driver=qcow2,file=topf,node-name=top"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = QMPClient("jobs-test")
    seen: list[str] = []
    replies = replies if replies is not None else []
    try:
        for _ in range(400):
            if sock.exists():
                break
            await asyncio.sleep(0.025)
        await client.connect(str(sock))
        with client.listener() as listener:
            for name, args in commands:
                try:
                    replies.append(("ok", await client.execute(name, args)))
                except ExecuteError as exc:
                    replies.append((exc.error_class, str(exc)))
            async for ev in (listener if until is not None else _nothing()):
                name = ev["data"]["status"] if ev["event"] == "JOB_STATUS_CHANGE" \
                    else ev["event"]
                seen.append(name)
                if name == until:
                    break
                for cmd, args in (after or {}).get(name, []):
                    await client.execute(cmd, args)
        try:
            await client.execute("quit")
        except EOFError:             # the daemon may close before its reply is read
            pass
    finally:
        try:
            await client.disconnect()
        except EOFError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait(5)
    return seen


async def our_replies(ctx: Ctx, commands: list[tuple[str, dict[str, Any]]]
                      ) -> list[tuple[str, Any]]:
    """The same as :func:`qsd_events`' ``replies`` from our job commands."""
    from blocklayer.core.errors import BlockError
    from blocklayer.jobs import qmp_commands as q
    out: list[tuple[str, Any]] = []
    for name, args in commands:
        try:
            value = await q.handler(q.COMMANDS[name], lambda c: c)(ctx, args)
            out.append(("ok", {} if value is None else value))
        except BlockError as exc:
            out.append((exc.qmp_class, exc.message))
    return out


async def job_ops(ctx: Ctx, job_id: str, ops: list[tuple[Any, ...]],
                  write: Callable[[int, int, int], Awaitable[None]]) -> None:
    """Run random operations (hypothesis model tests) against a running job: guest
    writes through ``write(offset, length, byte)``, pause, resume, speed changes,
    yields; stop when the job is gone."""
    from blocklayer.jobs import qmp_commands as q
    job = ctx.job_manager.jobs[job_id]
    for op in ops:
        if job_id not in ctx.job_manager.jobs or job.is_completed:
            break
        if op[0] == "write":
            await write(op[1], op[2], op[3])
        elif op[0] == "pause" and not job.user_paused:
            await q.job_pause(ctx, job_id)
        elif op[0] == "resume" and job.user_paused:
            await q.job_resume(ctx, job_id)
        elif op[0] == "speed":
            await q.block_job_set_speed(ctx, job_id, op[1])
        elif op[0] == "yield":
            for _ in range(op[1]):
                await asyncio.sleep(0.001)


def new_pair(tmp: Path, size: int) -> tuple[Path, Path]:
    """An empty source and target qcow2 of ``size`` bytes (made by qemu-img)."""
    source, target = tmp / "src.qcow2", tmp / "dst.qcow2"
    for p in (source, target):
        qemu_img("create", "-q", "-f", "qcow2", str(p), str(size))
    return source, target


async def open_pair(source: Path, target: Path) -> tuple[Any, Any, Ctx]:
    """Both opened in one graph ("src", "dst"), and the job commands' context."""
    from blocklayer.core.open import open_image
    src = await open_image(str(source), node_name="src")
    dst = await open_image(str(target), graph=src.graph, node_name="dst")
    return src, dst, Ctx(src.graph)
