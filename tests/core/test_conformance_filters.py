"""The conformance suite on protocol and filter stacks: null-co and null-aio, raw with
offset/size over blkdebug, and the image formats over blkdebug (images made by
qemu-img, and by our own create so the stacks run without QEMU too)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..conformance import DriverConformance
from .test_conformance_core import _raw_file
from .test_conformance_formats import _OwnMade, _QemuMade


class _Null(DriverConformance):
    driver = ""
    stores_data = False

    def make(self, tmp_path: Path) -> str:
        return ""       # nothing on disk

    def open_args(self, filename: str) -> dict[str, Any]:
        return {"filename": None, "options": {"driver": self.driver, "size": self.size,
                                              "read-zeroes": "on"}}


class TestNullCo(_Null):
    driver = "null-co"


class TestNullAio(_Null):
    driver = "null-aio"


class TestRawSliceOnBlkdebug(DriverConformance):
    """raw's offset/size (a FilterDriver shifting requests) over blkdebug's 4 KiB
    alignment and 64 KiB max transfer."""

    def make(self, tmp_path: Path) -> str:
        return _raw_file(tmp_path, self.size + 3 * 65536)

    def open_args(self, filename: str) -> dict[str, Any]:
        return {"filename": None, "options": {
            "driver": "raw", "offset": 65536, "size": self.size, "file.driver": "blkdebug",
            "file.align": 4096, "file.max-transfer": 65536, "file.image.driver": "file",
            "file.image.filename": filename}}


def _over_blkdebug(fmt: str, filename: str) -> dict[str, Any]:
    return {"filename": None, "options": {
        "driver": fmt, "discard": "unmap", "file.driver": "blkdebug", "file.align": 4096,
        "file.image.driver": "file", "file.image.filename": filename}}


class TestQcow2OnBlkdebug(_QemuMade):
    fmt = "qcow2"
    can_discard_to_zero = True

    def open_args(self, filename: str) -> dict[str, Any]:
        return _over_blkdebug(self.fmt, filename)


class TestQedOnBlkdebug(_QemuMade):
    fmt = "qed"

    def open_args(self, filename: str) -> dict[str, Any]:
        return _over_blkdebug(self.fmt, filename)


class TestQcow2OnBlkdebugOwnMade(_OwnMade, TestQcow2OnBlkdebug):
    pass


class TestQedOnBlkdebugOwnMade(_OwnMade, TestQedOnBlkdebug):
    pass
