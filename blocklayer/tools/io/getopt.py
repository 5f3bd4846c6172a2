"""GNU getopt as the C library does it: options may follow operands (permutation),
``--`` ends the options, short options group (``-qv``), long options may be
abbreviated.  Errors carry glibc's wording so our messages match qemu-io's.

Options come out one at a time, so a caller handles (and may fail on) the options
before a later bad one exactly as a C ``while ((c = getopt(...)) != -1)`` loop would.
"""
from __future__ import annotations

from typing import Iterator


class GetoptError(Exception):
    """A bad option; ``str()`` is glibc's line, ``prog: ...``."""


class Getopt:
    """Iterate over ``(option, argument)``; ``operands`` holds the rest afterwards.

    ``short`` is a getopt string (``"bCl:P:"``); ``longopts`` maps a long name to
    ``(takes_argument, short equivalent)``.
    """

    def __init__(self, prog: str, args: list[str], short: str,
                 longopts: dict[str, tuple[bool, str]] | None = None) -> None:
        self.prog = prog
        self.args = list(args)
        self.short = short
        self.longopts = longopts or {}
        self.operands: list[str] = []

    def _takes_arg(self, ch: str) -> bool | None:
        """True/False for a known option letter, None for an unknown one."""
        i = self.short.find(ch)
        if i < 0 or ch == ":":
            return None
        return self.short[i + 1:i + 2] == ":"

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        args = self.args
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                self.operands.extend(args[i:])
                return
            if arg.startswith("--") and self.longopts is not None:
                opt, value, i = self._long(arg[2:], args, i)
                yield opt, value
                continue
            if not arg.startswith("-") or arg == "-":
                self.operands.append(arg)
                continue
            pos = 1
            while pos < len(arg):
                ch = arg[pos]
                pos += 1
                takes = self._takes_arg(ch)
                if takes is None:
                    raise GetoptError(f"{self.prog}: invalid option -- '{ch}'")
                if not takes:
                    yield ch, None
                    continue
                if pos < len(arg):
                    yield ch, arg[pos:]
                elif i < len(args):
                    i += 1
                    yield ch, args[i - 1]
                else:
                    raise GetoptError(f"{self.prog}: option requires an argument -- '{ch}'")
                break

    def _long(self, body: str, args: list[str], i: int) -> tuple[str, str | None, int]:
        name, eq, value = body.partition("=")
        if name in self.longopts:
            match = name
        else:
            cands = [n for n in self.longopts if n.startswith(name)]
            if not cands:
                raise GetoptError(f"{self.prog}: unrecognized option '--{name}'")
            if len(cands) > 1:
                listed = " ".join(f"'--{c}'" for c in cands)
                raise GetoptError(f"{self.prog}: option '--{name}' is ambiguous; "
                                  f"possibilities: {listed}")
            match = cands[0]
        takes, short = self.longopts[match]
        if not takes:
            if eq:
                raise GetoptError(f"{self.prog}: option '--{match}' doesn't allow an argument")
            return short, None, i
        if eq:
            return short, value, i
        if i < len(args):
            return short, args[i], i + 1
        raise GetoptError(f"{self.prog}: option '--{match}' requires an argument")
