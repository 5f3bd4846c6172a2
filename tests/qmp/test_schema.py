"""The schema as data: every command validated by the one validator with QEMU's texts,
compared with the real qemu-storage-daemon where it answers the same call."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from blocklayer.qmp.protocol import CommandError
from blocklayer.qmp.schema import qsd_schema
from tests.qmp.qsd import RawSession, daemon

SCHEMA = qsd_schema()
COMMANDS = SCHEMA.commands()


def required(cmd: str) -> list[str]:
    arg = SCHEMA.command(cmd)["arg-type"]   # type: ignore[index]
    return [m["name"] for m in SCHEMA.entities[arg]["members"] if "default" not in m]


def ours(cmd: str, args: dict[str, Any]) -> str:
    try:
        SCHEMA.check_arguments(cmd, args)
    except CommandError as exc:
        return exc.desc
    return ""


def test_schema_has_qsd_commands() -> None:
    assert len(COMMANDS) == 74
    assert "blockdev-add" in COMMANDS and "query-qmp-schema" in COMMANDS
    assert len(SCHEMA.events()) == 13


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if required(c)])
def test_missing_parameter(cmd: str) -> None:
    assert ours(cmd, {}) == f"Parameter '{required(cmd)[0]}' is missing"


def test_types_and_values() -> None:
    assert ours("blockdev-del", {"node-name": 1}) == \
        "Invalid parameter type for 'node-name', expected: string"
    assert ours("block_resize", {"node-name": "x", "size": 1.5}) == \
        "Invalid parameter type for 'size', expected: integer"
    assert ours("blockdev-add", {"driver": "foo"}) == \
        "Parameter 'driver' does not accept value 'foo'"
    assert ours("blockdev-add", {"driver": "qcow2", "file": 7}) == \
        "Invalid parameter type for 'file', expected: BlockdevRef"
    assert ours("blockdev-add", {"driver": "qcow2", "file": {"driver": "file"}}) == \
        "Parameter 'file.filename' is missing"
    assert ours("blockdev-reopen", {"options": [{"driver": "null-co", "x": 1}]}) == \
        "Parameter 'options[0].x' is unexpected"
    assert ours("nbd-server-start", {"addr": {"type": "unix", "path": "x"}}) == \
        "Parameter 'addr.data' is missing"
    assert ours("nbd-server-start", {"addr": {"type": "bogus"}}) == \
        "Parameter 'type' does not accept value 'bogus'"
    assert ours("qmp_capabilities", {"enable": ["x"]}) == \
        "Parameter 'null' does not accept value 'x'"


def cases() -> list[tuple[str, dict[str, Any]]]:
    """Calls every daemon refuses before running anything: missing, unexpected, wrong type."""
    out: list[tuple[str, dict[str, Any]]] = []
    for cmd in COMMANDS:
        arg = SCHEMA.command(cmd)["arg-type"]   # type: ignore[index]
        if required(cmd):
            out.append((cmd, {}))
        minimal = SCHEMA.minimal(arg)
        out.append((cmd, {**minimal, "bogus-arg": 1}))
        members = SCHEMA.entities[arg]["members"]
        if members:
            out.append((cmd, {**minimal, members[0]["name"]: [[]]}))
        for member in members:            # a bad enum value, nested where the type nests
            if SCHEMA.entities[member["type"]]["meta-type"] == "enum":
                out.append((cmd, {**minimal, member["name"]: "bogus-value"}))
    return out


def test_against_qsd(tmp_path: Path) -> None:
    """Every command: the real QSD's answer to each refused call, byte for byte."""
    with daemon("qsd", tmp_path) as sock:
        s = RawSession(sock)
        s.call("qmp_capabilities")
        mismatches = []
        for cmd, args in cases():
            want = json.loads(s.call(cmd, args))
            got = ours(cmd, args)
            if "error" not in want or want["error"]["desc"] != got:
                mismatches.append((cmd, args, want, got))
        s.close()
    assert mismatches == []
