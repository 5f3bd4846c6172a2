"""The driver interface: capabilities asked of each layer, FilterDriver passing limits
and capabilities on, the node-level bitmap API, errors that keep their class and cause,
and that no caller finds a driver operation by name."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from blocklayer.core import bitmaps
from blocklayer.core.create import create_image
from blocklayer.core.driver import BlockDriver, Cap
from blocklayer.core.errors import BlockError, ImageCorrupt, NotSupported
from blocklayer.core.node import BlockNode
from blocklayer.core.open import open_image

ROOT = Path(__file__).resolve().parents[2]


def _open(options: dict[str, Any]) -> Any:
    async def main() -> tuple[Cap, Any, Cap, Any]:
        node = await open_image(None, options)
        try:
            child = node.file
            assert child is not None
            return Cap(node.caps), node.limits, Cap(child.caps), child.limits
        finally:
            await node.close()
    return asyncio.run(main())


def _raw(tmp_path: Path) -> str:
    path = tmp_path / "d.raw"
    path.write_bytes(bytes(1 << 20))
    return str(path)


def test_blkdebug_passes_its_childs_limits_and_hides_in_order_allocation(tmp_path: Path) -> None:
    caps, limits, file_caps, file_limits = _open({
        "driver": "blkdebug", "align": 4096, "max-write-zero": 65536,
        "image.driver": "file", "image.filename": _raw(tmp_path), "image.cache.direct": "on"})
    assert file_caps & Cap.ALLOCATES_IN_ORDER and not caps & Cap.ALLOCATES_IN_ORDER
    assert caps & Cap.WRITE_ZEROES and caps & Cap.DISCARD and caps & Cap.BLOCK_STATUS
    assert limits.request_alignment == 4096 and limits.max_pwrite_zeroes == 65536
    assert limits.opt_mem_alignment == file_limits.opt_mem_alignment
    assert limits.min_mem_alignment == file_limits.min_mem_alignment


def test_raw_passes_every_limit_of_its_file(tmp_path: Path) -> None:
    caps, limits, file_caps, file_limits = _open({
        "driver": "raw", "offset": 4096, "file.driver": "blkdebug", "file.align": 512,
        "file.max-write-zero": 65536, "file.max-discard": 131072,
        "file.image.driver": "file", "file.image.filename": _raw(tmp_path)})
    assert limits == file_limits        # max_pwrite_zeroes and max_pdiscard too
    assert caps & Cap.ALLOCATES_IN_ORDER and not caps & Cap.COMPRESSED_WRITE
    assert bool(caps & Cap.FUA) == bool(file_caps & Cap.FUA)


def test_no_capability_is_patched_onto_an_instance(tmp_path: Path) -> None:
    async def main() -> None:
        node = await open_image(None, {
            "driver": "raw", "file.driver": "blkdebug", "file.image.driver": "file",
            "file.image.filename": _raw(tmp_path)})
        try:
            for n in (node, node.file):
                assert n is not None
                assert "caps" not in vars(n.driver)
                assert n.caps == int(n.driver.capabilities())
        finally:
            await node.close()
    asyncio.run(main())


def test_bitmaps_through_the_node(tmp_path: Path) -> None:
    path = str(tmp_path / "b.qcow2")

    async def main() -> None:
        await create_image(path, "qcow2", 1 << 20)
        node = await open_image(path, fmt="qcow2")
        raw = await open_image(_raw(tmp_path), fmt="raw")
        try:
            assert bitmaps.supported(node) and not bitmaps.supported(raw)
            await bitmaps.add(node, "a", 65536)
            await bitmaps.add(node, "b")
            node.driver.bitmap_set("a", 0, 65536)
            await bitmaps.merge(node, "b", "a")
            await bitmaps.set_enabled(node, "b", False)
            listed = {b["name"]: b for b in bitmaps.list_bitmaps(node)}
            assert listed["b"]["count"] == 65536 and not listed["b"]["recording"]
            await bitmaps.clear(node, "b")
            await bitmaps.remove(node, "a")
            assert [b["name"] for b in bitmaps.list_bitmaps(node)] == ["b"]
            assert bitmaps.list_bitmaps(raw) == []
            with pytest.raises(bitmaps.Unsupported):
                await bitmaps.add(raw, "x")
            with pytest.raises(bitmaps.Unsupported):
                await bitmaps.merge(node, "b", "x", source_node=raw)
        finally:
            await raw.close()
            await node.close()
    asyncio.run(main())


def test_with_prefix_keeps_class_errno_fields_and_cause() -> None:
    try:
        try:
            raise ImageCorrupt("bad table", 5, guest_offset=65536)
        except BlockError as exc:
            raise exc.with_prefix("Could not open 'x': ")
    except BlockError as exc:
        assert type(exc) is ImageCorrupt
        assert exc.message == str(exc) == "Could not open 'x': bad table"
        assert exc.errno == 5 and exc.guest_offset == 65536
        assert isinstance(exc.__cause__, ImageCorrupt) and exc.__cause__.message == "bad table"


def test_a_backing_files_error_keeps_its_class(tmp_path: Path) -> None:
    top = str(tmp_path / "top.qcow2")
    (tmp_path / "base.qcow2").write_bytes(b"QFI\xfb" + bytes(508))   # not a valid header

    async def main() -> None:
        await create_image(top, "qcow2", 1 << 20, {"backing_file": "base.qcow2",
                                                   "backing_fmt": "qcow2"})
        with pytest.raises(BlockError) as info:
            await open_image(top, fmt="qcow2")
        assert info.value.message.startswith("Could not open backing file: ")
        assert type(info.value) is type(info.value.__cause__)
        assert type(info.value) is not BlockError
    asyncio.run(main())


def test_measure_is_declared_with_its_message() -> None:
    class NoMeasure(BlockDriver):
        format_name = "nomeasure"
    with pytest.raises(NotSupported, match="Block driver 'nomeasure' does not support size"):
        asyncio.run(NoMeasure.measure({"size": 512}))


def test_no_caller_finds_a_driver_operation_by_name() -> None:
    """Outside the drivers, no getattr/hasattr on a driver (``grep`` for the rule)."""
    pattern = re.compile(r"(getattr|hasattr)\([^)]*driver")
    found = []
    for path in (ROOT / "blocklayer").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("blocklayer/formats/", "blocklayer/protocols/")):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) or "merge_status_runs" in line:
                found.append(f"{rel}:{n}: {line.strip()}")
    assert found == []


def test_node_caps_default_to_the_class_declaration() -> None:
    from blocklayer.core.node import BlockGraph
    from blocklayer.core.options import OpenFlags
    from blocklayer.protocols.null import NullDriver
    node = BlockNode(BlockGraph(), NullDriver, name="n", flags=OpenFlags(), options={})
    assert node.caps == int(NullDriver.caps) and node.can(Cap.WRITE_ZEROES)
