"""vdi: differential tests against QEMU 7.2's qemu-img and qemu-io."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from tests.conformance import DriverConformance
from tests.conftest import qemu_img, run, tool

from . import differential as D
from .differential import KIB, MIB, Op

SIZE = 7 * MIB + 512                    # a partial last block
OPS: list[Op] = [
    ("write", 0, 100, 0x11),
    ("write", 3 * MIB - 1000, 5000, 0x22),          # two blocks, allocated in one request
    ("zero", 5 * MIB, MIB, 0),                        # whole block of zeroes (allocates)
    ("write", 5 * MIB + 4 * KIB, 512, 0x33),
    ("write", SIZE - 512, 512, 0x44),
    ("zero", 50, 20, 0),
    ("write", MIB + 7, 2 * MIB + 3, 0x55),
]
CREATE_CASES = [((), 0), ((), 1), ((), SIZE), ((), 100 * MIB + 1), (("static=on",), SIZE),
                (("static=on",), 0), (("static=on",), 3 * MIB)]


def mask_uuids(data: bytearray) -> None:
    if len(data) >= 512 and data[0x40:0x44] == b"\x7f\x10\xda\xbe":
        data[0x188:0x1A8] = bytes(32)       # uuid_image, uuid_last_snap: random


def _qemu_made(tmp: Path, static: bool = False, ops: list[Op] = OPS) -> Path:
    path = tmp / ("s.vdi" if static else "d.vdi")
    qemu_img("create", "-q", "-f", "vdi", "-o", f"static={'on' if static else 'off'}",
             str(path), str(SIZE))
    D.qemu_apply(path, "vdi", ops)
    return path


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_qemu_made_images_read_back(tmp_path: Path, static: bool) -> None:
    path = _qemu_made(tmp_path, static)
    model = bytearray(SIZE)
    D.apply_model(model, OPS)
    assert run(D.our_read_all(path, "vdi")) == model
    assert D.qemu_raw(path, "vdi", tmp_path) == model


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_our_writes_are_qemus(tmp_path: Path, static: bool) -> None:
    """The same requests through qemu-io and through us give the same file (the
    allocation order, the header and the block map sectors are QEMU's)."""
    theirs = _qemu_made(tmp_path, static, [])
    ours = tmp_path / "ours.vdi"
    ours.write_bytes(theirs.read_bytes())
    D.qemu_apply(theirs, "vdi", OPS)
    run(D.our_write(ours, "vdi", OPS))
    assert ours.read_bytes() == theirs.read_bytes()
    assert qemu_img("check", str(ours)).stdout == "No errors were found on the image.\n"


def test_our_images_pass_qemu_check_and_compare(tmp_path: Path) -> None:
    path, raw = tmp_path / "ours.vdi", tmp_path / "model.raw"
    run(D.our_create(path, "vdi", SIZE))
    run(D.our_write(path, "vdi", OPS))
    model = bytearray(SIZE)
    D.apply_model(model, OPS)
    raw.write_bytes(model)
    assert qemu_img("check", str(path)).returncode == 0
    assert qemu_img("compare", "-f", "vdi", "-F", "raw", str(path), str(raw)).returncode == 0


@pytest.mark.parametrize("opts,size", CREATE_CASES)
def test_create_is_byte_identical(tmp_path: Path, opts: tuple[str, ...], size: int) -> None:
    q, b = tmp_path / "q.vdi", tmp_path / "b.vdi"
    o = [x for opt in opts for x in ("-o", opt)]
    qr = qemu_img("create", "-f", "vdi", *o, str(q), str(size))
    br = tool("img", "create", "-f", "vdi", *o, str(b), str(size))
    assert br.returncode == 0 and br.stdout.replace(str(b), str(q)) == qr.stdout
    assert D.masked_file(b, mask_uuids) == D.masked_file(q, mask_uuids)


@pytest.mark.parametrize("args", [("-o", "preallocation=metadata"), ("-o", "preallocation=x"),
                                  ("-o", "static=maybe"), ("-o", "cluster_size=4096")])
def test_create_errors_are_qemus(tmp_path: Path, args: tuple[str, ...]) -> None:
    q, b = D.both("create", "-f", "vdi", *args, str(tmp_path / "x.vdi"), "1M")
    assert b[0::2] == q[0::2]


@pytest.mark.parametrize("args", [(), ("--output=json",), ("-f", "vdi"),
                                  ("-f", "vdi", "--output=json")])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_info_matches(tmp_path: Path, static: bool, args: tuple[str, ...]) -> None:
    path = _qemu_made(tmp_path, static)
    theirs, ours = D.info_pair(path, *args)
    assert ours == theirs


def test_probe_order_is_qemus(tmp_path: Path) -> None:
    """A header with VDI's signature and another format's magic: QEMU asks QED first,
    then VDI, then qcow2 and vpc."""
    cases = {b"QED\x00": "qed", b"QFI\xfb\x00\x00\x00\x03": "vdi", b"conectix": "vdi"}
    for magic, _ in cases.items():
        path = tmp_path / "both.img"
        data = bytearray(4096)
        data[:len(magic)] = magic
        data[0x40:0x44] = b"\x7f\x10\xda\xbe"
        path.write_bytes(data)
        q = qemu_img("info", str(path), check=False)
        b = tool("img", "info", str(path))
        assert D.ours_named(b.stderr) == q.stderr and b.stdout == q.stdout


@pytest.mark.parametrize("target", ["qcow2", "raw", "vdi"])
def test_convert_from_vdi(tmp_path: Path, target: str) -> None:
    D.check_convert_from(_qemu_made(tmp_path), "vdi", target, tmp_path)


@pytest.mark.parametrize("source", ["qcow2", "raw"])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_convert_to_vdi(tmp_path: Path, source: str, static: bool) -> None:
    o = ["-o", "static=on"] if static else []
    dst = D.check_convert_to(tmp_path, source, "vdi", o, SIZE, OPS, mask_uuids)
    assert qemu_img("check", str(dst)).returncode == 0


# ---- check ---------------------------------------------------------------------------

def _bmap_edit(index: int, value: int) -> tuple[int, str, int]:
    return (0x200 + 4 * index, "<I", value)


@pytest.mark.parametrize("edits", [
    [],
    [_bmap_edit(6, 0)],                              # block 0 used twice, count off by one
    [_bmap_edit(6, 100)],                            # index too large
    [(0x184, "<I", 9)],                              # blocks_allocated wrong
    [_bmap_edit(4, 0xFFFFFFFE)],                     # discarded: fine but count off
], ids=["clean", "twice", "too-large", "count", "discarded"])
def test_check_matches(tmp_path: Path, edits: list[tuple[int, str, int]]) -> None:
    path = D.patched(_qemu_made(tmp_path), tmp_path / "c.vdi", edits)
    for args in ((), ("--output=json",), ("-r", "all"), ("-r", "leaks")):
        q = qemu_img("check", *args, str(path), check=False)
        b = tool("img", "check", *args, str(path))
        assert (b.returncode, b.stdout, D.ours_named(b.stderr)) == \
            (q.returncode, q.stdout, q.stderr), args


def test_discarded_blocks_read_as_zeroes_and_are_reallocated(tmp_path: Path) -> None:
    path = D.patched(_qemu_made(tmp_path, ops=[("write", 0, MIB, 9)]), tmp_path / "z.vdi",
                     [_bmap_edit(0, 0xFFFFFFFE), (0x184, "<I", 0)])
    assert run(D.our_read_all(path, "vdi")) == bytes(SIZE)
    run(D.our_write(path, "vdi", [("write", 10, 10, 1)]))
    model = bytearray(SIZE)
    D.apply_model(model, [("write", 10, 10, 1)])
    assert D.qemu_raw(path, "vdi", tmp_path) == model


# ---- hostile headers -------------------------------------------------------------------

HOSTILE = [
    ([(0x44, "<I", 0x10002)], None),                 # version
    ([(0x154, "<I", 0x201)], None),                  # unaligned block map
    ([(0x158, "<I", 0x401)], None),                  # unaligned data
    ([(0x168, "<I", 4096)], None),                   # sector size
    ([(0x178, "<I", 0)], None),                      # zero block size
    ([(0x170, "<Q", 1 << 62)], None),                # disk size beyond the maximum
    ([(0x170, "<Q", 1 << 40)], None),                # disk size beyond the block map
    ([(0x180, "<I", 0xFFFFFFFF)], None),             # huge block count
    ([(0x1A8, "<I", 1)], None),                      # link UUID
    ([(0x1B8, "<I", 1)], None),                      # parent UUID
    ([(0x40, "<I", 0)], None),                       # signature (with -f vdi)
    ([(0x200, "<I", 0x7FFFFFF0)], None),             # a block far past the end of file
    # accepted by QEMU, which would read up to 2 GiB of block map past the end of file
    ([(0x180, "<I", 0x1FFFFF80)], "unsupported VDI image (block map at 0x200 reaches "
                                  "past the end of the file)"),
    ([(0x154, "<I", 0x7FFFFE00)], "unsupported VDI image (block map at 0x7ffffe00 "
                                  "reaches past the end of the file)"),
]


@pytest.mark.parametrize("edits,ours_only", HOSTILE)
def test_hostile_headers(tmp_path: Path, edits: list[tuple[int, str, int]],
                         ours_only: str | None) -> None:
    path = D.patched(_qemu_made(tmp_path), tmp_path / "h.vdi", edits)
    b = D.ours_limited("info", "-f", "vdi", str(path))
    assert "Traceback" not in b.stderr
    if ours_only is not None:
        assert b.returncode == 1
        assert D.ours_named(b.stderr) == f"qemu-img: Could not open '{path}': {ours_only}\n"
        return
    q = qemu_img("info", "-f", "vdi", str(path), check=False)
    assert (b.returncode, b.stdout, D.ours_named(b.stderr)) == \
        (q.returncode, q.stdout, q.stderr)
    if q.returncode == 0:       # and reading it all gives QEMU's bytes (or its error)
        qr = qemu_img("convert", "-O", "raw", str(path), str(tmp_path / "q.raw"), check=False)
        br = D.ours_limited("convert", "-O", "raw", str(path), str(tmp_path / "b.raw"))
        assert br.returncode == qr.returncode and "Traceback" not in br.stderr


def test_truncated_and_tiny_files(tmp_path: Path) -> None:
    """QEMU reads zeroes where the file ends; a block map cut off is refused here."""
    full = _qemu_made(tmp_path).read_bytes()
    for n in (0, 100, 511, 600):
        path = tmp_path / f"t{n}.vdi"
        path.write_bytes(full[:n])
        q = qemu_img("info", "-f", "vdi", str(path), check=False)
        b = D.ours_limited("info", "-f", "vdi", str(path))
        assert "Traceback" not in b.stderr
        if n == 511:
            assert b.returncode == 1 and "block map at 0x200 reaches past the end" in b.stderr
            continue
        assert (b.returncode, D.ours_named(b.stderr)) == (q.returncode, q.stderr), n


# ---- conformance and the model test ----------------------------------------------------

class _Vdi(DriverConformance):
    size = 4 * MIB
    static = False

    def make(self, tmp_path: Path) -> str:
        path = tmp_path / "c.vdi"
        qemu_img("create", "-q", "-f", "vdi", "-o", f"static={'on' if self.static else 'off'}",
                 str(path), str(self.size))
        return str(path)

    def open_args(self, filename: str) -> dict[str, Any]:
        return {"fmt": "vdi", "options": {"discard": "unmap"}}

    def verify(self, filename: str) -> None:
        res = qemu_img("check", "-f", "vdi", filename, check=False)
        assert res.returncode == 0, res.stdout + res.stderr


class TestVdiConformance(_Vdi):
    pass


class TestVdiStaticConformance(_Vdi):
    static = True


@D.model_settings()
@given(plan=D.batches(SIZE, MIB))
def test_random_model(tmp_path: Path, plan: list[D.Batch]) -> None:
    path = D.model_roundtrip(tmp_path, "vdi", [], SIZE, plan)
    assert qemu_img("check", str(path)).returncode == 0


def test_write_with_a_damaged_allocation_count(tmp_path: Path) -> None:
    """blocks_allocated past the map: QEMU's write fails with EFBIG, so does ours, and
    neither changes the file."""
    path = D.patched(_qemu_made(tmp_path, ops=[]), tmp_path / "a.vdi",
                     [(0x184, "<I", 0xFFFFFF00)])
    before = path.read_bytes()
    q = D.qemu_io("-c", "write 0 4k", str(path), check=False)
    assert path.read_bytes() == before
    b = tool("io", "-c", "write 0 4k", str(path))
    assert (b.returncode, b.stdout, b.stderr) == (q.returncode, q.stdout, q.stderr)
    assert path.read_bytes() == before


def _virtualbox_like(path: Path) -> bytearray:
    """An image laid out as VirtualBox lays them out (its own text, the data area at
    1 MiB, blocks stored out of order, a discarded block, an odd disk size), with the
    guest data it holds."""
    from blocklayer.formats.vdi import layout as L
    size = 6 * MIB - 1000
    order = {0: 2, 2: 0, 3: 1, 5: 3}                 # guest block -> data block
    bmap = [order.get(i, L.UNALLOCATED) for i in range(6)]
    bmap[4] = L.DISCARDED
    header = L.Header(text=b"<<< Oracle VM VirtualBox Disk Image >>>\n", offset_data=MIB,
                      disk_size=size, blocks_in_image=6, blocks_allocated=4, cylinders=12,
                      heads=16, sectors=63, uuid_image=bytes(range(16)),
                      description=b"made by hand")
    data = bytearray(MIB + 4 * MIB)
    data[:512] = header.build()
    data[0x200:0x200 + 24] = struct.pack("<6I", *bmap)
    model = bytearray(6 * MIB)
    for guest, stored in order.items():
        chunk = bytes((guest * 31 + i) % 251 + 1 for i in range(MIB))
        data[MIB + stored * MIB:MIB + (stored + 1) * MIB] = chunk
        model[guest * MIB:(guest + 1) * MIB] = chunk
    path.write_bytes(data)
    return model[:L.round_up(size, 512)]


def test_virtualbox_layout_reads_and_writes_as_qemu(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "q.vdi", tmp_path / "b.vdi"
    model = _virtualbox_like(theirs)
    _virtualbox_like(ours)
    assert run(D.our_read_all(ours, "vdi")) == model == D.qemu_raw(theirs, "vdi", tmp_path)
    ops: list[Op] = [("write", 4 * MIB + 10, 100, 7), ("write", MIB - 5, 10, 8),
                     ("write", 0, 512, 9)]
    D.qemu_apply(theirs, "vdi", ops)
    run(D.our_write(ours, "vdi", ops))
    assert ours.read_bytes() == theirs.read_bytes()
    q, b = D.both("check", str(ours))
    assert b == q
