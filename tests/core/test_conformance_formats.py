"""The conformance suite on the image formats, over files made by qemu-img, and the
same stacks over files made by our own create (so they run without QEMU too)."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from blocklayer.core.create import create_image
from blocklayer.core.driver import CheckMode
from blocklayer.core.open import open_image
from blocklayer.core.options import OpenFlags

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


class _OwnMade:
    """Mixed in before a ``_QemuMade`` stack: the image is made by ``create_image`` and
    checked by our own ``check``."""

    fmt: str
    size: int
    create_opts: tuple[str, ...]

    def make(self, tmp_path: Path) -> str:
        path = str(tmp_path / f"c.{self.fmt}")
        opts = dict(opt.split("=", 1) for opt in self.create_opts)
        asyncio.run(create_image(path, self.fmt, self.size, opts))
        return path

    def verify(self, filename: str) -> None:
        async def check() -> None:
            node = await open_image(filename, fmt=self.fmt, read_only=True, backing=False,
                                    flags=OpenFlags(check=True))
            try:
                res = await node.driver.check(CheckMode.NONE)
            finally:
                await node.close()
            assert (res.corruptions, res.leaks, res.check_errors) == (0, 0, 0), res.messages
        # in a thread of its own: copy tests verify from inside their event loop
        with ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: asyncio.run(check())).result()


class TestQedOwnMade(_OwnMade, TestQed):
    pass


class TestQedSmallClustersOwnMade(_OwnMade, TestQedSmallClusters):
    pass


class TestQcow2OwnMade(_OwnMade, TestQcow2):
    pass


class TestQcow2SmallClustersV2OwnMade(_OwnMade, TestQcow2SmallClustersV2):
    pass


class TestQcow2Refcount1BitOwnMade(_OwnMade, TestQcow2Refcount1Bit):
    pass


class TestQcow2ExtendedL2OwnMade(_OwnMade, TestQcow2ExtendedL2):
    pass
