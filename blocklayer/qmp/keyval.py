"""QEMU's key=value syntax for command-line options (util/keyval.c): ``a=1,b.c=x``
becomes ``{"a": "1", "b": {"c": "x"}}``, ``,,`` escapes a comma, the first item may
omit its key (the implied key), and a level whose keys are all numbers is a list.
Every scalar stays a string; :meth:`Schema.check` with ``keyval=True`` converts them."""
from __future__ import annotations

from typing import Any

from .protocol import CommandError


def _split(text: str) -> list[str]:
    items: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            items.append("".join(cur))
            cur = []
        else:
            cur.append(text[i])
        i += 1
    items.append("".join(cur))
    return items


def parse(text: str, implied_key: str | None = None) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for n, item in enumerate(_split(text)):
        if item == "" and n > 0:
            continue
        key, eq, value = item.partition("=")
        if not eq:
            if n == 0 and implied_key is not None:
                key, value = implied_key, item
            else:
                raise CommandError(f"Expected '=' after parameter '{item}'")
        _put(tree, key.split("."), value, key)
    return _lists(tree)


def _put(tree: dict[str, Any], parts: list[str], value: str, key: str) -> None:
    node = tree
    for i, part in enumerate(parts):
        if not part:
            raise CommandError(f"Invalid parameter '{key}'")
        if i == len(parts) - 1:
            if isinstance(node.get(part), dict):
                raise CommandError(f"Parameters '{'.'.join(parts[:i + 1])}.*' used "
                                   "inconsistently")
            node[part] = value
        else:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CommandError(f"Parameters '{'.'.join(parts[:i + 1])}' used "
                                   "inconsistently")
            node = child


def _lists(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    out = {k: _lists(v) for k, v in tree.items()}
    if out and all(k.isdigit() for k in out):
        return [out[k] for k in sorted(out, key=int)]
    return out
