"""The convert engine: cost follows allocated data, not virtual size; JSON progress;
lean start-up."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import images_equal, ours, qimg, qio


def _convert_counting(src: Path, dst: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Convert in this process and count what the copy asked of the source and did to
    the target (deterministic, unlike a time)."""
    from blocklayer.formats.qcow2.driver import Qcow2Driver
    from blocklayer.tools.img.main import run
    counts = {"status": 0, "read": 0, "write": 0}

    def counting(name: str):  # type: ignore[no-untyped-def]
        orig = getattr(Qcow2Driver, {"status": "block_status"}.get(name, name))

        async def wrapper(self, *args, **kw):  # type: ignore[no-untyped-def]
            counts[name] += 1
            return await orig(self, *args, **kw)
        return wrapper
    for name in counts:
        monkeypatch.setattr(Qcow2Driver, {"status": "block_status"}.get(name, name),
                            counting(name))
    monkeypatch.chdir(src.parent)
    assert run(["convert", "-q", "-O", "qcow2", src.name, dst.name]) == 0
    monkeypatch.undo()
    return counts


def test_convert_cost_follows_allocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1 TiB with 16 MiB of data costs the copy what 1 GiB with the same data costs:
    the same reads and writes, and about as many block-status answers (a run of
    zeroes is answered whole when it writes nothing), not one per L2 table."""
    for name, size in (("big.qcow2", "1T"), ("small.qcow2", "1G")):
        assert qimg("create", "-q", "-f", "qcow2", name, size, cwd=tmp_path).returncode == 0
        qio(tmp_path / name, "write -P 3 0 8M", "write -P 4 500M 8M")
    big = _convert_counting(tmp_path / "big.qcow2", tmp_path / "obig.qcow2", monkeypatch)
    small = _convert_counting(tmp_path / "small.qcow2", tmp_path / "osmall.qcow2",
                              monkeypatch)
    assert big["read"] == small["read"] and big["write"] == small["write"], (big, small)
    assert big["status"] <= small["status"] + 16, (big, small)   # 2048 L2 tables
    images_equal(tmp_path / "big.qcow2", tmp_path / "obig.qcow2")
    m = qimg("map", "--output=json", "obig.qcow2", cwd=tmp_path)
    data = sum(e["length"] for e in json.loads(m.stdout) if e["data"])
    assert data == 16 << 20
    # as qemu-img lays it out
    qimg("convert", "-O", "qcow2", "big.qcow2", "qbig.qcow2", cwd=tmp_path)
    assert (tmp_path / "obig.qcow2").read_bytes() == (tmp_path / "qbig.qcow2").read_bytes()


def test_json_progress(tmp_path: Path) -> None:
    qimg("create", "-q", "-f", "raw", "s.raw", "4M", cwd=tmp_path)
    qio(tmp_path / "s.raw", "write -P 1 0 3M", fmt="raw")
    res = ours(["convert", "--json-progress", "-f", "raw", "-O", "qcow2", "s.raw", "o.qcow2"],
               tmp_path)
    assert res.rc == 0, res.err
    lines = [json.loads(x) for x in res.out.splitlines()]
    assert lines[0]["progress"] == 0 and lines[-1] == {"progress": 100.0, "done": True}


def test_startup_is_lean() -> None:
    code = ("import sys, blocklayer.tools.img.main as m\n"
            "bad = [n for n in ('asyncio', 'numpy', 'blocklayer.formats.qcow2.driver',"
            " 'blocklayer.core.node') if n in sys.modules]\nprint(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


#: modules whose import costs start-up, and which a tool should load only when needed
_WATCHED = ("numpy", "blocklayer.formats.qcow2.driver", "blocklayer.formats.qed.driver")

#: runs a tool module as ``python -m`` does and says at exit which watched modules loaded
_IMPORT_PROBE = ("import atexit, runpy, sys\n"
                 f"watched = {_WATCHED!r}\n"
                 "atexit.register(lambda: print('imported:', *[m for m in watched"
                 " if m in sys.modules], file=sys.stderr))\n"
                 "sys.argv = sys.argv[1:]\n"
                 "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")


def _imported(tool: str, args: list[str], cwd: Path) -> set[str]:
    p = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, f"blocklayer.tools.{tool}",
                        *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("imported:"), p.stderr
    return set(last.split()[1:])


def test_common_commands_import_only_what_they_use(tmp_path: Path) -> None:
    qimg("create", "-q", "-f", "qcow2", "a.qcow2", "64M", cwd=tmp_path)
    qio(tmp_path / "a.qcow2", "write -P 1 0 1M", "write -P 2 10M 64k", "write -z 20M 1M")
    qimg("create", "-q", "-f", "qed", "b.qed", "64M", cwd=tmp_path)
    qio(tmp_path / "b.qed", "write -P 1 0 1M", fmt="qed")
    qimg("create", "-q", "-f", "raw", "s.raw", "4M", cwd=tmp_path)
    qio(tmp_path / "s.raw", "write -P 3 0 1M", "write -P 4 3M 4k", fmt="raw")
    qcow2, qed = "blocklayer.formats.qcow2.driver", "blocklayer.formats.qed.driver"
    lean = [("img", ["info", "a.qcow2"], {qcow2}), ("img", ["info", "b.qed"], {qed}),
            ("io", ["-c", "read 0 4k", "a.qcow2"], {qcow2}),
            ("io", ["-c", "read 0 4k", "b.qed"], {qed}),
            ("io", ["-c", "write 12M 4k", "-c", "write -z 13M 64k", "-c", "discard 0 64k",
                    "a.qcow2"], {qcow2}),
            ("img", ["convert", "-O", "raw", "s.raw", "o.raw"], set()),
            ("img", ["convert", "-O", "qcow2", "s.raw", "o1.qcow2"], {qcow2}),
            ("img", ["convert", "-O", "qcow2", "a.qcow2", "o2.qcow2"], {qcow2}),
            ("img", ["snapshot", "-l", "a.qcow2"], {qcow2})]
    for tool, args, expected in lean:
        # probing reads the magic first: only the image's own driver is imported
        assert _imported(tool, args, tmp_path) == expected, (tool, args)
    # the bulk paths may import numpy, and still work
    for args in (["check", "a.qcow2"], ["map", "a.qcow2"], ["compare", "s.raw", "o1.qcow2"]):
        _imported("img", args, tmp_path)


def test_locked_image_errors_match(tmp_path: Path) -> None:
    from .helpers import assert_same
    from tests.conftest import need
    qimg("create", "-q", "-f", "qcow2", "lk.qcow2", "1M", cwd=tmp_path)
    holder = subprocess.Popen([need("qemu-io"), "-c", "sleep 5000", "lk.qcow2"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.7)
        for args in (["info", "lk.qcow2"], ["info", "-U", "lk.qcow2"],
                     ["resize", "lk.qcow2", "2M"], ["check", "-r", "all", "lk.qcow2"]):
            assert_same(args, tmp_path)
    finally:
        holder.kill()
        holder.wait()


def test_compressed_convert_names_the_failing_cluster(tmp_path: Path) -> None:
    # requests of many clusters, but the error names the cluster, as qemu-img's
    # one-cluster requests do
    from .helpers import assert_same_effect
    base = tmp_path / "base"
    base.mkdir()
    (base / "src.raw").write_bytes(b"z" * (3 << 16) + bytes(range(256)) * 4)
    qimg("create", "-q", "-f", "qcow2", "dst.qcow2", "1M", cwd=base)
    qio(base / "dst.qcow2", "write -P 1 128k 4k")
    assert_same_effect(["convert", "-n", "-c", "-f", "raw", "-O", "qcow2", "src.raw",
                        "dst.qcow2"], base, tmp_path)


def test_compressed_convert_read_error_names_the_cluster(tmp_path: Path) -> None:
    # qemu-img -c reads one cluster per request: an error at byte 153600 (sector 300,
    # QEMU's blkdebug) is reported at 131072
    from .helpers import ours as run_ours
    (tmp_path / "src.raw").write_bytes(b"z" * (1 << 20))
    src = ('json:{"driver": "raw", "file": {"driver": "blkdebug", "inject-error.0.event": '
           '"read_aio", "inject-error.0.iotype": "read", "inject-error.0.sector": "300", '
           '"image": {"driver": "file", "filename": "src.raw"}}}')
    res = run_ours(["convert", "-c", "-O", "qcow2", src, "out.qcow2"], tmp_path)
    assert res.rc == 1
    assert res.err == "blocklayer-img: error while reading at byte 131072: Input/output error\n"


def test_convert_lays_out_clusters_as_qemu_img(tmp_path: Path) -> None:
    """Runs of fresh clusters are allocated in bulk, in order: the image file is the
    same byte for byte as qemu-img's, across L2-table and refcount-block boundaries."""
    qimg("create", "-q", "-f", "raw", "s.raw", "40M", cwd=tmp_path)
    qio(tmp_path / "s.raw", "write -P 1 0 5M", "write -P 2 7M 100k", "write -P 3 9M 30M",
        fmt="raw")
    for cs in ("512", "4k", "64k"):
        for tool, out in ((None, "theirs.qcow2"), (ours, "ours.qcow2")):
            args = ["convert", "-O", "qcow2", "-o", f"cluster_size={cs}", "s.raw", out]
            res = qimg(*args, cwd=tmp_path) if tool is None else tool(args, tmp_path)
            assert res.returncode == 0 if tool is None else res.rc == 0
        assert (tmp_path / "ours.qcow2").read_bytes() == \
            (tmp_path / "theirs.qcow2").read_bytes(), cs
        for name in ("ours.qcow2", "theirs.qcow2"):
            (tmp_path / name).unlink()


def test_data_file_created_as_qemu_img(tmp_path: Path) -> None:
    """qcow2's external data file is created at the image's size, like a raw image
    (its first block allocated), so both tools leave the same files behind."""
    maps = []
    for who in ("ours", "theirs"):
        d = tmp_path / who
        d.mkdir()
        args = ["create", "-q", "-f", "qcow2", "-o", "data_file=n.data", "n.qcow2", "1M"]
        res = ours(args, d) if who == "ours" else qimg(*args, cwd=d)
        assert (res.rc if who == "ours" else res.returncode) == 0
        assert (d / "n.data").stat().st_size == 1 << 20
        maps.append(qimg("map", "--output=json", "n.data", cwd=d).stdout)
    assert maps[0] == maps[1]
