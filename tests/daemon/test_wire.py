"""Byte for byte on the wire (member order, spacing, escapes, CRLF), ours against
qemu-storage-daemon, after replacing the package string, paths and auto node names."""
from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import qemu_img
from tests.qmp.qsd import RawSession, daemon

INPUTS = [
    b'{"execute":"query-version"}',
    b'{"execute":"qmp_capabilities","id":1}',
    b'{"execute":"qmp_capabilities","id":2}',
    b'{"execute":"query-version","id":"x"}',
    b'{"execute":"query-commands"}',
    b'{"execute":"query-qmp-schema"}',
    b'{"execute":"qom-list-types"}',
    (b'{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"d",'
    b'"file":{"driver":"file","filename":"d.qcow2"}},"id":[1,{"a":null}]}'),
    (b'{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"n",'
    b'"size":65536,"read-zeroes":true}}'),
    b'{"execute":"query-named-block-nodes"}',
    b'{"execute":"query-blockstats","arguments":{"query-nodes":true}}',
    b'{"execute":"x-debug-query-block-graph"}',
    b'{"execute":"blockdev-snapshot-internal-sync","arguments":{"device":"d","name":"s\xc3\xa9"}}',
    b'{"execute":"blockdev-snapshot-internal-sync","arguments":{"device":"d","name":"s\xc3\xa9"}}',
    b'{"execute":"blockdev-del","arguments":{"node-name":"n","bogus":1,"other":2}}',
    b"{'execute':'blockdev-del','arguments':{'node-name':'n'}}",
    b'{"execute":"query-jobs"}', b'{"execute":"query-chardev"}',
    b'[]', b'{"foo":1,"bar":2}',
    b'{"execute":"query-version","id":"\\ud800"}',
    b'{"execute":"query-version","id":"\\udc00x"}',
    b'{"execute":"query-version","id":"\\ud83d\\ude00"}',
    b'{"execute":"query-version","id":18446744073709551616}',
    b'{"execute":"query-version","id":-9223372036854775809}',
    b'{"execute":"quit","id":9}',
]


def transcript(which: str, tmp: Path) -> list[bytes]:
    work = tmp / which
    work.mkdir()
    qemu_img("create", "-q", "-f", "qcow2", str(work / "d.qcow2"), "1M")
    with daemon(which, work) as sock:
        s = RawSession(sock)
        out = [s.greeting] + [s.send(m) for m in INPUTS]
        s.close()
    names: dict[bytes, bytes] = {}
    text = []
    for line in out:
        line = line.replace(str(work).encode(), b"$TMP").replace(f"{which}.sock".encode(),
                                                                 b"monitor.sock")
        line = re.sub(rb'"package": "[^"]*"', b'"package": ""', line)
        line = re.sub(rb"#block\d+", lambda m: names.setdefault(
            m.group(0), b"#auto%d" % len(names)), line)
        text.append(line)
    return text


def test_wire_bytes(tmp_path: Path) -> None:
    want = transcript("qsd", tmp_path)
    got = transcript("ours", tmp_path)
    assert len(got) == len(want)
    for i, (w, g) in enumerate(zip(want, got)):
        assert g == w, (i, INPUTS[i - 1] if i else b"greeting")
