"""vmdk (monolithicSparse): differential tests against QEMU 7.2's qemu-img and qemu-io."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from tests.conformance import DriverConformance
from tests.conftest import qemu_img, run, tool

from . import differential as D
from .differential import KIB, MIB, Op

SIZE = 3 * MIB + 512                    # a partial last grain
GRAIN = 64 * KIB
OPS: list[Op] = [
    ("write", 0, 100, 0x11),
    ("write", 2 * GRAIN - 1000, 5000, 0x22),        # two grains, allocated in one request
    ("zero", MIB, GRAIN, 0),                         # a whole grain of zeroes (allocates)
    ("write", MIB + 4 * KIB, 512, 0x33),
    ("write", SIZE - 512, 512, 0x44),
    ("zero", 50, 20, 0),
    ("write", 5 * GRAIN + 7, 3 * GRAIN + 3, 0x55),
]
CREATE_CASES = [((), 0), ((), 1), ((), SIZE), ((), 100 * MIB + 1),
                (("zeroed_grain=on",), SIZE), (("adapter_type=lsilogic",), SIZE),
                (("compat6=on",), MIB), (("hwversion=7", "toolsversion=123"), MIB)]
DESC = slice(512, 512 + 20 * 512)
ZERO_OPS: list[Op] = OPS + [("zero", 0, 2 * GRAIN + 10, 0), ("zero", 9 * GRAIN, GRAIN, 0),
                           ("write", 9 * GRAIN + 5, 10, 0x66), ("zero", SIZE - 512, 512, 0)]


def mask_cid(data: bytearray) -> None:
    """The random CID set to 0, and the descriptor area after its text (where a shorter
    CID leaves bytes of the old text behind) zeroed."""
    if data[:4] != b"KDMV" or len(data) < DESC.stop:
        return
    area = bytes(data[DESC])
    text = area[:area.index(0)] if 0 in area else area
    text = re.sub(rb"\nCID=[0-9a-f]+\n", b"\nCID=0\n", text)
    text = re.sub(rb'SPARSE "[^"]*"', b'SPARSE ""', text)
    data[DESC] = text.ljust(len(area), b"\0")


def _qemu_made(tmp: Path, ops: list[Op] = OPS, opts: tuple[str, ...] = ()) -> Path:
    path = tmp / "q.vmdk"
    o = [x for opt in opts for x in ("-o", opt)]
    qemu_img("create", "-q", "-f", "vmdk", *o, str(path), str(SIZE))
    D.qemu_apply(path, "vmdk", ops)
    return path


@pytest.mark.parametrize("opts,ops", [((), OPS), (("zeroed_grain=on",), ZERO_OPS)],
                         ids=["plain", "zeroed"])
def test_qemu_made_images_read_back(tmp_path: Path, opts: tuple[str, ...],
                                    ops: list[Op]) -> None:
    path = _qemu_made(tmp_path, ops, opts)
    model = bytearray(SIZE)
    D.apply_model(model, ops)
    assert run(D.our_read_all(path, "vmdk")) == model
    assert D.qemu_raw(path, "vmdk", tmp_path) == model


@pytest.mark.parametrize("opts,ops", [((), OPS), (("zeroed_grain=on",), ZERO_OPS),
                                      ((), ZERO_OPS)], ids=["plain", "zeroed", "zeros"])
def test_our_writes_are_qemus(tmp_path: Path, opts: tuple[str, ...], ops: list[Op]) -> None:
    """The same requests through qemu-io and through us give the same file (grains
    allocated at the end in QEMU's order, both grain tables, zeroed grains, a new
    CID)."""
    theirs = _qemu_made(tmp_path, [], opts)
    ours = tmp_path / "ours.vmdk"
    ours.write_bytes(theirs.read_bytes())
    D.qemu_apply(theirs, "vmdk", ops)
    run(D.our_write(ours, "vmdk", ops))
    a, b = bytearray(ours.read_bytes()), bytearray(theirs.read_bytes())
    mask_cid(a)
    mask_cid(b)
    assert a == b
    assert qemu_img("check", str(ours)).stdout == "No errors were found on the image.\n"


def test_first_write_changes_the_cid(tmp_path: Path) -> None:
    path = _qemu_made(tmp_path, [])
    before = qemu_img("info", "--output=json", str(path)).stdout
    run(D.our_write(path, "vmdk", [("write", 0, 512, 1)]))
    after = qemu_img("info", "--output=json", str(path)).stdout
    assert re.search(r'"cid": \d+', before).group() != re.search(r'"cid": \d+', after).group()


def test_our_images_pass_qemu_check_and_compare(tmp_path: Path) -> None:
    path, raw = tmp_path / "ours.vmdk", tmp_path / "model.raw"
    run(D.our_create(path, "vmdk", SIZE))
    run(D.our_write(path, "vmdk", OPS))
    model = bytearray(SIZE)
    D.apply_model(model, OPS)
    raw.write_bytes(model)
    assert qemu_img("check", str(path)).returncode == 0
    assert qemu_img("compare", "-f", "vmdk", "-F", "raw", str(path), str(raw)).returncode == 0


@pytest.mark.parametrize("opts,size", CREATE_CASES)
def test_create_is_byte_identical(tmp_path: Path, opts: tuple[str, ...], size: int) -> None:
    q, b = tmp_path / "q.vmdk", tmp_path / "b.vmdk"
    o = [x for opt in opts for x in ("-o", opt)]
    qr = qemu_img("create", "-f", "vmdk", *o, str(q), str(size))
    br = tool("img", "create", "-f", "vmdk", *o, str(b), str(size))
    assert br.returncode == 0 and br.stdout.replace(str(b), str(q)) == qr.stdout
    assert D.masked_file(b, mask_cid) == D.masked_file(q, mask_cid)


@pytest.mark.parametrize("args", [("-o", "preallocation=x"), ("-o", "adapter_type=scsi"),
                                  ("-o", "subformat=foo"), ("-o", "compat6=on,hwversion=7"),
                                  ("-o", "zeroed_grain=maybe"), ("-o", "cluster_size=4096")])
def test_create_errors_are_qemus(tmp_path: Path, args: tuple[str, ...]) -> None:
    q, b = D.both("create", "-f", "vmdk", *args, str(tmp_path / "x.vmdk"), "1M")
    assert b[0::2] == q[0::2]


@pytest.mark.parametrize("args", [(), ("--output=json",), ("-f", "vmdk"),
                                  ("-f", "vmdk", "--output=json")])
def test_info_matches(tmp_path: Path, args: tuple[str, ...]) -> None:
    path = _qemu_made(tmp_path)
    theirs, ours = D.info_pair(path, *args)
    assert ours == theirs


@pytest.mark.parametrize("opts", [(), ("zeroed_grain=on",)], ids=["plain", "zeroed"])
def test_map_matches(tmp_path: Path, opts: tuple[str, ...]) -> None:
    path = _qemu_made(tmp_path, ZERO_OPS, opts)
    for args in ((), ("--output=json",)):
        theirs, ours = D.both("map", *args, str(path))
        assert ours == theirs


def test_probe(tmp_path: Path) -> None:
    path = _qemu_made(tmp_path, [])
    theirs, ours = D.info_pair(path)
    assert ours == theirs and "file format: vmdk" in ours[1]


@pytest.mark.parametrize("target", ["qcow2", "raw", "vmdk"])
def test_convert_from_vmdk(tmp_path: Path, target: str) -> None:
    D.check_convert_from(_qemu_made(tmp_path), "vmdk", target, tmp_path)


@pytest.mark.parametrize("source", ["qcow2", "raw"])
def test_convert_to_vmdk(tmp_path: Path, source: str) -> None:
    dst = D.check_convert_to(tmp_path, source, "vmdk", [], SIZE, OPS, mask_cid)
    assert qemu_img("check", str(dst)).returncode == 0


# ---- backing (parent) links ------------------------------------------------------------

def _overlay(tmp: Path) -> Path:
    base, top = tmp / "base.vmdk", tmp / "top.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", str(base), str(SIZE))
    D.qemu_apply(base, "vmdk", [("write", 0, 3 * GRAIN + 5, 0x77), ("write", SIZE - 512, 512, 9)])
    qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", str(top))
    return top


def test_backing_reads_writes_and_info(tmp_path: Path) -> None:
    top = _overlay(tmp_path)
    theirs = tmp_path / "theirs.vmdk"
    theirs.write_bytes(top.read_bytes())
    ops: list[Op] = [("write", 100, 10, 1), ("write", GRAIN + 7, 2 * GRAIN, 2)]
    D.qemu_apply(theirs, "vmdk", ops)
    run(D.our_write(top, "vmdk", ops))
    a, b = bytearray(top.read_bytes()), bytearray(theirs.read_bytes())
    mask_cid(a)
    mask_cid(b)
    assert a == b
    assert run(D.our_read_all(top, "vmdk")) == D.qemu_raw(top, "vmdk", tmp_path)
    for args in ((), ("--backing-chain",), ("--output=json",)):
        q, o = D.info_pair(top, *args)
        assert o == q, args


def test_create_with_backing_is_qemus(tmp_path: Path) -> None:
    top = _overlay(tmp_path)
    ours = tmp_path / "ours.vmdk"
    res = tool("img", "create", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", str(ours))
    assert res.returncode == 0, res.stderr
    assert D.masked_file(ours, mask_cid) == D.masked_file(top, mask_cid)
    assert re.search(rb"parentCID=[0-9a-f]+", ours.read_bytes()[DESC]).group() == \
        re.search(rb"parentCID=[0-9a-f]+", top.read_bytes()[DESC]).group()
    raw = tmp_path / "r.raw"
    qemu_img("create", "-q", "-f", "raw", str(raw), "1M")
    q, b = D.both("create", "-f", "vmdk", "-b", str(raw), "-F", "raw", str(tmp_path / "x.vmdk"))
    assert b[0::2] == q[0::2]


# ---- descriptor files with flat extents -----------------------------------------------

@pytest.mark.parametrize("sub", ["monolithicFlat", "twoGbMaxExtentFlat"])
def test_flat_extents(tmp_path: Path, sub: str) -> None:
    path = _qemu_made(tmp_path, OPS, (f"subformat={sub}",))
    model = bytearray(SIZE)
    D.apply_model(model, OPS)
    assert run(D.our_read_all(path, "vmdk")) == model
    ops: list[Op] = [("write", 7, 70000, 0x61), ("zero", MIB, 1000, 0)]
    run(D.our_write(path, "vmdk", ops))
    D.apply_model(model, ops)
    assert D.qemu_raw(path, "vmdk", tmp_path) == model
    for args in ((), ("--output=json",)):
        q, b = D.info_pair(path, *args)
        assert b == q, args
    D.check_convert_from(path, "vmdk", "qcow2", tmp_path)


def test_flat_extents_are_external_files(tmp_path: Path) -> None:
    from blocklayer.core.errors import BlockError
    from blocklayer.core.open import open_image
    from blocklayer.core.options import OpenFlags
    path = _qemu_made(tmp_path, [], ("subformat=monolithicFlat",))

    async def main() -> None:
        with pytest.raises(BlockError, match="not allowed"):
            await open_image(str(path), fmt="vmdk",
                             flags=OpenFlags(allow_external_files=False))
    run(main())


# ---- check ---------------------------------------------------------------------------

GT0, RGT0 = 27 * 512, 22 * 512          # the grain tables of a 3 MiB image


@pytest.mark.parametrize("edits", [
    [],
    [(GT0 + 16 * 4, "<I", 0x100000), (RGT0 + 16 * 4, "<I", 0x100000),
     (GT0 + 20 * 4, "<I", 0x100001)],                # grains past the end of the file
    [(26 * 512, "<I", 0x100000)],                    # a grain table past the end
    [(GT0 + 3 * 4, "<I", 1)],                        # GTE 1 without zeroed grains
], ids=["clean", "past-eof", "gt-past-eof", "gte-1"])
def test_check_matches(tmp_path: Path, edits: list[tuple[int, str, int]]) -> None:
    path = D.patched(_qemu_made(tmp_path), tmp_path / "c.vmdk", edits)
    for args in ((), ("--output=json",), ("-r", "all"), ("-r", "leaks")):
        q = qemu_img("check", *args, str(path), check=False)
        b = tool("img", "check", *args, str(path))
        assert (b.returncode, b.stdout, D.ours_named(b.stderr)) == \
            (q.returncode, q.stdout, q.stderr), args
    assert run(D.our_read_all(path, "vmdk")) == D.qemu_raw(path, "vmdk", tmp_path)


# ---- hostile headers -------------------------------------------------------------------

HOSTILE = [
    [(0x04, "<I", 9)],                               # version
    [(0x14, "<Q", 3)],                               # granularity not a power of two (fine)
    [(0x14, "<Q", 1 << 40)],                         # huge granularity
    [(0x0C, "<Q", 1 << 60)],                         # huge capacity (grain count)
    [(0x2C, "<I", 0)],                               # no GTEs per GT
    [(0x2C, "<I", 1 << 30)],                         # huge GTs
    [(0x38, "<Q", 1 << 40)],                         # GD far past the end of the file
]


@pytest.mark.parametrize("edits", HOSTILE)
def test_hostile_headers(tmp_path: Path, edits: list[tuple[int, str, int]]) -> None:
    path = D.patched(_qemu_made(tmp_path), tmp_path / "h.vmdk", edits)
    b = D.ours_limited("info", "-f", "vmdk", str(path))
    assert "Traceback" not in b.stderr
    q = qemu_img("info", "-f", "vmdk", str(path), check=False)
    assert b.returncode == q.returncode
    if "Could not open" in q.stderr:
        assert D.ours_named(b.stderr) == q.stderr
    br = D.ours_limited("convert", "-O", "raw", str(path), str(tmp_path / "b.raw"))
    assert "Traceback" not in br.stderr


# ---- conformance and the model test ----------------------------------------------------

class TestVmdkConformance(DriverConformance):
    size = 4 * MIB

    def make(self, tmp_path: Path) -> str:
        path = tmp_path / "c.vmdk"
        qemu_img("create", "-q", "-f", "vmdk", str(path), str(self.size))
        return str(path)

    def open_args(self, filename: str) -> dict[str, Any]:
        return {"fmt": "vmdk"}

    def verify(self, filename: str) -> None:
        res = qemu_img("check", "-f", "vmdk", filename, check=False)
        assert res.returncode == 0, res.stdout + res.stderr


@D.model_settings()
@given(plan=D.batches(SIZE, GRAIN))
def test_random_model(tmp_path: Path, plan: list[D.Batch]) -> None:
    path = D.model_roundtrip(tmp_path, "vmdk", [], SIZE, plan)
    assert qemu_img("check", str(path)).returncode == 0
