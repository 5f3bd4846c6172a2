"""The conformance suite on the image formats, over files made by qemu-img."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..conformance import DriverConformance
from ..conftest import qemu_img


class _QemuMade(DriverConformance):
    fmt = ""
    create_opts: tuple[str, ...] = ()

    def make(self, tmp_path: Path) -> str:
        path = tmp_path / f"c.{self.fmt}"
        args = ["create", "-q", "-f", self.fmt]
        for opt in self.create_opts:
            args += ["-o", opt]
        qemu_img(*args, str(path), str(self.size))
        return str(path)

    def open_args(self, filename: str) -> dict[str, Any]:
        return {"fmt": self.fmt, "options": {"discard": "unmap"}}

    def verify(self, filename: str) -> None:
        res = qemu_img("check", "-f", self.fmt, filename, check=False)
        assert res.returncode == 0, res.stdout + res.stderr


class TestQed(_QemuMade):
    fmt = "qed"


class TestQedSmallClusters(_QemuMade):
    fmt = "qed"
    create_opts = ("cluster_size=4096", "table_size=2")


class TestQcow2(_QemuMade):
    fmt = "qcow2"
    can_discard_to_zero = True


class TestQcow2SmallClustersV2(_QemuMade):
    fmt = "qcow2"
    create_opts = ("cluster_size=512", "compat=0.10")


class TestQcow2Refcount1Bit(_QemuMade):
    fmt = "qcow2"
    create_opts = ("refcount_bits=1", "cluster_size=4096")
    can_discard_to_zero = True


class TestQcow2ExtendedL2(_QemuMade):
    fmt = "qcow2"
    create_opts = ("extended_l2=on", "cluster_size=65536")
    can_discard_to_zero = True
