"""A failed read-write open changes nothing (issue 12, finding 1).

Every damaged image of the corpus goes through every read-write command of qemu-io and
qemu-img and of ours, each on its own copy.  Where QEMU leaves the file byte-identical,
ours must too; the error is QEMU's (the same text after the program name), never a
traceback or an "internal error"."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, need
from tests.reliability.corpus import CORPUS, Builder

SECRET = ["--object", "secret,id=s0,data=pass"]


def commands(fmt: str, img: str) -> dict[str, list[str]]:
    cmds = {
        "io": ["io", "-f", fmt, "-c", "read 0 4k", img],
        "check-r": ["img", "check", "-r", "leaks", "-f", fmt, img],
        "resize": ["img", "resize", "-f", fmt, img, "+1M"],
        "commit": ["img", "commit", "-f", fmt, img],
        "rebase": ["img", "rebase", "-u", "-b", "", "-f", fmt, img],
    }
    if fmt == "qcow2":
        cmds.update({
            "snapshot-c": ["img", "snapshot", "-c", "s1", img],
            "amend": ["img", "amend", "-f", fmt, "-o", "lazy_refcounts=off", img],
            "bitmap": ["img", "bitmap", "--add", "-f", fmt, img, "b9"],
        })
    return cmds


def run_tool(prog: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    if prog == "ours":
        kind, rest = args[0], args[1:]
        argv = [sys.executable, "-m", f"blocklayer.tools.{kind}", *rest]
        prefix = f"blocklayer-{kind}"
    else:
        argv = [need(f"qemu-{args[0]}"), *args[1:]]
        prefix = f"qemu-{args[0]}"
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    res.stderr = res.stderr.replace(prefix, "PROG")
    return res


def _first_error(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("PROG:")]
    return lines[0] if lines else ""


@pytest.mark.parametrize("build", CORPUS, ids=lambda b: b.__name__)
def test_failed_read_write_open_writes_nothing(tmp_path: Path, build: Builder) -> None:
    src = build(tmp_path)
    fmt = "qed" if src.suffix == ".qed" else "qcow2"
    original = src.read_bytes()
    problems = []
    for name, args in commands(fmt, str(src)).items():
        results = {}
        for prog in ("qemu", "ours"):
            src.write_bytes(original)
            res = run_tool(prog, args)
            results[prog] = (res, src.read_bytes() == original)
        (q, q_same), (o, o_same) = results["qemu"], results["ours"]
        text = o.stdout + o.stderr
        if "Traceback" in text or "internal error" in text:
            problems.append(f"{name}: {text.strip()[-300:]}")
        if q.returncode != 0 and q_same and not o_same:
            problems.append(f"{name}: qemu failed ({_first_error(q.stderr)}) leaving the "
                            f"file as it was, ours changed it ({_first_error(o.stderr)})")
        if q.returncode != 0 and q_same and o.returncode == 0:
            problems.append(f"{name}: qemu failed ({_first_error(q.stderr)}), ours did not")
    src.write_bytes(original)
    assert not problems, "\n".join(problems)


ISSUE_12 = [b for b in CORPUS if not b.__name__.startswith(("dirty_truncated", "truncated"))
            and b.__name__ in (
                "dirty_data_file_missing", "dirty_backing_missing", "encrypted_luks",
                "dirty_snapshot_table_past_eof", "bitmap_directory_past_eof",
                "bitmap_directory_garbage", "qed_need_check_backing_missing",
                "qed_l1_past_eof")]


@pytest.mark.parametrize("build", ISSUE_12, ids=lambda b: b.__name__)
def test_failed_open_error_is_qemus(tmp_path: Path, build: Builder) -> None:
    src = build(tmp_path)
    fmt = "qed" if src.suffix == ".qed" else "qcow2"
    original = src.read_bytes()
    for name in ("io", "check-r", "resize"):
        args = commands(fmt, str(src))[name]
        src.write_bytes(original)
        q = run_tool("qemu", args)
        src.write_bytes(original)
        o = run_tool("ours", args)
        if q.returncode != 0 and src.read_bytes() == original:
            assert o.returncode == q.returncode, (name, o.stdout, o.stderr)
            assert _first_error(o.stderr) == _first_error(q.stderr), name
