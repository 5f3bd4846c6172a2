"""What every tool shares: QEMU's size formatting and parsing, one-line errors."""
from __future__ import annotations

import math
import os
import sys
from typing import NoReturn

SUFFIXES = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")

_program: list[str] = []


def set_program_name(argv0: str | None, default: str) -> str:
    """Name the program as invoked, as QEMU's ``error_init(argv[0])`` does: the
    basename of ``argv0`` (a ``qemu-img`` symlink makes it ``qemu-img``).  Run as
    ``python -m pkg`` or ``python -c`` there is no such name: ``default`` is used."""
    base = os.path.basename(argv0 or "")
    if not base or base in ("-c", "-m") or base.endswith(".py"):
        _program.clear()            # each tool's own default (tests run several in-process)
        return default
    _program[:] = [base]
    return base


def program_name(default: str = "blocklayer") -> str:
    """The name every error, warning and usage text of this process starts with."""
    return _program[0] if _program else default


def size_to_str(value: int) -> str:
    """QEMU's size_to_str: ``65536`` -> ``64 KiB``, ``1536`` -> ``1.5 KiB``."""
    exp = math.frexp(value / (1000.0 / 1024.0))[1]
    i = int((exp - 1) / 10)
    i = max(0, min(i, len(SUFFIXES) - 1))
    return "%0.3g %s" % (value / (1 << (i * 10)), SUFFIXES[i])


def die(prog: str, message: str, code: int = 1) -> NoReturn:
    """Print ``prog: message`` on stderr and exit."""
    sys.stderr.write(f"{prog}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def not_implemented(prog: str) -> NoReturn:
    die(prog, "not implemented yet", 2)
