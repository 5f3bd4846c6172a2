"""blkdebug's rules and state machine, sans I/O: options in, rules out; events in,
injected errors out.

QEMU 7.2's option syntax (``inject-error`` and ``set-state`` sections as JSON lists,
indexed dotted keys ``inject-error.0.event=...``, one unindexed section
``inject-error.event=...``, or a legacy ``config`` file) is parsed here with QEMU's
checks and messages. The machine: the state starts at 1; a rule whose ``state`` is 0
applies in every state. When an event fires, the inject rules for it in the current
state replace the active ones (when there are any), and a set-state rule for it in the
current state picks the next state. A request fails with the first active rule that
covers it (``sector`` -1: any request) for its I/O type; ``once`` drops the rule for good.
"""
from __future__ import annotations

import errno as errnos
import re
from dataclasses import dataclass
from typing import Any, Iterable

from ..core.bounded import FileTooLarge, read_named_text
from ..core.errors import InvalidArgument
from ..core.options import flatten

#: QEMU 7.2's BlkdebugEvent, in its order
EVENTS = (
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
    "l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
    "read_aio", "read_backing_aio", "read_compressed", "write_aio", "write_compressed",
    "vmstate_load", "vmstate_save", "cow_read", "cow_write", "reftable_load",
    "reftable_grow", "reftable_update", "refblock_load", "refblock_update",
    "refblock_update_part", "refblock_alloc", "refblock_alloc_hookup",
    "refblock_alloc_write", "refblock_alloc_write_blocks", "refblock_alloc_write_table",
    "refblock_alloc_switch_table", "cluster_alloc", "cluster_alloc_bytes", "cluster_free",
    "flush_to_os", "flush_to_disk", "pwritev_rmw_head", "pwritev_rmw_after_head",
    "pwritev_rmw_tail", "pwritev_rmw_after_tail", "pwritev", "pwritev_zero",
    "pwritev_done", "empty_image_prepare", "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space", "none",
)

#: the events this filter fires itself; the others are accepted but, until format
#: drivers get a hook to fire them, never fire
FIRED_EVENTS = frozenset({"none", "read_aio", "write_aio", "pwritev", "pwritev_zero",
                          "pwritev_done", "flush_to_os", "flush_to_disk"})

#: QEMU 7.2's BlkdebugIOType; a rule without ``iotype`` covers all but block-status
IOTYPES = ("read", "write", "write-zeroes", "discard", "flush", "block-status")
DEFAULT_IOTYPES = frozenset(IOTYPES[:5])

#: the keys of each section and their QemuOpts types, declared once
SECTIONS: dict[str, dict[str, str]] = {
    "inject-error": {"event": "string", "state": "number", "iotype": "string",
                     "errno": "number", "sector": "number", "once": "bool",
                     "immediately": "bool"},
    "set-state": {"event": "string", "state": "number", "new_state": "number"},
}

_U64 = 1 << 64
_NUMBER = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_TRUE, _FALSE = ("on", "yes", "true", "y"), ("off", "no", "false", "n")

Section = dict[str, Any]


@dataclass
class InjectRule:
    event: str
    state: int = 0
    iotypes: frozenset[str] = DEFAULT_IOTYPES
    errno: int = errnos.EIO
    offset: int = -1               # byte offset (unsigned 64-bit) a request must cover
    once: bool = False
    immediately: bool = False

    def covers(self, iotype: str, offset: int, length: int) -> bool:
        if iotype not in self.iotypes:
            return False
        return self.offset == -1 or (length > 0 and offset <= self.offset < offset + length)


@dataclass
class SetStateRule:
    event: str
    state: int = 0
    new_state: int = 0


Rule = InjectRule | SetStateRule


class RuleSet:
    """The rules of one blkdebug node and its state machine."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: list[Rule] = list(rules)
        self.active: list[InjectRule] = []
        self.state = 1

    def _applies(self, rule: Rule, event: str) -> bool:
        return rule.event == event and (rule.state == 0 or rule.state == self.state)

    def fire(self, event: str) -> None:
        """An event happened: activate its inject rules and move to its next state."""
        matching = [r for r in self.rules if self._applies(r, event)]
        injects = [r for r in matching if isinstance(r, InjectRule)]
        if injects:
            self.active = injects
        moves = [r for r in matching if isinstance(r, SetStateRule)]
        if moves:
            self.state = moves[0].new_state      # QEMU: the first one configured wins

    def check(self, iotype: str, offset: int, length: int) -> InjectRule | None:
        """The active rule that fails this request, if any (``once`` rules go)."""
        rule = next((r for r in self.active if r.covers(iotype, offset, length)), None)
        if rule is None or rule.errno == 0:
            return None
        if rule.once:
            self.active.remove(rule)
            self.rules.remove(rule)
        return rule if rule.errno > 0 else None


# --- parsing -----------------------------------------------------------------------

def parse_rules(options: dict[str, Any], config: str | None) -> list[Rule]:
    """Both rule sections from a config file and the options (which lose their keys)."""
    sections: dict[str, list[Section]] = {name: [] for name in SECTIONS}
    if config:
        for name, section in read_config(config):
            sections[name].append(section)
    for name in SECTIONS:
        sections[name] += _option_sections(options, name)
    rules: list[Rule] = [_inject_rule(s) for s in sections["inject-error"]]
    rules += [_set_state_rule(s) for s in sections["set-state"]]
    return rules


def _option_sections(options: dict[str, Any], name: str) -> list[Section]:
    """The sections of group ``name`` as QEMU's qemu_config_parse_qdict finds them."""
    flat = _flat_group(options, name)
    if not flat:
        return []
    fields = SECTIONS[name]
    plain = {k: v for k, v in flat.items() if k in fields}
    rest = [k for k in flat if k not in fields]
    if plain and rest:
        raise InvalidArgument(f"Unknown option '{rest[0]}' for [{name}]")
    if plain:
        return [_typed_section(name, plain)]
    return _indexed_sections(name, flat)


def _flat_group(options: dict[str, Any], name: str) -> dict[str, Any]:
    """Remove the group's keys from ``options``, JSON lists flattened to indexed keys."""
    flat: dict[str, Any] = {}
    if name in options:
        value = options.pop(name)
        if isinstance(value, dict) and value:
            flat.update(flatten(value))
        elif isinstance(value, list) and value:
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{i}.") if isinstance(item, dict) else {str(i): item})
        else:
            raise InvalidArgument(f"Block protocol 'blkdebug' doesn't support the option "
                                  f"'{name}'")
    dot = name + "."
    for key in [k for k in options if k.startswith(dot)]:
        value = options.pop(key)
        flat.update(flatten({key[len(dot):]: value}) if isinstance(value, dict)
                    else {key[len(dot):]: value})
    return flat


def _indexed_sections(name: str, flat: dict[str, Any]) -> list[Section]:
    sections: list[Section] = []
    left = dict(flat)
    index = 0
    while True:
        key, dot = str(index), f"{index}."
        if key in left:
            raise InvalidArgument(f"[{name}] section (index {index}) does not consist of keys")
        section = {k[len(dot):]: left.pop(k) for k in list(left) if k.startswith(dot)}
        if not section:
            break
        fields = SECTIONS[name]
        unknown = [k for k in section if k not in fields]
        typed = _typed_section(name, {k: v for k, v in section.items() if k in fields})
        if unknown:
            raise InvalidArgument(f"[{name}] section doesn't support the option '{unknown[0]}'")
        sections.append(typed)
        index += 1
    if left:
        raise InvalidArgument(f"Unused option '{next(iter(left))}' for [{name}]")
    return sections


def _typed_section(name: str, raw: dict[str, Any]) -> Section:
    """Check each value against its QemuOpts type (null means unset)."""
    types = SECTIONS[name]
    section: Section = {}
    for key, value in raw.items():
        if value is None:
            continue
        text = _text(value)
        kind = types[key]
        if kind == "number":
            section[key] = parse_number(text, key)
        elif kind == "bool":
            section[key] = parse_opt_bool(text, key)
        else:
            section[key] = text
    return section


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def parse_number(text: str, key: str) -> int:
    """QemuOpts numbers: strtoull with base 0, so ``-1`` wraps; result unsigned 64-bit."""
    m = _NUMBER.fullmatch(text)
    if not m:
        raise InvalidArgument(f"Parameter '{key}' expects a number")
    sign, digits = m.groups()
    value = int(digits, 16) if digits[:2].lower() == "0x" else int(digits, 8 if digits[0] == "0" else 10)
    if value >= _U64:
        raise InvalidArgument(f"Value '{text}' is too large for parameter '{key}'")
    return (-value) % _U64 if sign == "-" else value


def parse_opt_bool(text: str, key: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidArgument(f"Parameter '{key}' expects 'on' or 'off'")


def _signed(value: int, bits: int) -> int:
    value %= 1 << bits
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _event(section: Section) -> str:
    event = section.get("event")
    if event is None:
        raise InvalidArgument("Missing event name for rule")
    if event not in EVENTS:
        raise InvalidArgument(f"invalid parameter value: {event}")
    return str(event)


def _inject_rule(section: Section) -> InjectRule:
    event = _event(section)
    iotypes = DEFAULT_IOTYPES
    if "iotype" in section:
        if section["iotype"] not in IOTYPES:
            raise InvalidArgument(f"invalid parameter value: {section['iotype']}")
        iotypes = frozenset({section["iotype"]})
    sector = _signed(section.get("sector", _U64 - 1), 64)
    return InjectRule(
        event=event, state=_signed(section.get("state", 0), 32), iotypes=iotypes,
        errno=_signed(section.get("errno", errnos.EIO), 32),
        offset=-1 if sector == -1 else (sector * 512) % _U64,
        once=section.get("once", False), immediately=section.get("immediately", False))


def _set_state_rule(section: Section) -> SetStateRule:
    return SetStateRule(event=_event(section), state=_signed(section.get("state", 0), 32),
                        new_state=_signed(section.get("new_state", 0), 32))


# --- the legacy config file --------------------------------------------------------

_GROUP = re.compile(r'\[([^\]" ]+)(?:\s+"[^"]*")?\]')
_ASSIGN = re.compile(r'(\S+)\s*=\s*(?:"([^"]*)"?)?')


def read_config(filename: str) -> list[tuple[str, Section]]:
    """``[inject-error]`` / ``[set-state]`` groups of ``key = "value"`` lines."""
    try:
        text = read_named_text(filename)
    except OSError as exc:
        raise InvalidArgument(f"Could not read blkdebug config file: "
                              f"{exc.strerror}", exc.errno or errnos.EIO) from None
    except FileTooLarge as exc:
        raise InvalidArgument(f"Could not read blkdebug config file: {exc.message}",
                              exc.errno) from None
    found: list[tuple[str, dict[str, Any]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        group = _GROUP.fullmatch(line)
        if group:
            if group.group(1) not in SECTIONS:
                raise InvalidArgument(f"There is no option group '{group.group(1)}'")
            found.append((group.group(1), {}))
            continue
        assign = _ASSIGN.fullmatch(line)
        if not found:
            raise InvalidArgument("no group defined")
        if not assign:
            raise InvalidArgument("parse error")
        name, raw = found[-1]
        if assign.group(1) not in SECTIONS[name]:
            raise InvalidArgument(f"Invalid parameter '{assign.group(1)}'")
        raw[assign.group(1)] = assign.group(2) or ""
    return [(name, _typed_section(name, raw)) for name, raw in found]
