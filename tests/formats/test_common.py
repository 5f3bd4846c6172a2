"""What every simple format must show as qemu-img does: its create options' help."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import qemu_img, run

from . import differential as D


@pytest.mark.parametrize("fmt", ["vdi", "vpc"])
def test_create_help_lists_qemus_options(tmp_path: Path, fmt: str) -> None:
    q, b = D.both("create", "-f", fmt, "-o", "help", str(tmp_path / "x"))
    assert b == q


@pytest.mark.parametrize("fmt,opts", [("vdi", "static=off"), ("vdi", "static=on"),
                                      ("vpc", "subformat=dynamic"),
                                      ("vpc", "subformat=fixed")])
@pytest.mark.parametrize("out", ["human", "json"])
def test_map_matches(tmp_path: Path, fmt: str, opts: str, out: str) -> None:
    """Block status as QEMU's: unallocated blocks read as zeroes, a static or fixed
    image is all data (zero where the file has holes)."""
    path = tmp_path / f"m.{fmt}"
    qemu_img("create", "-q", "-f", fmt, "-o", opts, str(path), str(9 * D.MIB))
    D.qemu_apply(path, fmt, [("write", 0, 4096, 1), ("write", 5 * D.MIB, D.MIB, 2),
                             ("zero", 7 * D.MIB, 4096, 0)])
    q, b = D.both("map", "-f", fmt, f"--output={out}", str(path))
    assert b == q


@pytest.mark.parametrize("fmt,opts", [("vdi", "static=off"), ("vpc", "subformat=dynamic")])
@pytest.mark.parametrize("command", [("resize", "{}", "+1M"), ("amend", "-o", "size=1G", "{}"),
                                     ("commit", "{}"), ("check", "-r", "all", "{}")])
def test_unsupported_operations_fail_as_qemus(tmp_path: Path, fmt: str, opts: str,
                                              command: tuple[str, ...]) -> None:
    path = tmp_path / f"u.{fmt}"
    qemu_img("create", "-q", "-f", fmt, "-o", opts, str(path), "4M")
    q, b = D.both(*(a.format(path) for a in command))
    assert b == q


@pytest.mark.parametrize("src_fmt,dst_fmt", [("vdi", "vpc"), ("vpc", "vdi")])
def test_convert_between_the_two(tmp_path: Path, src_fmt: str, dst_fmt: str) -> None:
    src = tmp_path / f"s.{src_fmt}"
    qemu_img("create", "-q", "-f", src_fmt, str(src), str(9 * D.MIB))
    D.qemu_apply(src, src_fmt, [("write", 0, 4096, 1), ("write", 3 * D.MIB - 7, D.MIB, 2)])
    D.check_convert_from(src, src_fmt, dst_fmt, tmp_path)


@pytest.mark.parametrize("fmt", ["vdi", "vpc"])
def test_as_a_backing_file(tmp_path: Path, fmt: str) -> None:
    """A qcow2 overlay on a vdi or vpc base: info of the chain and the data as QEMU's."""
    base, top = tmp_path / f"base.{fmt}", tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", fmt, str(base), str(9 * D.MIB))
    D.qemu_apply(base, fmt, [("write", 0, 3 * D.MIB, 1)])
    qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", fmt, str(top))
    D.qemu_apply(top, "qcow2", [("write", D.MIB, 4096, 2)])
    q, b = D.both("info", "--backing-chain", "--output=json", str(top))
    assert b == q
    model = bytearray(D.qemu_raw(top, "qcow2", tmp_path))
    assert run(D.our_read_all(top, "qcow2")) == model


@pytest.mark.parametrize("fmt", ["vdi", "vpc"])
def test_commit_into_a_base(tmp_path: Path, fmt: str) -> None:
    """qemu-img commit of a qcow2 overlay into a vdi or vpc base: the same base file."""
    made = tmp_path / f"made.{fmt}"
    qemu_img("create", "-q", "-f", fmt, str(made), str(9 * D.MIB))
    D.qemu_apply(made, fmt, [("write", 0, 3 * D.MIB, 1)])
    bases = []
    for who in ("qemu", "ours"):
        (tmp_path / who).mkdir()
        base, top = tmp_path / who / f"base.{fmt}", tmp_path / who / "top.qcow2"
        base.write_bytes(made.read_bytes())
        qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", fmt, str(top))
        D.qemu_apply(top, "qcow2", [("write", D.MIB, 4096, 2), ("write", 5 * D.MIB, D.MIB, 3),
                                    ("zero", 0, 4096, 0)])
        res = (qemu_img("commit", "-q", str(top), check=False) if who == "qemu"
               else D.tool("img", "commit", "-q", str(top)))
        assert res.returncode == 0, res.stderr
        bases.append(base.read_bytes())
    assert bases[0] == bases[1]
