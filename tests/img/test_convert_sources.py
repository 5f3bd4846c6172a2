"""convert of several sources into one image, against qemu-img 7.2 on the same inputs.

Sources of odd sizes (not multiples of 512, 4 KiB or the cluster), an empty one, raw
and qcow2 (clusters of 512 B, 4 KiB and 2 MiB, one with a backing file) are
concatenated; the output must have qemu-img's content, pass ``qemu-img check`` and
have the same allocation (``map --output=json``) and be the same file byte for byte.
Our tool runs in-process (one interpreter start for the module).
"""
from __future__ import annotations

import itertools
import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import normalize, qimg, qio

SOURCES = {
    "a": "a.raw", "b": "b.raw", "c": "c.raw", "e": "e.raw", "f": "f.raw", "h": "h.raw",
    "q4": "q4.qcow2", "q5": "q5.qcow2", "q2m": "q2m.qcow2", "top": "top.qcow2",
    "q5h": "q5h.qcow2", "t5": "t5.qcow2",
}


def _pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(scope="module")
def srcdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sources")
    a = bytearray(_pattern(99841, 1))                   # not a multiple of 512
    a[30000:33000] = bytes(3000)                        # zeroes written as data
    (d / "a.raw").write_bytes(bytes(a))
    (d / "b.raw").write_bytes(b"\x07" * 70000)
    (d / "c.raw").write_bytes(b"\x09" * 12800)          # whole sectors, not 4 KiB
    (d / "e.raw").write_bytes(b"")
    (d / "f.raw").write_bytes(bytes(65536) + b"\x05" * 65636)
    with open(d / "h.raw", "wb") as f:                  # sparse, data in the middle
        f.truncate(300000)
        f.seek(150000)
        f.write(b"\x0b" * 5000)
    for name, size, cs, cmds in (
            ("q4.qcow2", "200k", "4k", ["write -P 3 0 12k", "write -z 40k 64k",
                                        "write -P 4 190k 3k"]),
            ("q5.qcow2", "100000", "512", ["write -P 6 1k 20k", "write -z 30k 2k"]),
            ("q2m.qcow2", "3M", "2M", ["write -P 8 1M 512k"]),
            ("q5h.qcow2", "256k", "512", ["write -P 1 0 16k", "write -P 2 200k 28k"]),
            ("bk.qcow2", "1M", "64k", ["write -P 1 0 1M"]),
            ("bk2.qcow2", "2M", "64k", ["write -P 12 0 2M"])):
        assert qimg("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cs}", name, size,
                    cwd=d).returncode == 0
        qio(d / name, *cmds)
    qimg("create", "-q", "-f", "qcow2", "-b", "bk.qcow2", "-F", "qcow2", "top.qcow2", "2M",
         cwd=d)
    qio(d / "top.qcow2", "write -P 2 64k 64k", "write -P 9 1500k 4k")
    qimg("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "-b", "bk.qcow2", "-F",
         "qcow2", "t5.qcow2", "1M", cwd=d)             # L2 tables of 32 KiB
    qio(d / "t5.qcow2", "write -P 4 0 8k", "write -P 5 100k 8k")
    qimg("snapshot", "-c", "sn1", "top.qcow2", cwd=d)
    return d


def run_ours(args: list[str], cwd: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """blocklayer-img in this interpreter (one start-up for the whole module)."""
    from blocklayer.tools.img.main import run
    capsys.readouterr()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        rc = run(args)
    finally:
        os.chdir(old)
    return rc, normalize(capsys.readouterr().err)


def _argv(spec: str, srcdir: Path, out: str) -> list[str]:
    """Source nicknames to file names; ``@name``: an absolute path (a backing file is
    found relative to the output)."""
    return [str(srcdir / w[1:]) if w.startswith("@") else SOURCES.get(w, w)
            for w in spec.split()] + [out]


def _map(img: Path) -> str:
    return qimg("map", "--output=json", str(img)).stdout


def convert_both(spec: str, srcdir: Path, tmp: Path, capsys: pytest.CaptureFixture[str],
                 target: str | None = None) -> tuple[Path, Path, str]:
    """Run qemu-img and ours on the same sources (``-n``: on copies of ``target``)."""
    theirs, mine = tmp / "theirs.img", tmp / "ours.img"
    for out in (theirs, mine):
        if target:
            shutil.copy(srcdir / target, out)
    ref = qimg("convert", *_argv(spec, srcdir, str(theirs)), cwd=srcdir)
    rc, err = run_ours(["convert", *_argv(spec, srcdir, str(mine))], srcdir, capsys)
    ref_err = normalize(ref.stderr).replace(str(theirs), "OUT")
    assert (rc, err.replace(str(mine), "OUT")) == (ref.returncode, ref_err), spec
    return theirs, mine, ref_err


def assert_same_image(theirs: Path, mine: Path, fmt: str) -> None:
    cmp = qimg("compare", "-f", fmt, "-F", fmt, str(theirs), str(mine))
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    if fmt != "raw":
        chk = qimg("check", str(mine))
        assert chk.returncode == 0, chk.stdout + chk.stderr
    assert _map(mine) == _map(theirs)
    assert mine.read_bytes() == theirs.read_bytes(), "files differ"


C = "-c -O qcow2"
COMPRESSED = [
    f"{C} -f raw a b", f"{C} -f raw b a", f"{C} -f raw a e b", f"{C} -f raw e e",
    f"{C} -o cluster_size=4k -f raw c a c", f"{C} -o cluster_size=512 -f raw b a",
    f"{C} -o cluster_size=2M -f raw f h b", f"{C} -o cluster_size=4k a q4 b",
    f"{C} q5 a q4", f"{C} -o cluster_size=4k q2m a", f"{C} top a", f"{C} -f raw a",
    f"{C} -S 0 -o cluster_size=4k -f raw h b", f"{C} -S 0 -f raw f",
    f"{C} -l snapshot.name=sn1 top a", f"{C} -B @bk.qcow2 -F qcow2 t5",
]


@pytest.mark.parametrize("spec", COMPRESSED)
def test_compressed(spec: str, srcdir: Path, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    theirs, mine, _ = convert_both(spec, srcdir, tmp_path, capsys)
    assert_same_image(theirs, mine, "qcow2")


UNCOMPRESSED = [
    "-O qcow2 -o cluster_size=4k a q4 b", "-O raw a q4 b", "-O qcow2 -f raw f h b",
    "-O qcow2 q5 a q4", "-O qcow2 -o cluster_size=4k q2m e a", "-O qcow2 top a",
    "-S 0 -O qcow2 -o cluster_size=4k -f raw h a", "-S 512 -O qcow2 -f raw a f",
    "-S 3k -O qcow2 -o cluster_size=4k a q4 c", "-S 64k -O qcow2 -o cluster_size=512 h a",
    "-O qcow2 -B @bk.qcow2 -F qcow2 top", "-O qcow2 -B @bk2.qcow2 -F qcow2 top",
    "-O qcow2 -o cluster_size=4k -B @bk2.qcow2 -F qcow2 -S 0 top",
]


@pytest.mark.parametrize("spec", UNCOMPRESSED)
def test_uncompressed(spec: str, srcdir: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    theirs, mine, _ = convert_both(spec, srcdir, tmp_path, capsys)
    assert_same_image(theirs, mine, spec.split("-O ")[1].split()[0])


EXISTING_TARGET = [                 # (sources, the target both start from)
    ("-n -O qcow2 a q4 b", "bk2.qcow2"),
    ("-n --target-is-zero -O qcow2 -f raw h b", "bk2.qcow2"),
    ("-n -c -O qcow2 -f raw b a", "bk2.qcow2"),          # a partial cluster mid-image
    ("-n -B @bk.qcow2 -O qcow2 top", "bk2.qcow2"),
    ("-n -S 64k -O qcow2 a q5 b h", "bk2.qcow2"),
    ("-n -O qcow2 q5h a", "bk2.qcow2"),       # a hole over L2 tables, cut as QEMU cuts it
]


@pytest.mark.parametrize("spec,target", EXISTING_TARGET)
def test_existing_target(spec: str, target: str, srcdir: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    theirs, mine, _ = convert_both(spec, srcdir, tmp_path, capsys, target=target)
    assert_same_image(theirs, mine, "qcow2")


FAILURES = [
    "-O qcow2 -B @bk.qcow2 -F qcow2 top a", "-O qcow2 -B @bk.qcow2 top a",
    "-O qcow2 -o backing_file=bk.qcow2 top a", "--bitmaps -O qcow2 top a",
    "-l sn1 -O qcow2 top a", "-l snapshot.name=sn1 -O qcow2 a top",
    "-l snapshot.name=nosuch -O qcow2 top a", "-s sn1 -O qcow2 top a",
    "-c -O qcow2 -o preallocation=metadata a b", "-c -O qcow2 -o encryption=on a b",
    "-n -o cluster_size=4k -O qcow2 a b", "-O raw -B @bk.qcow2 -F qcow2 top",
    "-B @bk.qcow2 -O qcow2 nosuch.qcow2", "-C -S 4k -O qcow2 a b",
    "--skip-broken-bitmaps -O qcow2 a b", "-O qcow2 -f raw a nosuch.raw",
    "-l snapshot.foo=1 -O qcow2 top a",
]


@pytest.mark.parametrize("spec", FAILURES)
def test_failures(spec: str, srcdir: Path, tmp_path: Path,
                  capsys: pytest.CaptureFixture[str]) -> None:
    _, mine, err = convert_both(spec, srcdir, tmp_path, capsys)
    assert err and not mine.exists()


def test_target_is_zero_with_backing(srcdir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    # qemu-img 7.2 reports the error, converts nothing and exits 0
    spec = "-n --target-is-zero -B @bk.qcow2 -F qcow2 -O qcow2 top"
    theirs, mine, err = convert_both(spec, srcdir, tmp_path, capsys, target="bk2.qcow2")
    assert "Cannot use --target-is-zero" in err
    assert mine.read_bytes() == theirs.read_bytes() == (srcdir / "bk2.qcow2").read_bytes()


# ---------------------------------------------------------------------------------------
# Random sources
# ---------------------------------------------------------------------------------------

_EXAMPLE = itertools.count()
_piece = st.tuples(st.sampled_from(["data", "zero", "hole"]), st.integers(1, 40000))
_source = st.tuples(st.lists(_piece, min_size=0, max_size=4),
                    st.sampled_from(["raw", "raw", "512", "64k"]))     # qcow2 clusters


def _write_source(path: Path, pieces: list[tuple[str, int]], seed: int) -> None:
    with open(path, "wb") as f:
        for i, (kind, n) in enumerate(pieces):
            if kind == "hole":
                f.seek(n, 1)
            else:
                f.write(_pattern(n, seed + i) if kind == "data" else bytes(n))
        f.truncate(f.tell())


def _random_source(d: Path, i: int, pieces: list[tuple[str, int]], fmt: str) -> str:
    """A raw file of ``pieces``, or qcow2 with ``fmt`` clusters made from one."""
    _write_source(d / f"s{i}.raw", pieces, 100 * i)
    if fmt == "raw":
        return f"s{i}.raw"
    assert qimg("convert", "-f", "raw", "-O", "qcow2", "-o", f"cluster_size={fmt}",
                f"s{i}.raw", f"s{i}.qcow2", cwd=d).returncode == 0
    return f"s{i}.qcow2"


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sources=st.lists(_source, min_size=2, max_size=3),
       cluster=st.sampled_from(["512", "4k", "64k"]), compressed=st.booleans(),
       sparse=st.sampled_from(["4k", "0", "1k", "8k"]))
def test_random_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        sources: list[tuple[list[tuple[str, int]], str]], cluster: str,
                        compressed: bool, sparse: str) -> None:
    d = tmp_path / f"r{next(_EXAMPLE)}"
    d.mkdir()
    names = [_random_source(d, i, pieces, fmt) for i, (pieces, fmt) in enumerate(sources)]
    spec = (f"{'-c ' if compressed else ''}-S {sparse} -O qcow2 -o cluster_size={cluster} "
            f"{' '.join(names)}")
    theirs, mine, _ = convert_both(spec, d, d, capsys)
    assert_same_image(theirs, mine, "qcow2")
    shutil.rmtree(d)
