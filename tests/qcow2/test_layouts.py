"""The on-disk structures declared once in layout.py: header fields by name, the
snapshot table entry, the bitmap directory entry; each parsed and built, and checked
against images qemu-img writes."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from blocklayer.core.errors import ImageCorrupt
from blocklayer.formats.qcow2 import layout as L
from blocklayer.formats.qcow2.snapshot import Snapshot, build_table
from tests.conftest import qemu_img

# the offsets of docs/interop/qcow2.txt, written out by hand (the code computes them)
SPEC_OFFSETS = {"magic": 0, "version": 4, "backing_file_offset": 8, "backing_file_size": 16,
                "cluster_bits": 20, "size": 24, "crypt_method": 32, "l1_size": 36,
                "l1_table_offset": 40, "refcount_table_offset": 48,
                "refcount_table_clusters": 56, "nb_snapshots": 60, "snapshots_offset": 64,
                "incompatible_features": 72, "compatible_features": 80,
                "autoclear_features": 88, "refcount_order": 96, "header_length": 100}


def test_header_field_offsets_are_the_spec() -> None:
    assert {n: off for n, (off, _) in L.HEADER_FIELDS.items()} == SPEC_OFFSETS


@pytest.mark.parametrize("fields", [
    {"size": 1 << 40},
    {"l1_size": 7, "l1_table_offset": 0x30000},
    {"nb_snapshots": 3, "snapshots_offset": 0x50000},
    {"refcount_table_offset": 0x10000, "refcount_table_clusters": 2},
    {"l1_table_offset": 0x30000, "refcount_table_offset": 0x10000,
     "refcount_table_clusters": 1},
    {"incompatible_features": L.INCOMPAT_DIRTY},
    {"size": 512, "incompatible_features": L.INCOMPAT_CORRUPT},
])
def test_field_writes_patch_what_build_writes(fields: dict[str, int]) -> None:
    """Patching fields in place gives the bytes a header built with them has."""
    h = L.Header(size=1 << 30, l1_size=16, l1_table_offset=0x30000,
                 refcount_table_offset=0x10000, refcount_table_clusters=1)
    buf = bytearray(h.build())
    writes = L.header_field_writes(fields)
    for offset, data in writes:
        buf[offset:offset + len(data)] = data
    for name, value in fields.items():
        setattr(h, name, value)
    assert bytes(buf) == h.build()
    assert len(writes) == (2 if {"size", "incompatible_features"} <= set(fields) else 1)


def test_header_fields_read_back() -> None:
    h = L.Header(nb_snapshots=5, snapshots_offset=0x70000)
    names = ("nb_snapshots", "snapshots_offset")
    start, length = L.header_field_span(names)
    assert (start, length) == (60, 12)
    assert L.parse_header_fields(h.build()[start:start + length], names) == (5, 0x70000)


def test_probe_and_cluster_bits() -> None:
    raw = L.Header(cluster_bits=12).build()
    assert L.probe_version(raw) == 3
    assert L.peek_cluster_bits(raw) == 12
    assert L.probe_version(b"QFI") is None
    assert L.peek_cluster_bits(b"\0" * 64) is None


def test_snapshot_entry_round_trip() -> None:
    sn = Snapshot(0x40000, 16, "1", "first", vm_state_size=5 << 32, date_sec=7,
                  date_nsec=9, vm_clock_nsec=11, disk_size=1 << 30, icount=3)
    raw = sn.build()
    fixed = L.SnapshotFixed.parse(raw[:L.SNAPSHOT_FIXED.size])
    assert fixed.build() == raw[:L.SNAPSHOT_FIXED.size]
    assert (fixed.l1_table_offset, fixed.l1_size, fixed.id_str_size, fixed.name_size) == \
        (0x40000, 16, 1, 5)
    assert fixed.vm_state_size == 0                     # too big for the 32-bit field
    assert fixed.entry_size == len(raw)
    extra = L.SNAPSHOT_EXTRA.unpack_from(raw, L.SNAPSHOT_FIXED.size)
    assert extra == (5 << 32, 1 << 30, 3)
    assert len(build_table([sn, sn])) == -(-len(raw) // 8) * 8 + len(raw)


def test_bitmap_entry_round_trip_and_truncation() -> None:
    e = L.BitmapDirEntry(0x90000, 1, L.BME_FLAG_AUTO, 1, 16, 4, 0, b"bm-1")
    raw = e.build()
    assert len(raw) == L.bitmap_entry_size(4) == 32
    got = L.BitmapDirEntry.parse_from(raw + raw, 32)
    assert got is not None and got.name == "bm-1" and got.end == 64
    assert (got.table_offset, got.table_size, got.flags, got.granularity_bits) == \
        (0x90000, 1, L.BME_FLAG_AUTO, 16)
    assert [x.name for x in L.bitmap_directory(raw + raw, 2, "cut")] == ["bm-1", "bm-1"]
    with pytest.raises(ImageCorrupt, match="cut"):
        list(L.bitmap_directory(raw, 2, "cut"))
    assert L.parse_bitmap_directory(raw, 1) == [
        {"name": "bm-1", "granularity": 65536, "flags": ["auto"]}]
    with pytest.raises(ImageCorrupt, match="Bitmap directory is truncated"):
        L.parse_bitmap_directory(raw[:26], 1)


def test_layouts_read_what_qemu_wrote(tmp_path: Path) -> None:
    """The declarations against a real image: snapshot entry and bitmap directory."""
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), "4M")
    qemu_img("snapshot", "-c", "snap-one", str(img))
    qemu_img("bitmap", "--add", str(img), "dirty0")
    raw = img.read_bytes()
    h = L.parse_header(raw[:65536])
    fixed = L.SnapshotFixed.parse(raw[h.snapshots_offset:h.snapshots_offset
                                      + L.SNAPSHOT_FIXED.size])
    start = h.snapshots_offset + L.SNAPSHOT_FIXED.size + fixed.extra_data_size
    assert raw[start + fixed.id_str_size:start + fixed.id_str_size + fixed.name_size] \
        == b"snap-one"
    assert fixed.l1_size == h.l1_size
    ext = h.bitmaps
    assert ext is not None
    directory = raw[ext.directory_offset:ext.directory_offset + ext.directory_size]
    (entry,) = L.bitmap_directory(directory, ext.nb_bitmaps, "cut")
    assert entry.name == "dirty0" and entry.end == ext.directory_size
    assert struct.unpack_from(">Q", raw, entry.table_offset)[0] & \
        ~L.BME_TABLE_OFFSET_MASK == 0
