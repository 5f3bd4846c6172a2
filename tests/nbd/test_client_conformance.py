"""The conformance suite over the nbd driver: raw on nbd against qemu-nbd, and a bare
nbd node against nbdkit's memory plugin."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conformance import DriverConformance
from .test_client import nbdkit, qemu_nbd, unix_url


class _Served(DriverConformance):
    """Each image made is served by a server of its own, stopped after the test."""

    @pytest.fixture(autouse=True)
    def _servers(self) -> Iterator[None]:
        self.servers = contextlib.ExitStack()
        with self.servers:
            yield


class TestRawOnNbdOverQemuNbd(_Served):
    can_discard_to_zero = False         # qemu-nbd ignores trims unless --discard=unmap

    def make(self, tmp_path: Path) -> str:
        image = tmp_path / "served.raw"
        with open(image, "wb") as f:
            f.truncate(self.size)
        sock = self.servers.enter_context(qemu_nbd(tmp_path, image))
        return unix_url(sock)

    def open_args(self, filename: str) -> dict[str, Any]:
        return {"fmt": "raw"}


class TestNbdOverNbdkitMemory(_Served):
    can_discard_to_zero = True          # the memory plugin trims to zeroes

    def make(self, tmp_path: Path) -> str:
        sock = self.servers.enter_context(nbdkit(tmp_path, "memory", f"size={self.size}"))
        return str(sock)

    def open_args(self, filename: str) -> dict[str, Any]:
        return {"filename": None, "options": {
            "driver": "nbd", "discard": "unmap", "server.type": "unix",
            "server.path": filename}}
