"""Backing chains, graph changes, copy-on-read, drain, reopen and op blockers, on a
tiny test format (tests/core/cowdriver.py) over real files."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from blocklayer.core import chain, graph as graphops, registry
from blocklayer.core.create import create_image
from blocklayer.core.driver import CreateOption, Status
from blocklayer.core.errors import BlockError, PermissionConflict
from blocklayer.core.node import BlockGraph
from blocklayer.core.open import open_image, open_node
from blocklayer.core.options import OpenFlags
from blocklayer.core.reopen import reopen

from .cowdriver import CowDriver

CowDriver.create_options = (CreateOption("size", "size"), CreateOption("backing_file", "string"))
registry.DRIVERS["test-cow"] = "tests.core.cowdriver:CowDriver"
registry.PROBED_FORMATS = (*registry.PROBED_FORMATS, "test-cow")
MiB = 1 << 20


async def make_chain(tmp: Path, depth: int = 3) -> list[Path]:
    paths = []
    for i in range(depth):
        p = tmp / f"l{i}.cow"
        opts = {"backing_file": paths[-1].name} if paths else {}
        await create_image(str(p), "test-cow", MiB, opts)
        paths.append(p)
    return paths


def test_chain_walk_and_block_status_above(tmp_path: Path) -> None:
    async def main() -> None:
        paths = await make_chain(tmp_path)
        base = await open_image(str(paths[0]), fmt="test-cow")
        await base.write(0, b"\x11" * 8192)
        await base.close()
        mid = await open_image(str(paths[1]), fmt="test-cow")
        await mid.write(4096, b"\x22" * 4096)
        await mid.close()
        top = await open_image(str(paths[2]))      # probed, chain opened read-only
        names = [n.filename for n in chain.layers(top)]
        assert names == [str(paths[2]), str(tmp_path / "l1.cow"), str(tmp_path / "l0.cow")]
        assert await top.read(0, 12288) == b"\x11" * 4096 + b"\x22" * 4096 + bytes(4096)
        st = await top.block_status_above(None, 0, MiB)
        assert st.depth == 2 and st.allocated and st.length == 4096
        st = await top.block_status_above(None, 4096, MiB)
        assert st.depth == 1 and st.length == 4096
        st = await top.block_status_above(None, 8192, MiB)
        assert not st.allocated and st.flags & Status.ZERO
        depth, n = await top.is_allocated_above(None, 0, MiB)
        assert (depth, n) == (3, 4096)
        base_node = chain.find_base(top)
        assert base_node.filename.endswith("l0.cow")
        assert chain.find_overlay(top, base_node) is top.backing
        assert chain.find_backing_image(top, str(tmp_path / "l1.cow")) is top.backing
        assert top.backing.read_only and not top.read_only
        await top.close()
    asyncio.run(main())


def test_copy_on_read_fills_the_top(tmp_path: Path) -> None:
    async def main() -> None:
        paths = await make_chain(tmp_path, 2)
        base = await open_image(str(paths[0]), fmt="test-cow")
        await base.write(0, b"\x33" * 65536)
        await base.close()
        top = await open_image(None, {"driver": "test-cow", "copy-on-read": "on",
                                      "file.filename": str(paths[1])})
        assert await top.read(100, 5000) == b"\x33" * 5000
        allocated, n = await top.is_allocated(0, 65536)
        assert allocated and n == 8192
        await top.close()
    asyncio.run(main())


def test_backing_loop_and_missing_backing_are_clear_errors(tmp_path: Path) -> None:
    async def main() -> None:
        p = tmp_path / "self.cow"
        await create_image(str(p), "test-cow", MiB, {"backing_file": "self.cow"})
        with pytest.raises(BlockError, match="infinite loop"):
            await open_image(str(p))
        q = tmp_path / "orphan.cow"
        await create_image(str(q), "test-cow", MiB, {"backing_file": "gone.cow"})
        with pytest.raises(BlockError, match="Could not open backing file: Could not open"):
            await open_image(str(q))
        n = await open_image(str(q), backing=False)
        assert n.backing is None and n.backing_file == "gone.cow"
        await n.close()
        untrusted = OpenFlags(allow_external_files=False)
        with pytest.raises(BlockError, match="not allowed"):
            await open_image(str(q), flags=untrusted)
    asyncio.run(main())


def test_append_overlay_freeze_and_drop_intermediate(tmp_path: Path) -> None:
    async def main() -> None:
        g = BlockGraph()
        paths = await make_chain(tmp_path, 3)
        top = await open_image(str(paths[2]), graph=g)
        base = chain.find_base(top)
        chain.freeze(top, base)
        with pytest.raises(PermissionConflict):
            chain.set_backing(top, base)
        chain.unfreeze(top, base)
        await chain.drop_intermediate(top, base)
        assert top.backing is base
        await asyncio.sleep(0)
        assert [n.driver.format_name for n in chain.layers(top)] == ["test-cow", "test-cow"]
        # the header now names the base
        await top.close()
        again = await open_image(str(paths[2]))
        assert again.backing.filename.endswith("l0.cow")
        # external snapshot on top of it
        await create_image(str(tmp_path / "snap.cow"), "test-cow", MiB)
        snap = await open_node(again.graph, str(tmp_path / "snap.cow"), {}, fmt="test-cow")
        graphops.append_overlay(again, snap)
        assert snap.backing is again and not again.users and snap.users
        await snap.close()
    asyncio.run(main())


def test_drain_holds_new_requests_and_op_blockers(tmp_path: Path, raw_image: Path) -> None:
    async def main() -> None:
        node = await open_image(str(raw_image), fmt="raw")
        order: list[str] = []

        async def writer() -> None:
            await node.write(0, b"x" * 512)
            order.append("write")

        async with node.drained():
            task = asyncio.create_task(writer())
            await asyncio.sleep(0.05)
            assert order == []               # held while drained
            await node.write(512, b"y")      # the drain owner's own request passes
            order.append("inside")
        await task
        assert order == ["inside", "write"]
        node.block_op("resize", "job", "block device is in use by block job: commit")
        with pytest.raises(PermissionConflict, match="is busy: block device is in use"):
            node.check_op("resize")
        node.unblock_op("resize", "job")
        node.check_op("resize")
        await node.close()
    asyncio.run(main())


def test_reopen_read_only_to_read_write(tmp_path: Path, raw_image: Path) -> None:
    async def main() -> None:
        node = await open_image(str(raw_image), fmt="raw", read_only=True)
        with pytest.raises(BlockError, match="read-only"):
            await node.write(0, b"a")
        await reopen(node, read_only=False)
        await node.write(0, b"a")
        assert not node.file.read_only
        await reopen(node, read_only=True)
        with pytest.raises(BlockError):
            await node.write(0, b"b")
        await node.close()
        assert raw_image.read_bytes()[:1] == b"a"
    asyncio.run(main())


def test_write_threshold_and_accounting(raw_image: Path) -> None:
    async def main() -> None:
        node = await open_image(str(raw_image), fmt="raw")
        fired: list[tuple[int, int]] = []
        node.write_threshold = 65536
        node.on_write_threshold = lambda n, exceeded, thr: fired.append((exceeded, thr))
        await node.write(0, b"a" * 4096)
        await node.write(65536, b"b" * 4096)
        await node.write(131072, b"c" * 4096)
        assert fired == [(4096, 65536)] and node.write_threshold == 0
        await node.read(0, 100)
        with pytest.raises(BlockError):
            await node.read(MiB - 10, 100)
        stats = node.stats.to_qmp()
        assert stats["wr_operations"] == 3 and stats["rd_bytes"] == 100
        assert stats["invalid_rd_operations"] == 1 and stats["wr_highest_offset"] == 135168
        await node.close()
    asyncio.run(main())
