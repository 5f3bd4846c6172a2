"""QEMU's QObject output: dict keys in the order QEMU 7.2's QDict iterates them
(its hash buckets), JSON with 4-space indents, and the human dump of QAPI objects that
``qemu-img info`` and ``qemu-io info`` print.  Shared by the tools."""
from __future__ import annotations

import json
from typing import Any

from blocklayer.core.qjson import qdict_order as _qdict_order


def qdict_order(d: dict[str, Any]) -> list[str]:
    """Keys in the order QEMU's QDict iterates them (same bucket: newest first)."""
    return _qdict_order(list(d))


def to_qjson(value: Any, indent: int = 0) -> str:
    pad = "    " * (indent + 1)
    end = "    " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f'{pad}{json.dumps(k)}: {to_qjson(value[k], indent + 1)}'
                 for k in qdict_order(value)]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(pad + to_qjson(v, indent + 1) for v in value) + "\n" + end + "]"
    return json.dumps(value)


def dump_human(value: Any, indent: int, out: list[str]) -> None:
    """QEMU's dump of a QAPI object for human output (``Format specific information``)."""
    pad = "    " * indent
    if isinstance(value, dict):
        for key in qdict_order(value):
            v = value[key]
            name = key.replace("-", " ")
            if isinstance(v, (dict, list)):
                out.append(f"{pad}{name}:")
                dump_human(v, indent + 1, out)
            else:
                out.append(f"{pad}{name}: {_scalar(v)}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, (dict, list)):
                out.append(f"{pad}[{i}]:")
                dump_human(v, indent + 1, out)
            else:
                out.append(f"{pad}[{i}]: {_scalar(v)}")


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


