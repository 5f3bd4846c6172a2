"""Preallocation, external-file policy, backing file changes, emptying, discard policy."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from blocklayer.core.errors import BlockError
from blocklayer.core.open import open_image
from blocklayer.core.options import OpenFlags
from tests.conftest import qemu_img, run

from .helpers import (MIB, apply_model, assert_clean, create, open_qcow2, our_ops,
                      qemu_info, qemu_ops, qemu_raw, read_all)


@pytest.mark.parametrize("mode", ["falloc", "full"])
def test_create_falloc_full(tmp_path: Path, mode: str) -> None:
    theirs, ours = tmp_path / "theirs.qcow2", tmp_path / "ours.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"preallocation={mode}", str(theirs), "6M")
    run(create(ours, 6 * MIB, preallocation=mode))
    assert_clean(ours)
    a, b = qemu_info(ours), qemu_info(theirs)
    a.pop("actual-size"), b.pop("actual-size")
    assert a == b
    assert ours.stat().st_size >= 6 * MIB
    assert run(read_all(ours)) == bytes(6 * MIB)


def test_data_file_never_opened_for_no_io_or_when_not_allowed(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=img.data", str(img), "4M")

    async def no_io() -> None:
        node = await open_image(str(img), fmt="qcow2", read_only=True,
                                flags=OpenFlags(no_io=True))
        try:
            assert node.driver.data_node is None
            assert node.driver.get_specific_info()["data"]["data-file"] == "img.data"
        finally:
            await node.close()
    run(no_io())

    async def not_allowed() -> None:
        await open_image(str(img), fmt="qcow2", read_only=True,
                         flags=OpenFlags(allow_external_files=False))
    with pytest.raises(BlockError, match="not allowed"):
        run(not_allowed())
    (tmp_path / "img.data").unlink()
    with pytest.raises(BlockError, match="img.data"):
        run(read_all(img))


def test_change_backing_file_and_make_empty(tmp_path: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "4M")
    qemu_ops(base, [("write", 0, 4 * MIB, 0x0B)])
    qemu_img("create", "-q", "-f", "qcow2", str(top), "4M")
    qemu_ops(top, [("write", MIB, 70000, 0x0C)])

    async def go() -> None:
        node = await open_qcow2(top)
        try:
            await node.driver.change_backing_file("base.qcow2", "qcow2")
        finally:
            await node.close()
    run(go())
    info = json.loads(qemu_img("info", "--output=json", str(top)).stdout)
    assert info["backing-filename"] == "base.qcow2"
    assert info["backing-filename-format"] == "qcow2"
    model = bytearray(b"\x0b" * 4 * MIB)       # the written clusters were completed
    apply_model(model, [("zero", MIB, 2 * 65536, 0), ("write", MIB, 70000, 0x0C)])
    assert run(read_all(top)) == bytes(model) == qemu_raw(top, tmp_path / "o.raw")

    async def empty() -> None:
        node = await open_qcow2(top)
        try:
            await node.driver.make_empty()
        finally:
            await node.close()
    run(empty())
    assert_clean(top)
    assert run(read_all(top)) == b"\x0b" * 4 * MIB


@pytest.mark.parametrize("discard,passthrough,holes", [
    ("ignore", None, False), ("unmap", None, True), ("unmap", "off", False)])
def test_discard_policy(tmp_path: Path, discard: str, passthrough: str | None,
                        holes: bool) -> None:
    img = tmp_path / "img.qcow2"
    run(create(img, 8 * MIB))
    opts = {"discard": discard}
    if passthrough:
        opts["pass-discard-request"] = passthrough

    async def go() -> None:
        node = await open_qcow2(img)
        try:
            await our_ops(node, [("write", 0, 4 * MIB, 3)])
        finally:
            await node.close()
        node = await open_qcow2(img, **opts)
        try:
            await our_ops(node, [("discard", 0, 4 * MIB, 0)])
        finally:
            await node.close()
    run(go())
    assert_clean(img)
    data = run(read_all(img))
    assert data == (bytes(8 * MIB) if discard == "unmap" else b"\x03" * 4 * MIB + bytes(4 * MIB))
    blocks = img.stat().st_blocks * 512
    assert (blocks < 2 * MIB) == holes
