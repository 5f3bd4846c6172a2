"""Options as QEMU spells them: flat dicts with dotted keys, ``json:`` filenames,
``key=value,key=value`` strings, cache modes and sizes."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from . import qjson
from .errors import InvalidArgument

SIZE_SUFFIXES = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
                 "p": 1 << 50, "e": 1 << 60}


@dataclass(frozen=True, slots=True)
class CacheMode:
    """How a node caches: QEMU's ``-t`` modes map onto these three switches."""

    writeback: bool = True
    direct: bool = False
    no_flush: bool = False

    @classmethod
    def parse(cls, mode: str) -> "CacheMode":
        table = {
            "writeback": cls(True, False, False),
            "none": cls(True, True, False),
            "off": cls(True, True, False),
            "directsync": cls(False, True, False),
            "writethrough": cls(False, False, False),
            "unsafe": cls(True, False, True),
        }
        try:
            return table[mode]
        except KeyError:
            raise InvalidArgument(f"Invalid cache option: {mode}") from None


@dataclass(frozen=True, slots=True)
class OpenFlags:
    """The generic open flags of a node (QEMU's BDRV_O_* that matter here)."""

    read_only: bool = False
    cache: CacheMode = CacheMode()
    force_share: bool = False
    no_backing: bool = False
    no_io: bool = False                   # metadata only (info): never open data files
    copy_on_read: bool = False
    discard_unmap: bool = False           # discard=unmap (default ignore)
    detect_zeroes: str = "off"            # off | on | unmap
    allow_external_files: bool = True     # may follow backing/data-file names in images
    resize: bool = False                  # the user will resize (takes the resize perm)
    check: bool = False                   # opened by ``check``: no automatic repair on open

    def with_(self, **changes: Any) -> "OpenFlags":
        return replace(self, **changes)


def parse_size(text: str | int, what: str = "size") -> int:
    """Parse ``64k``, ``1.5G``, ``4096`` as qemu-img does (powers of 1024)."""
    if isinstance(text, int):
        if text < 0:
            raise InvalidArgument(f"Invalid {what} specified")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([bBkKmMgGtTpPeE]?)\s*", text)
    if not m:
        raise InvalidArgument(f"Invalid {what} specified")
    number, suffix = m.groups()
    mult = SIZE_SUFFIXES[suffix.lower()]
    if "." in number:
        if mult == 1:
            raise InvalidArgument(f"Invalid {what} specified")
        value = int(float(number) * mult)
    else:
        value = int(number) * mult
    if value >= 1 << 63:
        raise InvalidArgument(f"Invalid {what} specified")
    return value


def parse_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("on", "yes", "true", "1"):
        return True
    if text in ("off", "no", "false", "0"):
        return False
    raise InvalidArgument(f"Parameter '{key}' expects 'on' or 'off'")


def split_keyval(text: str, implied_key: str | None = None) -> dict[str, str]:
    """Parse ``a=1,b.c=x,,y`` into a flat dict (``,,`` escapes a comma)."""
    result: dict[str, str] = {}
    parts: list[str] = []
    cur = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text[i + 1:i + 2] == ",":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    for n, part in enumerate(parts):
        if part == "" and n == len(parts) - 1 and n > 0:
            continue
        if "=" not in part:
            if n == 0 and implied_key:
                result[implied_key] = part
                continue
            raise InvalidArgument(f"Invalid parameter '{part}'" if part else "Invalid option string")
        key, value = part.split("=", 1)
        result[key] = value
    return result


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"file": {"filename": "x"}}`` -> ``{"file.filename": "x"}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def extract_prefix(options: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Remove and return the ``prefix.*`` keys of ``options``, prefix stripped."""
    sub: dict[str, Any] = {}
    dot = prefix + "."
    for key in [k for k in options if k.startswith(dot)]:
        sub[key[len(dot):]] = options.pop(key)
    return sub


def parse_json_filename(filename: str) -> dict[str, Any]:
    """``json:{...}`` -> flat options."""
    try:
        tree = qjson.loads(filename[5:])
    except qjson.QJSONError as exc:
        raise InvalidArgument(f"Could not parse the JSON options: {exc}") from None
    if not isinstance(tree, dict):
        raise InvalidArgument("Invalid JSON object given")
    return flatten(tree)


def to_json_filename(options: dict[str, Any]) -> str:
    """The ``json:{...}`` name QEMU shows for a node that has no plain filename."""
    tree: dict[str, Any] = {}
    for key, value in options.items():
        cur = tree
        parts = key.split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value
    return "json:" + json.dumps(tree, separators=(", ", ": "))
