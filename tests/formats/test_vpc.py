"""vpc (VHD): differential tests against QEMU 7.2's qemu-img and qemu-io."""
from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from blocklayer.formats.vpc import layout as L
from tests.conformance import DriverConformance
from tests.conftest import qemu_img, run, tool

from . import differential as D
from .differential import KIB, MIB, Op

SIZE = 9 * MIB                          # CHS-rounded to 9445376... by both
BLOCK = 2 * MIB
OPS: list[Op] = [
    ("write", 0, 100, 0x11),
    ("write", 2 * BLOCK - 1000, 5000, 0x22),        # two blocks in one request
    ("zero", 3 * BLOCK, BLOCK, 0),
    ("write", 3 * BLOCK + 4 * KIB, 512, 0x33),
    ("write", 8 * MIB, 4 * KIB, 0x44),
    ("zero", 50, 20, 0),
    ("write", MIB + 7, 2 * MIB + 3, 0x55),
]
SUBFORMATS = ["dynamic", "fixed"]


def mask_footers(data: bytearray) -> None:
    """Blank the timestamp, checksum and UUID of every footer copy in ``data``."""
    for base in (0, len(data) - L.FOOTER_SIZE):
        if base >= 0 and data[base:base + 8] == L.CREATOR:
            data[base + 24:base + 28] = bytes(4)
            data[base + 64:base + 84] = bytes(20)


def fix_checksum(data: bytearray) -> None:
    for base in (0, len(data) - L.FOOTER_SIZE):
        if data[base:base + 8] == L.CREATOR:
            data[base + 64:base + 68] = bytes(4)
            struct.pack_into(">I", data, base + 64, L.checksum(bytes(data[base:base + 512])))


def _qemu_made(tmp: Path, sub: str = "dynamic", ops: list[Op] = OPS,
               size: int = SIZE, *opts: str) -> Path:
    path = tmp / f"{sub}.vhd"
    o = [x for opt in (f"subformat={sub}", *opts) for x in ("-o", opt)]
    qemu_img("create", "-q", "-f", "vpc", *o, str(path), str(size))
    D.qemu_apply(path, "vpc", ops)
    return path


def _size(path: Path) -> int:
    return run(_length(path))


async def _length(path: Path) -> int:
    from blocklayer.core.open import open_image
    node = await open_image(str(path), fmt="vpc", read_only=True)
    try:
        return node.total_bytes
    finally:
        await node.close()


@pytest.mark.parametrize("sub", SUBFORMATS)
def test_qemu_made_images_read_back(tmp_path: Path, sub: str) -> None:
    path = _qemu_made(tmp_path, sub)
    model = bytearray(_size(path))
    D.apply_model(model, OPS)
    assert run(D.our_read_all(path, "vpc")) == model
    assert D.qemu_raw(path, "vpc", tmp_path) == model


@pytest.mark.parametrize("sub", SUBFORMATS)
def test_our_writes_are_qemus(tmp_path: Path, sub: str) -> None:
    """The same requests through qemu-io and through us give the same file: blocks
    where the footer was, bitmaps all ones, the footer moved, the BAT entry."""
    theirs = _qemu_made(tmp_path, sub, [])
    ours = tmp_path / "ours.vhd"
    ours.write_bytes(theirs.read_bytes())
    D.qemu_apply(theirs, "vpc", OPS)
    run(D.our_write(ours, "vpc", OPS))
    assert ours.read_bytes() == theirs.read_bytes()


def test_bitmaps_of_other_writers_become_all_ones(tmp_path: Path) -> None:
    """A block whose bitmap another tool left partial: QEMU's first write sets it all."""
    theirs = _qemu_made(tmp_path, "dynamic", [("write", 0, 512, 1)])
    data = bytearray(theirs.read_bytes())
    bitmap = 512 * struct.unpack_from(">I", data, 3 * 512)[0]
    data[bitmap:bitmap + 512] = b"\x80" + bytes(511)
    theirs.write_bytes(data)
    ours = tmp_path / "ours.vhd"
    ours.write_bytes(data)
    D.qemu_apply(theirs, "vpc", [("write", 4096, 512, 2)])
    run(D.our_write(ours, "vpc", [("write", 4096, 512, 2)]))
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("sub", SUBFORMATS)
def test_our_images_compare_equal(tmp_path: Path, sub: str) -> None:
    path, raw = tmp_path / "ours.vhd", tmp_path / "model.raw"
    run(D.our_create(path, "vpc", SIZE, subformat=sub))
    run(D.our_write(path, "vpc", OPS))
    model = bytearray(_size(path))
    D.apply_model(model, OPS)
    raw.write_bytes(model)
    assert qemu_img("compare", "-f", "vpc", "-F", "raw", str(path), str(raw)).returncode == 0
    q = qemu_img("check", "-f", "vpc", str(path), check=False)
    b = tool("img", "check", "-f", "vpc", str(path))
    assert (b.returncode, D.ours_named(b.stderr)) == (q.returncode, q.stderr) == \
        (63, "qemu-img: This image format does not support checks\n")


CREATE_SIZES = [0, 1, 512, 10 * MIB, 1000000, 127 * (1 << 30), 200 * (1 << 30),
                2040 * (1 << 30)]


@pytest.mark.parametrize("opts", [(), ("subformat=fixed",), ("force_size=on",),
                                  ("subformat=fixed", "force_size=on")])
def test_create_is_byte_identical(tmp_path: Path, opts: tuple[str, ...]) -> None:
    o = [x for opt in opts for x in ("-o", opt)]
    for size in CREATE_SIZES:
        q, b = tmp_path / "q.vhd", tmp_path / "b.vhd"
        qr = qemu_img("create", "-f", "vpc", *o, str(q), str(size))
        br = tool("img", "create", "-f", "vpc", *o, str(b), str(size))
        assert br.returncode == 0 and br.stdout.replace(str(b), str(q)) == qr.stdout
        assert D.masked_file(b, mask_footers) == D.masked_file(q, mask_footers), size
        q.unlink()
        b.unlink()


def test_chs_rounding_is_qemus(tmp_path: Path) -> None:
    """The size a new image gets, for sizes across every branch of the geometry."""
    rng = random.Random(7)
    sizes = [rng.randrange(0, 1 << bits) for bits in range(10, 41) for _ in range(2)]
    sizes += [65535 * 16 * 63 * 512 + d for d in (-512, 0, 512)]
    sizes += [L.MAX_GEOMETRY * 512 + d for d in (-512, 0, 512)]
    for size in sizes:
        path = tmp_path / "g.vhd"
        qemu_img("create", "-q", "-f", "vpc", str(path), str(size))
        footer = L.Footer.parse(path.read_bytes()[:512])
        ours, chs = L.rounded_size(L.round_up(size, 512), False)
        assert (ours, chs) == (footer.current_size,
                               (footer.cyls, footer.heads, footer.secs_per_cyl)), size
        path.unlink()


@pytest.mark.parametrize("args,size", [
    (("-o", "subformat=bogus"), "1M"), (("-o", "preallocation=metadata"), "1M"),
    (("-o", "force_size=on"), "2041G"), (("-o", "force_size=maybe"), "1M"),
    (("-o", "cluster_size=4096"), "1M")])
def test_create_errors_are_qemus(tmp_path: Path, args: tuple[str, ...], size: str) -> None:
    q, b = D.both("create", "-f", "vpc", *args, str(tmp_path / "x.vhd"), size)
    assert b[0::2] == q[0::2]


@pytest.mark.parametrize("args", [(), ("--output=json",), ("-f", "vpc"),
                                  ("-f", "vpc", "--output=json")])
@pytest.mark.parametrize("sub,opts", [("dynamic", ()), ("fixed", ()),
                                      ("dynamic", ("force_size=on",))])
def test_info_matches(tmp_path: Path, sub: str, opts: tuple[str, ...],
                      args: tuple[str, ...]) -> None:
    """A fixed image has its footer only at the end: without -f it probes as raw."""
    path = _qemu_made(tmp_path, sub, OPS, SIZE, *opts)
    theirs, ours = D.info_pair(path, *args)
    assert ours == theirs


@pytest.mark.parametrize("app", [b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0", b"vpc ",
                                 b"tap "])
def test_size_by_creator_app(tmp_path: Path, app: bytes) -> None:
    """Hyper-V and friends size by current_size, Virtual PC and QEMU by CHS."""
    path = _qemu_made(tmp_path, "dynamic", [], 10 * MIB)
    D.patched(path, path, [(48, ">Q", 10 * MIB)],
              lambda d: (d.__setitem__(slice(28, 32), app), fix_checksum(d)))
    theirs, ours = D.info_pair(path, "--output=json")
    assert ours == theirs


def test_damaged_first_footer(tmp_path: Path) -> None:
    """Only a fixed image may lack the copy at offset 0."""
    path = _qemu_made(tmp_path, "dynamic", [])
    D.patched(path, path, [(0, "8s", b"")])
    theirs, ours = D.info_pair(path, "-f", "vpc")
    assert ours == theirs and theirs[0] == 1


@pytest.mark.parametrize("target", ["qcow2", "raw", "vpc"])
def test_convert_from_vpc(tmp_path: Path, target: str) -> None:
    D.check_convert_from(_qemu_made(tmp_path), "vpc", target, tmp_path)


@pytest.mark.parametrize("source", ["qcow2", "raw"])
@pytest.mark.parametrize("sub", SUBFORMATS)
def test_convert_to_vpc(tmp_path: Path, source: str, sub: str) -> None:
    """The image is CHS-rounded up: compare checks the source's range and zeroes after."""
    D.check_convert_to(tmp_path, source, "vpc", ["-o", f"subformat={sub}"], SIZE, OPS,
                       mask_footers)


# ---- hostile headers -------------------------------------------------------------------

def _dyn(field: int) -> int:
    return 512 + field


HOSTILE: list[tuple[list[tuple[int, str, int]], bool]] = [
    ([(64, ">I", 1)], False),                                   # checksum
    ([(_dyn(0), ">Q", 0)], False),                              # dynamic header magic
    ([(_dyn(32), ">I", 0)], False),                             # zero block size
    ([(_dyn(32), ">I", 3000)], False),                          # not a power of two
    ([(_dyn(28), ">I", 1)], False),                             # page table too small
    ([(_dyn(28), ">I", 0x7FFFFFFF)], False),                    # huge table
    ([(_dyn(28), ">I", 0x9FFFFFFF)], False),                    # negative as QEMU's int
    ([(_dyn(16), ">Q", 1 << 32)], False),                       # BAT past the end of file
    ([(1536, ">I", 0x1000000)], False),                         # block past the end
    ([(_dyn(28), ">I", 0x1000)], False),                        # BAT reaching past the end
    ([(16, ">Q", 0x7FFFFFFFFFFF)], True),                       # header past the end
    ([(16, ">Q", 0xFFFFFFFFFFFFFFFF)], True),                   # no header at all
    ([(56, ">H", 65535), (58, ">H", 0x10FF), (48, ">Q", 1 << 42)], True),  # > 2040 GiB
]


@pytest.mark.parametrize("edits,fix", HOSTILE)
def test_hostile_headers(tmp_path: Path, edits: list[tuple[int, str, int]], fix: bool) -> None:
    path = D.patched(_qemu_made(tmp_path, "dynamic", []), tmp_path / "h.vhd", edits,
                     fix_checksum if fix else None)
    q = qemu_img("info", "-f", "vpc", str(path), check=False)
    b = D.ours_limited("info", "-f", "vpc", str(path))
    assert "Traceback" not in b.stderr
    assert (b.returncode, b.stdout, D.ours_named(b.stderr)) == \
        (q.returncode, q.stdout, q.stderr)


def test_tiny_files(tmp_path: Path) -> None:
    full = _qemu_made(tmp_path, "dynamic", []).read_bytes()
    for n in (0, 8, 100, 511, 513, 1600):
        path = tmp_path / f"t{n}.vhd"
        path.write_bytes(full[:n])
        q = qemu_img("info", "-f", "vpc", str(path), check=False)
        b = D.ours_limited("info", "-f", "vpc", str(path))
        assert "Traceback" not in b.stderr
        assert (b.returncode, D.ours_named(b.stderr)) == (q.returncode, q.stderr), n


# ---- conformance and the model test ----------------------------------------------------

class _Vpc(DriverConformance):
    size = 4 * MIB                      # exactly, with force_size=on
    sub = "dynamic"

    def make(self, tmp_path: Path) -> str:
        path = tmp_path / "c.vhd"
        qemu_img("create", "-q", "-f", "vpc", "-o", f"subformat={self.sub}",
                 "-o", "force_size=on", str(path), str(self.size))
        return str(path)

    def open_args(self, filename: str) -> dict[str, Any]:
        return {"fmt": "vpc", "options": {"discard": "unmap"}}

    def verify(self, filename: str) -> None:
        res = qemu_img("convert", "-f", "vpc", "-O", "raw", filename, filename + ".raw",
                       check=False)
        assert res.returncode == 0, res.stderr


class TestVpcConformance(_Vpc):
    pass


class TestVpcFixedConformance(_Vpc):
    sub = "fixed"


@D.model_settings()
@given(plan=D.batches(SIZE, BLOCK))
def test_random_model(tmp_path: Path, plan: list[D.Batch]) -> None:
    D.model_roundtrip(tmp_path, "vpc", ["-o", "force_size=on"], SIZE, plan)


@pytest.mark.parametrize("calc", ["chs", "current_size", "bogus"])
def test_force_size_calc_open_option(tmp_path: Path, calc: str) -> None:
    path = _qemu_made(tmp_path, "dynamic", [], 10 * MIB)
    D.patched(path, path, [(48, ">Q", 10 * MIB)],
              lambda d: (d.__setitem__(slice(28, 32), b"win "), fix_checksum(d)))
    spec = f"driver=vpc,force_size_calc={calc},file.filename={path}"
    theirs, ours = D.info_pair(Path(spec), "--image-opts")
    # QEMU names the image json:{...} (the option is a strong runtime option): the
    # first line is the generic layer's business, not the driver's
    assert (ours[0], ours[1].split("\n")[1:], ours[2]) == \
        (theirs[0], theirs[1].split("\n")[1:], theirs[2])


def test_largest_table_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """0x1fffffff entries pass QEMU's limits (QEMU then reads 2 GiB, zeroes past the end
    of the file, and refuses the image as truncated): we refuse it unread."""
    path = D.patched(_qemu_made(tmp_path, "dynamic", []), tmp_path / "h.vhd",
                     [(_dyn(28), ">I", 0x1FFFFFFF)])
    b = D.ours_limited("info", "-f", "vpc", str(path))
    assert (b.returncode, D.ours_named(b.stderr)) == (
        1, f"qemu-img: Could not open '{path}': block-vpc: free_data_block_offset points "
           "after the end of file. The image has been truncated.\n")


def _hyperv_like(path: Path) -> bytearray:
    """A dynamic VHD as other tools make them: creator ``win `` (sized by current_size),
    512 KiB blocks, the BAT one sector later than QEMU's, blocks out of order with
    partial bitmaps; returns the guest data."""
    bs, size = 512 * KIB, 3 * MIB
    footer = L.Footer(data_offset=512, creator_app=b"win ", creator_os=b"Wi2k",
                      orig_size=size, current_size=size, cyls=100, heads=4,
                      secs_per_cyl=17, uuid=bytes(range(16))).with_checksum().build()
    entries, bat_at = size // bs, 4 * 512
    first = bat_at + 512
    order = {0: 1, 3: 0, 5: 2}                        # guest block -> stored block
    bat = [L.UNALLOCATED] * entries
    stride = 512 + bs
    for guest, stored in order.items():
        bat[guest] = (first + stored * stride) // 512
    data = bytearray(first + len(order) * stride)
    data[:512] = footer
    dyn = L.DynHeader(table_offset=bat_at, max_table_entries=entries, block_size=bs)
    data[512:1536] = dyn.with_checksum().build()
    data[bat_at:bat_at + 512] = b"\xff" * 512
    data[bat_at:bat_at + 4 * entries] = struct.pack(f">{entries}I", *bat)
    model = bytearray(size)
    for guest, stored in order.items():
        at = first + stored * stride
        data[at:at + 512] = b"\xf0" + bytes(511)      # a bitmap QEMU will set all ones
        chunk = bytes((guest * 13 + i) % 253 + 1 for i in range(bs))
        data[at + 512:at + stride] = chunk
        model[guest * bs:(guest + 1) * bs] = chunk
    path.write_bytes(bytes(data) + footer)
    return model


def test_other_tools_layout_reads_and_writes_as_qemu(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "q.vhd", tmp_path / "b.vhd"
    model = _hyperv_like(theirs)
    _hyperv_like(ours)
    assert run(D.our_read_all(ours, "vpc")) == model == D.qemu_raw(theirs, "vpc", tmp_path)
    ops: list[Op] = [("write", 3 * 512 * KIB + 10, 100, 7), ("write", 512 * KIB - 5, 10, 8),
                     ("write", 0, 512, 9), ("write", 2 * MIB, 512 * KIB, 3)]
    D.qemu_apply(theirs, "vpc", ops)
    run(D.our_write(ours, "vpc", ops))
    assert ours.read_bytes() == theirs.read_bytes()
    q, b = D.info_pair(ours, "--output=json")
    assert b == q
