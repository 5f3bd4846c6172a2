"""Command-line parsing shared by every subcommand: getopt with qemu-img's wording."""
from __future__ import annotations

import getopt
from dataclasses import dataclass, field

DEFAULT_NAME = "blocklayer-img"


class UsageError(Exception):
    """A bad command line: printed with a hint to ``--help``, exit 1."""


@dataclass
class Parsed:
    opts: list[tuple[str, str]] = field(default_factory=list)
    args: list[str] = field(default_factory=list)

    def has(self, *names: str) -> bool:
        return any(o in names for o, _ in self.opts)

    def last(self, *names: str, default: str | None = None) -> str | None:
        value = default
        for o, v in self.opts:
            if o in names:
                value = v
        return value

    def all(self, *names: str) -> list[str]:
        return [v for o, v in self.opts if o in names]


def parse(argv: list[str], short: str, long: list[str]) -> Parsed:
    """GNU getopt (options and operands may mix); ``-h``/``--help`` print the help."""
    long = [*long, "help"] if "help" not in long else long
    short = short if "h" in short.replace(":", "") else short + "h"
    try:
        opts, args = getopt.gnu_getopt(argv, short, long)
    except getopt.GetoptError as exc:
        raise UsageError(_getopt_message(exc, argv)) from None
    if any(o in ("-h", "--help") for o, _ in opts):
        from .help import print_help
        print_help()
        raise SystemExit(0)
    return Parsed(opts, args)


def _getopt_message(exc: getopt.GetoptError, argv: list[str]) -> str:
    name = exc.opt
    dashed = f"--{name}" if len(name) != 1 else f"-{name}"
    for arg in argv:                       # show a long option as the user spelled it
        if len(name) != 1 and arg.startswith("--" + name):
            dashed = arg.split("=", 1)[0]
            break
    if "requires argument" in exc.msg:
        return f"missing argument for option '{dashed}'"
    if "must not have an argument" in exc.msg:
        return f"option '{dashed}' doesn't allow an argument"
    if "not a unique prefix" in exc.msg:
        return f"option '{dashed}' is ambiguous"
    return f"unrecognized option '{dashed}'"


def output_format(value: str | None) -> str:
    if value is None:
        return "human"
    if value not in ("human", "json"):
        from blocklayer.core.errors import InvalidArgument
        raise InvalidArgument("--output must be used with human or json as argument.")
    return value


def prog() -> str:
    """The program's name as invoked (``qemu-img`` through a symlink of that name)."""
    from blocklayer.tools.common import program_name
    return program_name(DEFAULT_NAME)


def suffix_hint() -> str:
    """qemu-img's two-line reminder of the size suffixes, the second line prefixed."""
    return ("You may use k, M, G, T, P or E suffixes for\n"
            f"{prog()}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
