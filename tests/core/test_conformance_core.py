"""The conformance suite on the foundation's driver stacks."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..conformance import DriverConformance


def _raw_file(tmp_path: Path, size: int) -> str:
    path = tmp_path / "c.raw"
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


class TestRawOnFile(DriverConformance):
    can_discard_to_zero = True

    def make(self, tmp_path: Path) -> str:
        return _raw_file(tmp_path, self.size)

    def open_args(self, filename: str) -> dict[str, Any]:
        return {"fmt": "raw", "options": {"discard": "unmap"}}


class TestRawOnBlkdebug4k(DriverConformance):
    can_discard_to_zero = True

    def make(self, tmp_path: Path) -> str:
        return _raw_file(tmp_path, self.size)

    def open_args(self, filename: str) -> dict[str, Any]:
        return {"filename": None, "options": {
            "driver": "raw", "discard": "unmap", "file.driver": "blkdebug", "file.align": 4096,
            "file.max-transfer": 65536, "file.image.driver": "file",
            "file.image.filename": filename, "file.image.x-inline-io": "off"}}


class TestRawSliceOnFile(DriverConformance):
    """raw with offset/size exposes a slice of a larger file."""

    def make(self, tmp_path: Path) -> str:
        return _raw_file(tmp_path, self.size + 3 * 65536)

    def open_args(self, filename: str) -> dict[str, Any]:
        return {"fmt": "raw", "options": {"offset": 65536, "size": self.size}}


class TestRawCacheNone(DriverConformance):
    """cache=none: O_DIRECT with aligned bounce buffers."""

    def make(self, tmp_path: Path) -> str:
        return _raw_file(tmp_path, self.size)

    def open_args(self, filename: str) -> dict[str, Any]:
        return {"fmt": "raw", "options": {"cache.direct": "on"}}
