"""The QMP interface as data: QSD 7.2's ``query-qmp-schema``, loaded and used to
validate every call (QEMU's qobject input visitor, with its texts).

The data file ``qsd-7.2-schema.json`` is written by ``scripts/qmp-schema-dump`` from a
running ``qemu-storage-daemon``.  Its type names are masked as numbers, as QEMU masks
them in introspection; the few names that reach error texts (the alternates', in
"expected: BlockdevRef") are recorded next to it under ``alternate-names``.

Introspection does not say an integer's width: every ``int`` accepts -2**63 .. 2**64-1
(QEMU's uint64 visitor accepts negative numbers too; an int64 member given 2**63 or
more is accepted here where QEMU refuses it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from . import qjson
from .protocol import CommandError

INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1
SCALAR_NAMES = {"str": "string", "int": "integer", "bool": "boolean", "number": "number",
                "null": "null"}
_MISSING = object()


def _path_name(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@dataclass(frozen=True)
class Schema:
    """Introspection entities by name, with validation against them."""

    entities: dict[str, dict[str, Any]]
    alternate_names: dict[str, str]
    raw: list[dict[str, Any]]
    version: dict[str, Any]
    command_order: list[str]
    qom_types: list[dict[str, Any]]

    @classmethod
    def load(cls, data: dict[str, Any]) -> Schema:
        entities = {e["name"]: e for e in data["schema"]}
        return cls(entities, data.get("alternate-names", {}), data["schema"],
                   data["version"], data.get("command-order", []), data.get("qom-types", []))

    # ---- queries --------------------------------------------------------------------------
    def command(self, name: str) -> dict[str, Any] | None:
        ent = self.entities.get(name)
        return ent if ent is not None and ent["meta-type"] == "command" else None

    def commands(self) -> list[str]:
        names = [e["name"] for e in self.raw if e["meta-type"] == "command"]
        rank = {n: i for i, n in enumerate(self.command_order)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))

    def events(self) -> list[str]:
        return [e["name"] for e in self.raw if e["meta-type"] == "event"]

    def introspection(self) -> list[Any]:
        """``query-qmp-schema``'s answer, member order as QEMU's."""
        return [_ordered(e) for e in self.raw]

    def type_name(self, name: str) -> str:
        """The name an error text uses for a type ("expected: ...")."""
        ent = self.entities[name]
        meta = ent["meta-type"]
        if meta == "builtin":
            return SCALAR_NAMES.get(name, name)
        if meta == "enum":
            return "string"
        if meta == "array":
            return "array"
        if meta == "alternate":
            return self.alternate_names.get(name, name)
        return "object"

    def enum_values(self, name: str) -> list[str]:
        return list(self.entities[name]["values"])

    # ---- validation -----------------------------------------------------------------------
    def check_arguments(self, command: str, args: dict[str, Any],
                        keyval: bool = False) -> dict[str, Any]:
        """Validate a call's arguments; raises CommandError with QEMU's text.

        With ``keyval`` the scalars are strings from the command line and are converted
        (QEMU's keyval input visitor); the converted arguments are returned."""
        ent = self.command(command)
        if ent is None:
            raise CommandError(f"The command {command} has not been found", "CommandNotFound")
        return self.check(ent["arg-type"], args, (), keyval)  # type: ignore[no-any-return]

    def check(self, type_name: str, value: Any, path: tuple[str | int, ...] = (),
              keyval: bool = False) -> Any:
        """``value`` checked against a type (converted from strings with ``keyval``)."""
        ent = self.entities[type_name]
        meta = ent["meta-type"]
        if meta == "builtin":
            if keyval and isinstance(value, str):
                return _from_keyval(type_name, value, path)
            self._check_builtin(type_name, value, path)
        elif meta == "enum":
            self._check_enum(ent, value, path)
        elif meta == "array":
            if not isinstance(value, list):
                raise self._wrong_type(path, "array")
            return [self.check(ent["element-type"], item, path + (i,), keyval)
                    for i, item in enumerate(value)]
        elif meta == "alternate":
            return self.check(self._alternate_branch(ent, value, path), value, path, keyval)
        elif meta == "object":
            return self._check_object(ent, value, path, keyval)
        else:
            raise ValueError(f"cannot validate a {meta}")
        return value

    def _wrong_type(self, path: tuple[str | int, ...], expected: str) -> CommandError:
        where = _path_name(path)
        if not where:
            return CommandError(f"Invalid parameter type, expected: {expected}")
        return CommandError(f"Invalid parameter type for '{where}', expected: {expected}")

    def _check_builtin(self, name: str, value: Any, path: tuple[str | int, ...]) -> None:
        ok = {
            "str": lambda v: isinstance(v, str),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool)
            and INT_MIN <= v <= INT_MAX,
            "bool": lambda v: isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "null": lambda v: v is None,
            "any": lambda v: True,
        }[name](value)
        if not ok:
            raise self._wrong_type(path, SCALAR_NAMES[name])

    def _check_enum(self, ent: dict[str, Any], value: Any, path: tuple[str | int, ...]) -> None:
        if not isinstance(value, str):
            raise self._wrong_type(path, "string")
        if value not in ent["values"]:
            # QEMU's input_type_enum names the bare member (a list element has no name)
            name = path[-1] if path and isinstance(path[-1], str) else "null"
            raise CommandError(f"Parameter '{name}' does not accept value '{value}'")

    def _json_kind(self, type_name: str) -> str:
        ent = self.entities[type_name]
        if ent["meta-type"] == "builtin":
            return {"str": "string", "int": "number", "number": "number", "bool": "boolean",
                    "null": "null", "any": "any"}[type_name]
        return {"enum": "string", "array": "array", "object": "object"}[ent["meta-type"]]

    def _alternate_branch(self, ent: dict[str, Any], value: Any,
                          path: tuple[str | int, ...]) -> str:
        kind = ("null" if value is None else "boolean" if isinstance(value, bool)
                else "number" if isinstance(value, (int, float)) else "string"
                if isinstance(value, str) else "array" if isinstance(value, list) else "object")
        for member in ent["members"]:
            if self._json_kind(member["type"]) == kind:
                return str(member["type"])
        raise self._wrong_type(path, self.type_name(ent["name"]))

    def members(self, type_name: str, value: dict[str, Any]) -> list[dict[str, Any]]:
        """An object type's members, with the variant's for a union."""
        ent = self.entities[type_name]
        out = list(ent["members"])
        tag = ent.get("tag")
        if tag is not None and isinstance(value.get(tag), str):
            for variant in ent.get("variants", []):
                if variant["case"] == value[tag]:
                    out += self.members(variant["type"], value)
        return out

    def _check_object(self, ent: dict[str, Any], value: Any, path: tuple[str | int, ...],
                      keyval: bool) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self._wrong_type(path, "object")
        if keyval:
            value = dict(value)
        seen: set[str] = set()
        pending = list(ent["members"])
        tag = ent.get("tag")
        while pending:
            member = pending.pop(0)
            name = member["name"]
            seen.add(name)
            if name not in value:
                if "default" not in member:
                    raise CommandError(f"Parameter '{_path_name(path + (name,))}' is missing")
                continue
            value[name] = self.check(member["type"], value[name], path + (name,), keyval)
            if name == tag:
                for variant in ent.get("variants", []):
                    if variant["case"] == value[name]:
                        pending += self.entities[variant["type"]]["members"]
        for key in qjson.qdict_order(list(value)):
            if key not in seen:
                raise CommandError(f"Parameter '{_path_name(path + (key,))}' is unexpected")
        return value

    # ---- sample values (tests and the dump script) ----------------------------------------
    def minimal(self, type_name: str) -> Any:
        """A smallest valid value of a type (required members only, first choices)."""
        ent = self.entities[type_name]
        meta = ent["meta-type"]
        if meta == "builtin":
            return {"str": "x", "int": 0, "bool": False, "number": 0, "null": None,
                    "any": 0}[type_name]
        if meta == "enum":
            return ent["values"][0]
        if meta == "array":
            return []
        if meta == "alternate":   # a scalar branch first: BlockdevRef -> a node name
            branches = sorted(ent["members"], key=lambda m: self._json_kind(m["type"]) == "object")
            return self.minimal(branches[0]["type"])
        out: dict[str, Any] = {}
        for member in ent["members"]:
            if "default" not in member:
                out[member["name"]] = self.minimal(member["type"])
        tag = ent.get("tag")
        if tag is not None:
            for variant in ent.get("variants", []):
                if variant["case"] == out[tag]:
                    out.update(self.minimal(variant["type"]))
        return out


_KEYVAL_BOOLS = {"on": True, "yes": True, "true": True, "y": True,
                 "off": False, "no": False, "false": False, "n": False}


def _from_keyval(type_name: str, text: str, path: tuple[str | int, ...]) -> Any:
    """A command-line string as the builtin type (QEMU's keyval visitor and texts)."""
    where = _path_name(path)
    if type_name in ("str", "any"):
        return text
    if type_name == "bool":
        if text in _KEYVAL_BOOLS:
            return _KEYVAL_BOOLS[text]
        raise CommandError(f"Parameter '{where}' expects 'on' or 'off'")
    if type_name == "int":
        try:
            value = int(text, 0)
        except ValueError:
            from blocklayer.core.errors import InvalidArgument
            from blocklayer.core.options import parse_size  # sizes are ints here too
            try:
                value = parse_size(text)
            except InvalidArgument:
                raise CommandError(f"Parameter '{where}' expects integer") from None
        if not INT_MIN <= value <= INT_MAX:
            raise CommandError(f"Parameter '{where}' expects integer")
        return value
    if type_name == "number":
        try:
            return float(text)
        except ValueError:
            raise CommandError(f"Parameter '{where}' expects number") from None
    raise CommandError(f"Parameter '{where}' expects {SCALAR_NAMES.get(type_name, type_name)}")


def _ordered(value: Any) -> Any:
    if isinstance(value, dict):
        return qjson.Ordered({k: _ordered(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_ordered(v) for v in value]
    return value


@cache
def qsd_schema() -> Schema:
    """QSD 7.2's schema (read once; immutable)."""
    text = resources.files(__package__).joinpath("qsd-7.2-schema.json").read_text()
    return Schema.load(json.loads(text))
