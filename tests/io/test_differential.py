"""blocklayer-io against qemu-io 7.2: the same commands on copies of the same raw image
must print the same (rate figures and program name aside), exit the same and leave
the same bytes."""
from __future__ import annotations

import pytest

from .conftest import assert_same, both, needs_qemu_io

pytestmark = needs_qemu_io

R = ["-f", "raw"]


def c(*cmds: str) -> list[str]:
    out: list[str] = []
    for cmd in cmds:
        out += ["-c", cmd]
    return out


CASES = {
    # the example of the issue
    "issue": R + c("write -P 0xab 0 64k", "read -P 0xab 0 64k", "write -z 4k 8k", "map"),
    # read
    "read-pattern": R + c("write -P 0x11 0 4k", "read -P 0x11 0 4k", "read -P 0x12 0 4k"),
    "read-v": R + c("write -P 0x41 3 20", "read -v 0 40", "read -v 100 1"),
    "read-q-C": R + c("write -P 5 0 512", "read -q -P 5 0 512", "read -C 0 512",
                      "write -C 0 1k"),
    "read-s-l": R + c("write -P 0x11 0 512", "read -P 0x11 -s 10 -l 20 0 1024",
                      "read -P 0 -s 512 0 1024", "read -P 0 -s 1000 0 512",
                      "read -l 10 0 512", "read -P 0 -s 10 -l 600 0 512"),
    "read-errors": R + c("read 1M 512", "read 1020k 8k", "read 0 abc", "read -1 512",
                         "read 0", "read -x 0 512", "read 0 1 2", "read -P 300 0 1",
                         "read 0 3G", "read 0 8E", "read -b 0 512", "read 0 1.5"),
    "read-numbers": R + c("read 0x10 0x20", "read 1.5k 1.2k", "read 010 1K", "read +1 1b",
                          "read 0 0", "r -q 0 1"),
    "readv": R + c("writev -P 7 0 512 1k", "readv -P 7 0 1536", "readv -P 8 0 512 512",
                   "readv -v 1k 16 16", "readv 1M 512", "readv 0 x", "readv 0 3G",
                   "readv 0 1G 1G 1G", "readv -q 0 511"),
    # write
    "write-flags": R + c("write -f 0 512", "write -z -u 0 64k", "write -z -n 64k 4k",
                         "write -z -f 1k 1k", "read -v 0 2k", "map"),
    "write-errors": R + c("write 1M 512", "write -u 0 512", "write -n 0 512",
                          "write -z -P 1 0 512", "write -c 0 64k", "write -b 0 512",
                          "write -f -c 0 512", "write -b -z 0 512", "write -c 1 512",
                          "write 0 3G", "write -P 0x100 0 1", "write -z 1020k 8k"),
    "write-source": R + c("write -s src.bin 0 10", "read -v 0 16", "write -s nosuch 0 3"),
    "writev": R + c("writev 0 512", "writev -P 0x33 -f 512 1k 512", "read -P 0x33 512 1536",
                    "writev -q 4k 4k", "writev 1M 512", "writev 0 abc"),
    # aio
    "aio": R + c("aio_write -P 0x5 0 4k", "aio_flush", "aio_read -P 0x5 0 4k", "aio_flush",
                 "aio_read -v -P 0x5 4k 16", "aio_flush", "aio_write -q 8k 4k",
                 "aio_flush", "aio_read -P 1 0 512", "aio_flush", "aio_read 1M 512",
                 "aio_flush", "aio_write -P 9 16k 4k"),
    "aio-errors": R + c("aio_write -z 0 4k 4k", "aio_write -u 0 512", "aio_read 0 abc",
                        "aio_read -i 0 512", "aio_write -i 0 512", "aio_read 0",
                        "aio_flush x", "aio_read 0 3G"),
    # other commands
    "discard": R + c("write -P 1 0 128k", "discard 0 64k", "discard -C 0 4k",
                     "discard -q 4k 4k", "discard 0 2M", "discard 0 abc", "discard 0",
                     "read -v 0 32"),
    "flush": R + c("write 0 512", "flush", "f", "flush x"),
    "truncate": R + c("truncate 2M", "length", "truncate abc", "truncate -m full 3M",
                      "length", "truncate -m foo 1M", "truncate", "t 512k", "l", "map"),
    "length-info": R + c("length", "info", "l", "i", "length x"),
    "info-file": ["-f", "file"] + c("info", "map", "alloc 0 1M"),
    "alloc": R + c("alloc 0", "alloc 0 1M", "alloc 1", "alloc 512 abc", "alloc 2M",
                   "alloc 0 2M", "alloc -1", "alloc", "alloc 1 2 3", "a 0 4k"),
    "map": R + c("map", "map x"),
    "open-close": R + c("close", "length", "close", "open -o driver=raw img.raw", "length",
                        "open img.raw", "close", "open -r -o driver=raw img.raw",
                        "write 0 1", "close", "open nosuch", "open /tmp", "open -x img.raw",
                        "open -t foo img.raw", "open -d foo img.raw", "open -i foo img.raw",
                        "open -U img.raw", "open -r -U -o driver=raw img.raw", "info",
                        "close", "open -n -o driver=raw img.raw", "info",
                        "open -o driver=raw img.raw x"),
    "open-probe": c("open img.raw", "write -P 3 0 512", "info"),
    "open-errors": R + c("close", "open", "open -o driver=raw", "open -o driver=qcow2 img.raw"),
    "sleep": R + c("sleep 10", "sleep x", "sleep -1", "sleep 0x10", "sleep"),
    "quit": R + c("length", "quit", "length"),
    "quit-args": R + c("q x"),
    "help": c("help", "help read", "help write", "help open", "help sigraise", "help foo",
              "help read x", "help map", "help sleep", "? length"),
    "unknown": R + c("foo", "length"),
    "sigraise": R + c("sigraise 0", "sigraise 100", "length"),
    "reopen": R + c("reopen -r", "write 0 1", "reopen -w", "write 0 1", "reopen -c none",
                    "reopen -c foo", "reopen x", "reopen -r -w", "reopen -o foo=bar"),
    "break": R + c("break foo bar", "remove_break foo", "resume foo", "break a"),
    # program options
    "probe-warning": c("write -P 1 0 512", "read -P 1 0 512"),
    "read-only": ["-r"] + R + c("write 0 512", "read 0 512"),
    "force-share-rw": ["-U"] + R + c("length"),
    "force-share-ro": ["-U", "-r"] + R + c("length"),
    "image-opts": ["--image-opts"] + c("info", "length") + ["driver=raw,file.filename=img.raw"],
    "image-opts-f": ["--image-opts"] + R + c("info") + ["driver=raw,file.filename=img.raw"],
    "bad-cache": ["-t", "foo"] + R + c("length"),
    "bad-discard": ["-d", "foo"] + R + c("length"),
    "bad-aio": ["-i", "foo"] + R + c("length"),
    "native-aio": ["-k"] + R + c("length"),
    "nocache": ["-n"] + R + c("write 0 4k", "read 0 4k"),
    "cache-none-discard": ["-t", "none", "-d", "unmap", "-C", "-m"] + R + c("length"),
    "long-options": ["--cmd", "length", "--format=raw", "--read-only"],
    "bad-option": ["-x"],
    "missing-arg": ["-f"],
    "unknown-long": ["--foo"],
    "two-files": R + ["a", "b"],
    "missing-file": R + c("length") + ["nosuch.raw"],
    "directory": R + c("length") + ["/tmp"],
    "no-file": c("length"),
    "unknown-format": ["-f", "foo"] + c("length"),
}


#: cases whose command line is complete; the others get the image name appended
COMPLETE = {"no-file", "help", "bad-option", "missing-arg", "unknown-long", "image-opts",
            "image-opts-f", "two-files", "missing-file", "directory"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_as_qemu_io(tmp_path, name):
    args = CASES[name]
    if name == "write-source":
        for d in ("qemu", "ours"):
            (tmp_path / d).mkdir()
            (tmp_path / d / "src.bin").write_bytes(b"abc")
    if name not in COMPLETE:
        args = args + ["img.raw"]
    q, b = both(tmp_path, args)
    assert_same(q, b)


def test_interactive(tmp_path):
    q, b = both(tmp_path, R + ["img.raw"],
                stdin="length\nwrite -P 7 0 512\nread -P 7 0 512\nfoo\n\n   \nread 0 abc\n")
    assert_same(q, b)


def test_interactive_quit(tmp_path):
    q, b = both(tmp_path, R + ["img.raw"], stdin="length\nquit\nlength\n")
    assert_same(q, b)


def test_image_with_data(tmp_path):
    content = bytes(range(256)) * 4096
    q, b = both(tmp_path, R + c("read -v 0 64", "read -v 1M 32", "readv -v 3 5 7", "map",
                                "alloc 0 1M", "write -P 0xee 1000 3000",
                                "read -v 990 40") + ["img.raw"], content=content)
    assert_same(q, b)


QCOW2_CMDS = c("alloc 0 1M", "write -P 1 64k 64k", "write -z 256k 64k", "write -c 512k 64k",
               "map", "alloc 0 1M", "discard 64k 64k", "map", "read -P 0 0 64k",
               "read -P 1 64k 64k", "truncate 2M", "length", "map")


def _qcow2_both(tmp_path, args):
    import shutil
    import subprocess
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    src = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "1M"], check=True)
    return both(tmp_path, args + ["img.raw"], content=src.read_bytes())


def test_qcow2(tmp_path):
    """Allocation, zero and compressed clusters, discard, growth: same output and the
    same bytes in the image afterwards."""
    q, b = _qcow2_both(tmp_path, QCOW2_CMDS)
    assert_same(q, b)


def test_qcow2_info(tmp_path):
    q, b = _qcow2_both(tmp_path, c("info"))
    assert_same(q, b)


def test_no_file_interactive(tmp_path):
    q, b = both(tmp_path, [], stdin="length\nopen -o driver=raw img.raw\nlength\nhelp close\n")
    assert_same(q, b)


def test_stdout_stderr_interleave_like_c(tmp_path):
    """Piped together, stdout is block-buffered as in C: the error line comes first."""
    import subprocess
    from .conftest import ROOT, blocklayer_io_cmd, make_image, normalize
    make_image(tmp_path, bytes(1 << 20))
    args = R + c("length", "foo", "write 0 1", "length") + ["img.raw"]
    outs = []
    for cmd in (["qemu-io"], blocklayer_io_cmd()):
        p = subprocess.run(cmd + args, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True,
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                "PYTHONUNBUFFERED": "1"})
        outs.append(normalize(p.stdout))
    assert outs[1] == outs[0]


def test_copy_on_read_from_backing(tmp_path):
    """-C copies what reads fetch from the backing file into the overlay."""
    import shutil
    import subprocess
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    for d in ("qemu", "ours"):
        (tmp_path / d).mkdir()
        base, top = tmp_path / d / "base.qcow2", tmp_path / d / "top.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
        subprocess.run(["qemu-io", "-c", "write -P 7 0 128k", str(base)], check=True,
                       capture_output=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2",
                        "-F", "qcow2", str(top)], check=True)
    from .conftest import blocklayer_io_cmd, run_tool
    args = ["-C"] + c("map", "read -P 7 0 64k", "map", "alloc 0 1M", "read -P 0 1020k 4k",
                      "map") + ["top.qcow2"]
    q = run_tool(["qemu-io"], tmp_path / "qemu", args, image="top.qcow2")
    b = run_tool(blocklayer_io_cmd(), tmp_path / "ours", args, image="top.qcow2")
    assert_same(q, b)


def test_snapshot_mode(tmp_path, monkeypatch):
    """-s: writes go to a temporary overlay; the image is unchanged afterwards and the
    temporary file is gone."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    q, b = _qcow2_both(tmp_path, ["-s"] + c("write -P 5 0 4k", "read -P 5 0 4k", "info", "map",
                                            "read -P 0 64k 4k", "write -z 128k 64k"))
    assert_same(q, b)
    assert b.image is not None and b.image[:4] == b"QFI\xfb"
    assert list(scratch.iterdir()) == []
