"""Options, sizes, the null driver, json: filenames, the sync file wrapper, probing."""
from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path

import pytest

from blocklayer import BlockFile
from blocklayer.core.driver import Status
from blocklayer.core.errors import BlockError, InvalidArgument
from blocklayer.core.open import open_image
from blocklayer.core.options import CacheMode, parse_size, split_keyval
from blocklayer.tools.common import size_to_str


@pytest.mark.parametrize("text,value", [("0", 0), ("512", 512), ("64k", 65536), ("1M", 1 << 20),
                                        ("1.5G", 3 << 29), ("2T", 2 << 40), ("4096b", 4096)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "abc", "-1", "1x", "1.5", "99999999999E"])
def test_parse_size_rejects(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_size(bad)


def test_split_keyval_escapes_commas() -> None:
    assert split_keyval("driver=raw,file.filename=a,,b.img") == {
        "driver": "raw", "file.filename": "a,b.img"}
    assert split_keyval("disk.img,read-only=on", implied_key="file") == {
        "file": "disk.img", "read-only": "on"}


def test_size_to_str_matches_qemu() -> None:
    assert [size_to_str(v) for v in (0, 512, 65536, 1536, 1 << 20, 3 << 29)] == [
        "0 B", "512 B", "64 KiB", "1.5 KiB", "1 MiB", "1.5 GiB"]


@pytest.mark.parametrize("n", [1, 511, 65536, 65537, 3 << 20])
def test_is_zero(n: int) -> None:
    from blocklayer.core.io import is_zero
    buf = bytearray(n)
    assert is_zero(buf) and is_zero(bytes(buf)) and is_zero(memoryview(buf)[1:])
    for pos in {0, n // 2, n - 1}:
        buf[pos] = 1
        assert not is_zero(buf) and not is_zero(memoryview(bytes(buf)))
        buf[pos] = 0
    assert is_zero(b"")


def test_cache_modes() -> None:
    assert CacheMode.parse("none") == CacheMode(True, True, False)
    assert CacheMode.parse("writethrough") == CacheMode(False, False, False)
    assert CacheMode.parse("unsafe").no_flush
    with pytest.raises(InvalidArgument):
        CacheMode.parse("bogus")


def test_null_driver() -> None:
    async def main() -> None:
        node = await open_image(None, {"driver": "null-co", "size": "64M", "read-zeroes": "on"})
        assert node.total_bytes == 64 << 20
        await node.write(0, b"dropped")
        assert bytes(await node.read(0, 7)) == bytes(7)
        st = await node.block_status(0, 1 << 20)
        assert st.flags & Status.ZERO
        await node.close()
    asyncio.run(main())


def test_json_filename_and_missing_file(tmp_path: Path, raw_image: Path) -> None:
    async def main() -> None:
        spec = "json:" + json.dumps({"driver": "raw", "file": {"driver": "file",
                                                               "filename": str(raw_image)}})
        node = await open_image(spec)
        assert node.format_name == "raw" and node.file.format_name == "file"
        await node.close()
        with pytest.raises(BlockError, match="No such file or directory"):
            await open_image(str(tmp_path / "missing.img"), fmt="raw")
        with pytest.raises(BlockError, match="Is a directory"):
            await open_image(str(tmp_path), fmt="raw")
        with pytest.raises(InvalidArgument, match="Unknown driver 'nope'"):
            await open_image(str(raw_image), fmt="nope")
    asyncio.run(main())


def test_probing_raw_warns_only_for_writers(raw_image: Path) -> None:
    async def main() -> None:
        from blocklayer.core.node import BlockGraph
        g = BlockGraph()
        seen: list[str] = []
        g.event_handlers.append(lambda ev, data: seen.append(data.get("message", "")))
        node = await open_image(str(raw_image), graph=g, read_only=True)
        await node.close()
        assert seen == []
        node = await open_image(str(raw_image), graph=g)
        assert node.format_name == "raw"
        assert seen and "probing guessed raw" in seen[0]
        # a probed raw image refuses a header that would probe as another format
        with pytest.raises(BlockError):
            await node.write(0, b"QED\x00" + bytes(508))
        await node.close()
    asyncio.run(main())


def test_block_file_works_with_copyfileobj(tmp_path: Path, raw_image: Path) -> None:
    with BlockFile(str(raw_image), "r+b", fmt="raw") as f:
        f.seek(4096)
        f.write(b"hello")
        f.seek(0, io.SEEK_END)
        assert f.tell() == 1 << 20
    out = tmp_path / "copy.bin"
    with BlockFile(str(raw_image), fmt="raw") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    data = out.read_bytes()
    assert len(data) == 1 << 20 and data[4096:4101] == b"hello"


def test_unknown_options_are_refused_as_qemu_does(raw_image: Path) -> None:
    async def main() -> None:
        with pytest.raises(InvalidArgument, match="Block format 'raw' does not support the option 'foo'"):
            await open_image(None, {"driver": "raw", "file.filename": str(raw_image), "foo": "1"})
        with pytest.raises(InvalidArgument, match="Block protocol 'file' doesn't support the option 'bar'"):
            await open_image(None, {"driver": "raw", "file.filename": str(raw_image),
                                    "file.bar": "1"})
    asyncio.run(main())
