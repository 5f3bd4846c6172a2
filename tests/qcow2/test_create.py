"""Fresh images: laid out byte for byte as qemu-img lays them out."""
from __future__ import annotations

from pathlib import Path

import pytest

from blocklayer.core.errors import BlockError
from tests.conftest import qemu_img, run

from .helpers import MIB, assert_clean, create, qemu_info, same_file

CASES = [
    ("1G", {}),
    ("1000", {}),
    ("1G", {"cluster_size": 512}),
    ("4G", {"cluster_size": 512, "refcount_bits": 1}),
    ("64M", {"cluster_size": 2 * MIB, "refcount_bits": 64}),
    ("1G", {"compat": "0.10"}),
    ("1G", {"compat": "v3", "lazy_refcounts": True, "compression_type": "zstd"}),
    ("1G", {"extended_l2": True, "cluster_size": 32768}),
    ("10M", {"preallocation": "metadata"}),
    ("10M", {"preallocation": "metadata", "cluster_size": 4096, "refcount_bits": 8}),
    ("3G", {"preallocation": "metadata", "cluster_size": 2 * MIB}),
    ("10M", {"preallocation": "metadata", "extended_l2": True}),
    ("20M", {"preallocation": "falloc"}),
    ("20M", {"preallocation": "full", "cluster_size": 512}),
    ("20M", {"preallocation": "falloc", "extended_l2": True}),
    ("20M", {"preallocation": "full", "cluster_size": 2 * MIB, "refcount_bits": 1}),
]


def _qemu_opts(opts: dict) -> list[str]:
    if not opts:
        return []
    parts = [f"{k}={'on' if v is True else v}" for k, v in opts.items()]
    return ["-o", ",".join(parts)]


def _size(text: str) -> int:
    mult = {"G": 1 << 30, "M": MIB}
    return int(text[:-1]) * mult[text[-1]] if text[-1] in mult else int(text)


@pytest.mark.parametrize("size,opts", CASES, ids=[f"{s}-{o}" for s, o in CASES])
def test_create_matches_qemu(tmp_path: Path, size: str, opts: dict) -> None:
    theirs, ours = tmp_path / "theirs.qcow2", tmp_path / "ours.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", *_qemu_opts(opts), str(theirs), size)
    run(create(ours, _size(size), **opts))
    assert same_file(ours, theirs)
    a, b = qemu_info(ours), qemu_info(theirs)
    if opts.get("preallocation") in ("falloc", "full"):    # ext4 extent blocks vary
        a.pop("actual-size"), b.pop("actual-size")
    assert a == b
    assert_clean(ours)


def test_create_with_backing_and_data_file(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    theirs_dir = tmp_path / "theirs"
    theirs_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    for d in (tmp_path, theirs_dir):
        qemu_img("create", "-q", "-f", "qcow2", str(d / "base.qcow2"), "5M")
    for name, opts in (("b", {"backing_file": "base.qcow2", "backing_fmt": "qcow2"}),
                       ("d", {"data_file": "d.data", "data_file_raw": True}),
                       ("e", {"data_file": "e.data", "extended_l2": True})):
        ours, theirs = tmp_path / f"{name}.qcow2", theirs_dir / f"{name}.qcow2"
        qopts = dict(opts)
        args = []
        if "backing_file" in qopts:
            args = ["-b", qopts.pop("backing_file"), "-F", qopts.pop("backing_fmt")]
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args, *_qemu_opts(qopts),
                        theirs.name, *([] if args else ["5M"])], cwd=theirs_dir, check=True)
        run(create(ours, None if args else 5 * MIB, **opts))
        assert same_file(ours, theirs)
        if "data_file" in opts:
            assert same_file(tmp_path / opts["data_file"], theirs_dir / opts["data_file"])
        a, b = qemu_info(ours), qemu_info(theirs)
        a.pop("full-backing-filename", None), b.pop("full-backing-filename", None)
        assert a == b
        assert_clean(ours)


@pytest.mark.parametrize("opts,message", [
    ({"cluster_size": 1000}, "Cluster size must be a power of two between 512 and 2048k"),
    ({"cluster_size": 8192, "extended_l2": True},
     "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"),
    ({"refcount_bits": 3}, "Refcount width must be a power of two and may not exceed 64 bits"),
    ({"compat": "0.10", "refcount_bits": 8}, "Different refcount widths than 16 bits require "
     "compatibility level 1.1 or above (use version=v3 or greater)"),
    ({"compat": "0.9"}, "Parameter 'version' does not accept value '0.9'"),
    ({"data_file_raw": True}, "data-file-raw requires data-file"),
    ({"backing_fmt": "raw"}, "Backing format cannot be used without backing file"),
    ({"compression_type": "foo"}, "Parameter 'compression-type' does not accept value 'foo'"),
])
def test_create_errors(tmp_path: Path, opts: dict, message: str) -> None:
    with pytest.raises(BlockError) as exc:
        run(create(tmp_path / "x.qcow2", MIB, **opts))
    assert exc.value.message == message
