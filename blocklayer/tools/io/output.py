"""What qemu-io prints: sizes (``cvtstr``), the two report lines of an I/O command, the
``-C`` machine-parsable line, the ``-v`` hex dump, and the parsing of size arguments
(``cvtnum``, qemu_strtosz) with qemu-io's error lines."""
from __future__ import annotations

import re
from typing import Any, Callable

INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
REQUEST_MAX_BYTES = ((1 << 31) - 1) >> 9 << 9     # BDRV_REQUEST_MAX_BYTES

_UNITS = ((60, "EiB"), (50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB"))
_MULT = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
         "p": 1 << 50, "e": 1 << 60}
_NUMBER = re.compile(r"[ \t\n\v\f\r]*\+?(?:0[xX](?P<hex>[0-9a-fA-F]+)"
                     r"|(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]*))?)(?P<suffix>[bBkKmMgGtTpPeE]?)")


class NumberError(ValueError):
    """A size argument qemu-io rejects; ``str()`` is the line it prints on stdout."""


def cvtnum(text: str, warn: Callable[[str], None] | None = None) -> int:
    """Parse a size argument (``4k``, ``1.5M``, ``0x200``) as qemu-io does."""
    m = _NUMBER.fullmatch(text)
    if m is None:
        raise NumberError(f"Parsing error: non-numeric argument, or extraneous/"
                          f"unrecognized suffix -- {text}")
    suffix = m["suffix"].lower()
    mult = _MULT[suffix]
    if m["hex"] is not None:
        value, fraction = int(m["hex"], 16), 0.0
        if suffix and warn is not None:
            warn(f"Using a multiplier suffix on hex numbers is deprecated: {text}")
    else:
        value = int(m["int"])
        fraction = float("0." + m["frac"]) if m["frac"] else 0.0
        if fraction and mult == 1:
            raise NumberError(f"Parsing error: non-numeric argument, or extraneous/"
                              f"unrecognized suffix -- {text}")
    if value > UINT64_MAX:
        raise NumberError(f"Parsing error: argument too large -- {text}")
    total = value * mult + int(fraction * mult + 0.5)
    if total > INT64_MAX:
        raise NumberError(f"Parsing error: argument too large -- {text}")
    return total


def cvtstr(value: float) -> str:
    """``65536`` -> ``64 KiB``, ``1536`` -> ``1.500 KiB``, ``512`` -> ``512 bytes``."""
    for shift, unit in _UNITS:
        if value >= (1 << shift):
            text, suffix = "%.3f" % (value / (1 << shift)), " " + unit
            break
    else:
        text, suffix = "%f" % value, " bytes"
    cut = text.find(".000")
    return (text[:cut] if cut >= 0 else text) + suffix


def timestr(seconds: float, verbose: bool) -> str:
    """Elapsed time as qemu-io prints it: ``00.00 sec`` or ``H:MM:SS.cc``."""
    whole = int(seconds)
    cents = int((seconds - whole) * 100)
    if verbose or whole:
        return "%u:%02u:%02u.%02u" % (whole // 3600, whole % 3600 // 60, whole % 60, cents)
    return "%02u.%02u sec" % (whole % 60, cents)


def report(op: str, elapsed: float, offset: int, count: int, total: int, ops: int,
           machine: bool) -> str:
    """The statistics after an I/O command (two lines, or one with ``-C``)."""
    elapsed = max(elapsed, 1e-9)
    when = timestr(elapsed, machine)
    if machine:
        return "%d,%d,%s,%.3f,%.3f\n" % (total, ops, when, total / elapsed, ops / elapsed)
    return (f"{op} {total}/{count} bytes at offset {offset}\n"
            f"{cvtstr(total)}, {ops} ops; {when} ({cvtstr(total / elapsed)}/sec "
            f"and {'%.4f' % (ops / elapsed)} ops/sec)\n")


def _printable(b: int) -> str:
    ch = chr(b)
    return ch if ch.isascii() and ch.isalnum() else "."


def dump_buffer(data: bytes | bytearray, offset: int) -> str:
    """``-v``: 16 bytes a line, hex then the alphanumeric characters."""
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        hexes = "".join("%02x " % b for b in chunk)
        text = "".join(_printable(b) for b in chunk)
        lines.append("%08x:  %s %s\n" % (offset + i, hexes, text))
    return "".join(lines)


def parse_pattern(text: str) -> int:
    """A ``-P`` pattern byte (C strtol base 0); raises :class:`NumberError`."""
    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    value = -1
    if m is not None:
        digits = m[2]
        if digits[:2].lower() == "0x":
            value = int(digits, 16)
        elif digits.startswith("0"):
            value = int(digits, 8)
        else:
            value = int(digits)
        if m[1] == "-":
            value = -value
    if not 0 <= value <= 255:
        raise NumberError(f"{text} is not a valid pattern byte")
    return value


def format_specific(info: dict[str, Any], indent: int = 1) -> str:
    """ImageInfoSpecific data as qemu prints it (keys with spaces, 4 spaces a level,
    in QDict order)."""
    from ..qobject import dump_human
    out: list[str] = []
    dump_human(info, indent, out)
    return "".join(line + "\n" for line in out)


