"""Bad invocations end with one clear line and a non-zero exit, never a traceback.

Where the line goes follows qemu-io: open and option errors on stderr (``prog: ...``),
a command's own failure (a bad number, an I/O error) on stdout.
"""
from __future__ import annotations

import pytest

from .conftest import blocklayer_io_cmd, make_image, run_tool


def ours(tmp_path, *args: str, stdin: str | None = None):
    make_image(tmp_path, bytes(64 << 10))
    return run_tool(blocklayer_io_cmd(), tmp_path, list(args), stdin)


@pytest.mark.parametrize("args, stream, line", [
    (["-f", "raw", "-c", "length", "nosuch.raw"], "err",
     "blocklayer-io: can't open device nosuch.raw: Could not open 'nosuch.raw': "
     "No such file or directory"),
    (["-c", "length", "/"], "err",
     "blocklayer-io: can't open device /: Could not open '/': Is a directory"),
    (["-f", "raw", "-c", "read 0 abc", "img.raw"], "out",
     "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- abc"),
    (["-f", "raw", "-c", "write 0 -- -5", "img.raw"], "out",
     "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- -5"),
    (["-f", "raw", "-c", "alloc -512", "img.raw"], "out",
     "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- -512"),
    (["-f", "raw", "-c", "read 64k 1", "img.raw"], "out", "read failed: Input/output error"),
    (["-f", "raw", "-c", "write 60k 8k", "img.raw"], "out",
     "write failed: Input/output error"),
    (["-f", "raw", "-c", "frobnicate", "img.raw"], "err", 'command "frobnicate" not found'),
    (["-f", "nosuchfmt", "-c", "length", "img.raw"], "err",
     "blocklayer-io: can't open device img.raw: Unknown driver 'nosuchfmt'"),
    (["-c", "length"], "err", "no file open, try 'help open'"),
])
def test_one_clear_line(tmp_path, args, stream, line):
    r = ours(tmp_path, *args)
    assert r.rc == 1
    text = r.out if stream == "out" else r.err
    assert text.splitlines() == [line]
    assert "Traceback" not in r.out + r.err


def test_object_is_ignored_with_a_message(tmp_path):
    r = ours(tmp_path, "--object", "secret,id=s,data=x", "-f", "raw", "-c", "length",
             "img.raw")
    assert r.rc == 0
    assert r.out == "64 KiB\n"
    assert r.err == ("blocklayer-io: warning: --object is not supported, ignoring "
                     "'secret,id=s,data=x'\n")


def test_trace_and_aio_threads_accepted(tmp_path):
    r = ours(tmp_path, "-T", "foo", "-i", "threads", "-f", "raw", "-c", "length", "img.raw")
    assert (r.rc, r.out, r.err) == (0, "64 KiB\n", "")


def test_version_and_help(tmp_path):
    r = ours(tmp_path, "-V")
    assert r.rc == 0 and r.out.startswith("blocklayer-io version ")
    r = ours(tmp_path, "-h")
    assert r.rc == 0 and r.out.startswith("Usage: blocklayer-io [OPTIONS]")


def test_wait_break_does_not_hang(tmp_path):
    r = ours(tmp_path, "-f", "raw", "-c", "wait_break tag", "img.raw")
    assert r.rc == 1
    assert r.out == "Could not wait for breakpoint tag: Operation not supported\n"


def test_console_script_module_entry(tmp_path):
    """``python3 -m blocklayer.tools.io`` and ``main()`` are the same program."""
    from blocklayer.tools.io.main import main
    with pytest.raises(SystemExit) as exc:
        main(["-V"])
    assert exc.value.code == 0


def _file_size_limit() -> None:
    import resource
    import signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_write_error_from_the_writer_thread(tmp_path):
    """A write the kernel refuses (EFBIG past RLIMIT_FSIZE) fails with qemu-io's line,
    large (the file's writer thread) or small (inline), and the next write works."""
    import os
    import subprocess
    import sys

    from .conftest import ROOT, normalize
    args = ["-f", "raw", "-c", "write -P 1 2M 1M", "-c", "write -P 1 3M 4k",
            "-c", "write -P 2 0 64k", "-c", "write -P 3 64k 512k", "img.raw"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), LC_ALL="C")
    results = []
    for name, cmd in (("qemu", ["qemu-io"]), ("ours", [sys.executable, "-m", "blocklayer.tools.io"])):
        d = tmp_path / name
        make_image(d, bytes(4 << 20))
        p = subprocess.run(cmd + args, cwd=d, capture_output=True, text=True, env=env,
                           preexec_fn=_file_size_limit, timeout=60)
        results.append((p.returncode, normalize(p.stdout), normalize(p.stderr),
                        (d / "img.raw").read_bytes()))
    assert results[1] == results[0]
    assert results[1][1].count("write failed: File too large") == 2
