"""What every tool shares: QEMU's size formatting and parsing, one-line errors."""
from __future__ import annotations

import math
import os
import re
import sys
from typing import Any, NoReturn

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


def corruption_text(data: dict[str, Any]) -> str:
    """The line qcow2 prints on stderr (without the program's name) when it first finds
    an image corrupt: the ``BLOCK_IMAGE_CORRUPTED`` event's ``msg``, fatal or not."""
    # qcow2's messages print offsets as C's %#x, which writes zero as "0" (Python: "0x0")
    msg = re.sub(r"\b0x0\b", "0", str(data.get("msg", "")))
    if data.get("fatal"):
        return (f"qcow2: Marking image as corrupt: {msg}; further corruption events will "
                "be suppressed")
    return f"qcow2: Image is corrupt: {msg}; further non-fatal corruption events will be suppressed"


def die(prog: str, message: str, code: int = 1) -> NoReturn:
    """Print ``prog: message`` on stderr and exit."""
    sys.stderr.write(f"{prog}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def not_implemented(prog: str) -> NoReturn:
    die(prog, "not implemented yet", 2)
