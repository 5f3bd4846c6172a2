"""The requests commit and rebase make on the copy engine: the ones they made before it
(one per data run of at most 2 MiB, write-zeroes for zero runs, nothing for what
the base holds; rebase: the differing sectors)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.img.helpers import qimg, qio

KIB, MIB = 1024, 1 << 20


def _recording(monkeypatch: pytest.MonkeyPatch, cls: Any) -> list[tuple[str, int, int]]:
    log: list[tuple[str, int, int]] = []
    write, zeroes = cls.write, cls.write_zeroes

    async def rec_write(self, offset, data, flags):  # type: ignore[no-untyped-def]
        log.append(("write", offset, len(data)))
        return await write(self, offset, data, flags)

    async def rec_zeroes(self, offset, length, flags):  # type: ignore[no-untyped-def]
        log.append(("zero", offset, length))
        return await zeroes(self, offset, length, flags)
    monkeypatch.setattr(cls, "write", rec_write)
    monkeypatch.setattr(cls, "write_zeroes", rec_zeroes)
    return log


def _run(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blocklayer.tools.img.main import run
    monkeypatch.chdir(cwd)
    assert run(args) == 0


def test_commit_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blocklayer.formats.raw import RawDriver
    qimg("create", "-q", "-f", "raw", "b.raw", "8M", cwd=tmp_path)
    qio(tmp_path / "b.raw", "write -P 1 0 8M", fmt="raw")
    qimg("create", "-q", "-f", "qcow2", "-b", "b.raw", "-F", "raw", "t.qcow2", cwd=tmp_path)
    qio(tmp_path / "t.qcow2", "write -P 2 64k 128k", "write -z 1M 64k", "write -P 3 3M 3M")
    log = _recording(monkeypatch, RawDriver)
    _run(["commit", "-q", "t.qcow2"], tmp_path, monkeypatch)
    assert log == [("write", 64 * KIB, 128 * KIB), ("zero", MIB, 64 * KIB),
                   ("write", 3 * MIB, 2 * MIB), ("write", 5 * MIB, MIB)]
    data = (tmp_path / "b.raw").read_bytes()
    assert data[3 * MIB:6 * MIB] == b"\x03" * 3 * MIB and data[MIB:MIB + 64 * KIB] == bytes(64 * KIB)


def test_rebase_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blocklayer.formats.qcow2.driver import Qcow2Driver
    qimg("create", "-q", "-f", "qcow2", "old.qcow2", "4M", cwd=tmp_path)
    qio(tmp_path / "old.qcow2", "write -P 1 0 3M")
    qimg("create", "-q", "-f", "qcow2", "new.qcow2", "4M", cwd=tmp_path)
    qio(tmp_path / "new.qcow2", "write -P 1 0 3M", "write -P 9 1M 1k", "write -P 9 2M 64k")
    qimg("create", "-q", "-f", "qcow2", "-b", "old.qcow2", "-F", "qcow2", "t.qcow2",
         cwd=tmp_path)
    qio(tmp_path / "t.qcow2", "write -P 5 3M 4k")
    log = _recording(monkeypatch, Qcow2Driver)
    _run(["rebase", "-q", "-b", "new.qcow2", "-F", "qcow2", "t.qcow2"], tmp_path, monkeypatch)
    # only the sectors where the old and the new backing differ, into the top
    assert log == [("write", MIB, KIB), ("write", 2 * MIB, 64 * KIB)]
    qio(tmp_path / "t.qcow2", "read -P 1 1M 1k", "read -P 1 2M 64k", "read -P 5 3M 4k")
