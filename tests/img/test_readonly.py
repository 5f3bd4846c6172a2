"""Read-only subcommands: identical output on the same images."""
from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import assert_same, make_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo"))


INFO = [
    "info a.raw", "info -f raw --output=json a.raw", "info c.qcow2",
    "info --output=json c.qcow2", "info --backing-chain c.qcow2",
    "info --backing-chain --output=json c.qcow2", "info s.qcow2",
    "info --output=json s.qcow2", "info b.qcow2", "info --output=json b.qcow2",
    "info -U qt.qed", "info --backing-chain --output=json qt.qed",
    "info --image-opts driver=qcow2,file.filename=c.qcow2",
]
MAP = [
    "map a.raw", "map -f raw --output=json a.raw", "map c.qcow2", "map --output=json c.qcow2",
    "map --output=json --start-offset=64k --max-length=1M c.qcow2", "map --output=json qt.qed",
    "map qt.qed",
]
CHECK = [
    "check c.qcow2", "check --output=json c.qcow2", "check qt.qed", "check --output=json qt.qed",
    "check -f raw a.raw", "check -q c.qcow2",
]
COMPARE = [
    "compare -f raw -F raw a.raw a.raw", "compare -f raw -F raw a.raw z.raw",
    "compare c.qcow2 b.qcow2", "compare -s c.qcow2 c.qcow2", "compare -s b.qcow2 qb.qed",
    "compare -q -f raw -F raw a.raw z.raw", "compare qt.qed qb.qed", "compare -p c.qcow2 c.qcow2",
]
OTHER = [
    "snapshot -l s.qcow2", "snapshot -l a.raw", "measure --size 1G", "measure -O raw a.raw",
    "measure --output=json --size 7G -O raw", "bench -c 1000 -d 8 -f raw a.raw",
    "bench -c 100 -s 1k -S 8k -o 4k c.qcow2",
]


@pytest.mark.parametrize("cmd", INFO + MAP + CHECK + COMPARE + OTHER)
def test_same_output(zoo: Path, cmd: str) -> None:
    assert_same(cmd.split(), zoo)


ERRORS = [
    "", "foo", "--bogus", "info", "info -Z a.raw", "info -f", "info nonexistent.img",
    "info -f qcow2 a.raw", "info -f nosuchfmt a.raw", "info --output=xml a.raw",
    "info a.raw c.qcow2", "create -f raw x.raw 1Q", "create -f nosuch x.img 1M",
    "create -f raw -o bogus=1 x.raw 1M", "create -f qcow2 -b b.qcow2 e.qcow2",
    "create -f raw x.raw", "create", "create -f raw -b a.raw -F raw x.raw",
    "check -r foo c.qcow2", "check a.raw", "map nonexistent.img",
    "convert -O raw nonexistent.img out.raw", "convert -S 100 -O raw a.raw o.raw",
    "convert -m 0 -O raw a.raw o.raw", "convert -O bogus a.raw o.raw",
    "convert -O raw -o foo=1 a.raw o.raw", "convert --target-is-zero -O raw a.raw o.raw",
    "convert -O qcow2 -B b.qcow2 c.qcow2 o.qcow2", "convert -c -O raw a.raw o.raw",
    "convert -O raw a.raw", "convert --bitmaps -O qcow2 a.raw o.qcow2",
    "compare a.raw", "compare nonexistent.img a.raw", "resize", "resize -f raw a.raw 1x",
    "resize -f raw a.raw 1M", "resize -f raw --preallocation=bogus a.raw 8M",
    "dd if=a.raw", "dd -f raw if=a.raw of=o.raw bs=0", "dd -f raw if=a.raw of=o.raw foo=1",
    "measure", "measure -f raw", "measure --size x", "measure -O qed --size 1G",
    "snapshot -c x -d y c.qcow2", "snapshot -d nope s.qcow2", "amend c.qcow2",
    "amend -o help -f raw", "amend -o size=2M -f raw a.raw", "rebase c.qcow2",
    "commit -f raw a.raw", "commit -b nonexistent c.qcow2", "bitmap c.qcow2 bm",
    "bitmap --add c.qcow2", "bitmap -g 64k --remove c.qcow2 bm", "bench -c x a.raw",
    "bench --flush-interval=3 a.raw", "bench --pattern=300 a.raw",
    "bench -w --flush-interval=2 -d 4 -c 10 -f raw a.raw",
]


@pytest.mark.parametrize("cmd", ERRORS)
def test_same_error(zoo: Path, cmd: str) -> None:
    res = assert_same(cmd.split(), zoo)
    assert "Traceback" not in res.err


def test_help_and_version(zoo: Path) -> None:
    from .helpers import ours
    res = ours(["--help"], zoo)
    assert res.rc == 0 and "usage: blocklayer-img" in res.out and "convert" in res.out
    res = ours(["--version"], zoo)
    assert res.rc == 0 and res.out.startswith("blocklayer-img version")
    res = ours(["info", "--help"], zoo)
    assert res.rc == 0 and "Command syntax:" in res.out
