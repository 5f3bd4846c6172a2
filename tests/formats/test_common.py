"""What every simple format must show as qemu-img does: its create options' help."""
from __future__ import annotations

from pathlib import Path

import pytest

from . import differential as D


@pytest.mark.parametrize("fmt", ["vdi", "vpc"])
def test_create_help_lists_qemus_options(tmp_path: Path, fmt: str) -> None:
    q, b = D.both("create", "-f", fmt, "-o", "help", str(tmp_path / "x"))
    assert b == q
