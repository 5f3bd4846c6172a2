"""Untrusted mode (issue 12, finding 5): ``--untrusted`` or ``BLOCKLAYER_UNTRUSTED=1``
refuses every host file an image names, in every tool, with one error naming it; and
``info --output=json`` says what the image would have opened without opening it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blocklayer.core import safety
from tests.conftest import ROOT, qemu_img


def ours(kind: str, *args: str, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"blocklayer.tools.{kind}", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               **(env or {})})


@pytest.fixture
def images(tmp_path: Path) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "b.qcow2"), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2",
             str(tmp_path / "t.qcow2"))
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'd.raw'}",
             str(tmp_path / "dd.qcow2"), "1M")
    # a json: backing name that would read /dev/zero as a blkdebug config
    spec = {"driver": "raw", "file": {"driver": "blkdebug", "config": "/dev/zero",
                                      "image": {"driver": "file",
                                                "filename": str(tmp_path / "b.qcow2")}}}
    qemu_img("create", "-q", "-u", "-f", "qcow2", "-b", "json:" + json.dumps(spec),
             "-F", "raw", str(tmp_path / "j.qcow2"), "1M")
    return tmp_path


CASES = {
    "io": ["-r", "-c", "read 0 4k"],
    "convert": ["convert", "-O", "raw"],
    "check": ["check"],
    "compare": ["compare"],
    "map": ["map"],
}


def _argv(case: str, img: Path, tmp: Path) -> tuple[str, list[str]]:
    if case == "io":
        return "io", [*CASES["io"], str(img)]
    if case == "convert":
        return "img", [*CASES["convert"], str(img), str(tmp / "o.raw")]
    if case == "compare":
        return "img", ["compare", str(img), str(img)]
    return "img", [*CASES[case], str(img)]


@pytest.mark.parametrize("how", ["option", "env"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("image,named", [("t.qcow2", "b.qcow2"), ("dd.qcow2", "d.raw"),
                                         ("j.qcow2", "json:")])
def test_untrusted_refuses_named_files(images: Path, case: str, how: str, image: str,
                                       named: str) -> None:
    kind, args = _argv(case, images / image, images)
    if how == "option":
        res = ours(kind, "--untrusted", *args)
    else:
        res = ours(kind, *args, env={safety.ENV: "1"})
    assert res.returncode != 0, res.stdout
    assert "named by the image is not allowed" in res.stderr, res.stderr
    assert named in res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    # without the mode the same command follows the name (or fails on it for json:)
    if image != "j.qcow2":
        assert ours(kind, *args).returncode in (0, 3) or case == "compare"


def test_untrusted_image_without_references_works(images: Path) -> None:
    res = ours("io", "--untrusted", "-r", "-c", "read 0 4k", str(images / "b.qcow2"))
    assert res.returncode == 0, res.stderr


def test_info_reports_safety_without_opening(images: Path) -> None:
    res = ours("img", "--untrusted", "info", "--output=json", str(images / "t.qcow2"))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["safety"] == {"external-references": [
        {"kind": "backing", "filename": "b.qcow2", "format": "qcow2", "json": False,
         "protocol": False}], "dirty": False, "corrupt": False, "encrypted": False}
    res = ours("img", "info", "--output=json", str(images / "dd.qcow2"),
               env={safety.ENV: "1"})
    refs = json.loads(res.stdout)["safety"]["external-references"]
    assert refs == [{"kind": "data-file", "filename": str(images / "d.raw"),
                     "json": False, "protocol": False}]
    res = ours("img", "info", "--output=json", str(images / "j.qcow2"),
               env={safety.ENV: "1"})
    assert json.loads(res.stdout)["safety"]["external-references"][0]["json"] is True
    # and without the mode, no safety section (the output stays qemu-img's)
    res = ours("img", "info", "--output=json", str(images / "t.qcow2"))
    assert "safety" not in json.loads(res.stdout)


def test_info_backing_chain_stops_at_the_first_name(images: Path) -> None:
    res = ours("img", "--untrusted", "info", "--backing-chain", str(images / "t.qcow2"))
    assert res.returncode == 1
    assert "'b.qcow2' named by the image is not allowed" in res.stderr


def test_pop_option() -> None:
    import os
    before = os.environ.pop(safety.ENV, None)
    try:
        assert safety.pop_option(["info", "x"]) == ["info", "x"]
        assert not safety.enabled()
        assert safety.pop_option(["-c", "read", "--", "--untrusted"]) == \
            ["-c", "read", "--", "--untrusted"]
        assert not safety.enabled()
    finally:
        if before is not None:
            os.environ[safety.ENV] = before
