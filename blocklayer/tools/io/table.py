"""The command table and the dispatcher (qemu-io's cmdinfo_t and command()).

Each command is an ``async def f(session, argv) -> int`` registered with
:func:`command`; it returns 0, a negative errno on failure (the exit status becomes 1),
or :data:`QUIT`.  The dispatcher checks what every command shares: is a file open, the
argument count, the permissions a writing command needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from ...core.driver import Perm
from .session import Session

QUIT = 1
EINVAL = -22

CommandFunc = Callable[[Session, list[str]], Awaitable[int]]


@dataclass(frozen=True)
class Command:
    name: str
    func: CommandFunc
    oneline: str
    args: str | None = None
    argmin: int = 0
    argmax: int = 0                 # -1: no limit
    altname: str | None = None
    nofile_ok: bool = False         # runs without an open image
    is_global: bool = False
    perm: Perm = Perm.NONE
    help: str | None = None         # the extended help, printed after the usage line

    def usage_line(self, name: str | None = None) -> str:
        args = f"{self.args} " if self.args is not None else ""
        return f"{name or self.name} {args}-- {self.oneline}\n"


COMMANDS: dict[str, Command] = {}


def command(name: str, oneline: str, **kw: object) -> Callable[[CommandFunc], CommandFunc]:
    """Register the decorated function as command ``name``."""
    def register(func: CommandFunc) -> CommandFunc:
        COMMANDS[name] = Command(name, func, oneline, **kw)  # type: ignore[arg-type]
        return func
    return register


def find(name: str) -> Command | None:
    cmd = COMMANDS.get(name)
    if cmd is not None:
        return cmd
    for cmd in COMMANDS.values():
        if cmd.altname == name:
            return cmd
    return None


def split_line(line: str) -> list[str]:
    """qemu-io's breakline: words separated by spaces (only spaces)."""
    return [w for w in line.rstrip("\n").split(" ") if w]


async def run(session: Session, line: str) -> int:
    """Run one command line; returns 0, a negative errno, or :data:`QUIT`."""
    argv = split_line(line)
    if not argv:
        return 0
    cmd = find(argv[0])
    if cmd is None:
        session.raw_err(f'command "{argv[0]}" not found')
        return EINVAL
    if not cmd.is_global and not cmd.nofile_ok and session.node is None:
        session.raw_err("no file open, try 'help open'")
        return EINVAL
    nargs = len(argv) - 1
    if nargs < cmd.argmin or (cmd.argmax != -1 and nargs > cmd.argmax):
        if cmd.argmax == -1:
            expect = f"at least {cmd.argmin}"
        elif cmd.argmin == cmd.argmax:
            expect = f"{cmd.argmin}"
        else:
            expect = f"between {cmd.argmin} and {cmd.argmax}"
        session.raw_err(f"bad argument count {nargs} to {argv[0]}, expected {expect} arguments")
        return EINVAL
    if cmd.perm and session.node is not None and not session.ensure_perm(cmd.perm):
        return -1
    return await cmd.func(session, argv)
