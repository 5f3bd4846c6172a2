"""blkdebug's rules (inject-error, set-state) as QEMU 7.2 takes them: through our API,
and through blocklayer-io side by side with qemu-io on the same json: filenames."""
from __future__ import annotations

import asyncio
import errno
import json
from pathlib import Path
from typing import Any

import pytest

from blocklayer.core.errors import BlockError, InvalidArgument
from blocklayer.filters.blkdebug_rules import (EVENTS, InjectRule, RuleSet, SetStateRule,
                                               parse_rules)
from blocklayer.core.open import open_image

from ..conftest import need
from ..io.conftest import blocklayer_io_cmd, normalize, run_tool


def _raw_over_blkdebug(image: Path, **blkdebug: Any) -> str:
    file = {"driver": "blkdebug", **blkdebug,
            "image": {"driver": "file", "filename": str(image)}}
    return "json:" + json.dumps({"driver": "raw", "file": file})


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.raw"
    path.write_bytes(bytes(range(256)) * 4096)          # 1 MiB
    return path


# --- the state machine, sans I/O ---------------------------------------------------

def test_second_read_fails_through_set_state() -> None:
    rules = RuleSet([InjectRule("read_aio", state=2),
                     SetStateRule("read_aio", state=1, new_state=2)])
    rules.fire("read_aio")
    assert rules.state == 2 and rules.check("read", 0, 512) is None
    rules.fire("read_aio")
    assert rules.check("read", 0, 512) is not None


def test_sector_once_and_iotype() -> None:
    rules = RuleSet([InjectRule("read_aio", offset=8 * 512, once=True,
                                iotypes=frozenset({"read"}))])
    rules.fire("read_aio")
    assert rules.check("write", 4096, 512) is None        # other iotype
    assert rules.check("read", 0, 4096) is None           # does not cover sector 8
    assert rules.check("read", 4096, 512) is not None
    assert rules.check("read", 4096, 512) is None         # once: gone
    rules.fire("read_aio")
    assert rules.check("read", 4096, 512) is None         # for good


def test_an_event_replaces_the_active_rules_only_when_it_has_some() -> None:
    a, b = InjectRule("read_aio", errno=errno.EIO), InjectRule("write_aio", errno=errno.ENOSPC)
    rules = RuleSet([a, b])
    rules.fire("read_aio")
    rules.fire("flush_to_os")                             # no rules: nothing changes
    assert rules.check("write", 0, 512) is a
    rules.fire("write_aio")
    assert rules.check("write", 0, 512) is b


# --- parsing -----------------------------------------------------------------------

def test_list_dotted_and_single_forms_agree() -> None:
    forms = [
        {"inject-error": [{"event": "read_aio", "sector": 8, "once": True}]},
        {"inject-error.0.event": "read_aio", "inject-error.0.sector": "8",
         "inject-error.0.once": "on"},
        {"inject-error.event": "read_aio", "inject-error.sector": "8",
         "inject-error.once": "yes"},
    ]
    want = [InjectRule("read_aio", offset=4096, once=True)]
    for options in forms:
        assert parse_rules(options, None) == want
        assert options == {}                              # the keys are consumed


def test_every_qemu_event_name_is_accepted() -> None:
    for event in EVENTS:
        assert parse_rules({"set-state": [{"event": event, "new_state": 2}]}, None)


def test_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "rules.cfg"
    cfg.write_text('# comment\n[inject-error]\nevent = "read_aio"\nsector = "1"\n\n'
                   '[set-state]\nevent = "none"\nnew_state = "3"\n')
    assert parse_rules({}, str(cfg)) == [InjectRule("read_aio", offset=512),
                                         SetStateRule("none", new_state=3)]


BAD_RULES = [
    ({"inject-error": [{"sector": 8}]}, "Missing event name for rule"),
    ({"inject-error": [{"event": "xyz"}]}, "invalid parameter value: xyz"),
    ({"inject-error": [{"event": "read_aio", "iotype": "foo"}]}, "invalid parameter value: foo"),
    ({"inject-error": [{"event": "read_aio", "offset": 3}]},
     "[inject-error] section doesn't support the option 'offset'"),
    ({"inject-error": [{"event": "read_aio", "errno": "abc"}]},
     "Parameter 'errno' expects a number"),
    ({"inject-error": [{"event": "read_aio", "once": "maybe"}]},
     "Parameter 'once' expects 'on' or 'off'"),
    ({"inject-error": [5]}, "[inject-error] section (index 0) does not consist of keys"),
    ({"inject-error": []}, "Block protocol 'blkdebug' doesn't support the option 'inject-error'"),
    ({"inject-error.event": "read_aio", "inject-error.offset": 3},
     "Unknown option 'offset' for [inject-error]"),
    ({"inject-error.1.event": "read_aio"}, "Unused option '1.event' for [inject-error]"),
    ({"set-state": [{"event": "read_aio", "iotype": "read"}]},
     "[set-state] section doesn't support the option 'iotype'"),
    ({"set-state": [{"new_state": 2}]}, "Missing event name for rule"),
    ({"inject-error": [{"event": "read_aio", "sector": "1k"}]},
     "Parameter 'sector' expects a number"),
]


@pytest.mark.parametrize("options,message", BAD_RULES)
def test_bad_rules_are_refused_with_qemus_words(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_rules(dict(options), None)
    assert str(exc.value) == message


# --- through the API ---------------------------------------------------------------

def test_api_read_covering_the_sector_fails(image: Path) -> None:
    async def run() -> None:
        node = await open_image(_raw_over_blkdebug(
            image, **{"inject-error": [{"event": "read_aio", "sector": 8, "errno": 28}]}))
        try:
            assert await node.read(0, 4096) == image.read_bytes()[:4096]
            with pytest.raises(BlockError) as exc:
                await node.read(4096, 512)
            assert exc.value.errno == errno.ENOSPC
            assert await node.read(8192, 512) == image.read_bytes()[8192:8704]
        finally:
            await node.close()
    asyncio.run(run())


# --- blocklayer-io against qemu-io -------------------------------------------------

def _both(tmp_path: Path, filename: str, *commands: str,
          cache: str | None = "writethrough") -> None:
    qemu = need("qemu-io")
    args = (["-t", cache] if cache else []) + [a for c in commands for a in ("-c", c)] + \
        [filename]
    theirs = run_tool([qemu], tmp_path, args)
    ours = run_tool(blocklayer_io_cmd(), tmp_path, args)
    assert (ours.rc, normalize(ours.out), normalize(ours.err)) == \
        (theirs.rc, normalize(theirs.out), normalize(theirs.err))
    assert ours.image == theirs.image


IO_CASES: list[tuple[dict[str, Any], tuple[str, ...]]] = [
    # a read_aio rule with a sector fails the reads that cover it
    ({"inject-error": [{"event": "read_aio", "sector": 8}]},
     ("read 0 4k", "read 4k 4k", "read 8k 512", "read 4k 512")),
    # dotted keys, another errno, iotype write only
    ({"inject-error.0.event": "write_aio", "inject-error.0.iotype": "write",
      "inject-error.0.errno": "28"}, ("read 0 4k", "write 0 4k", "read 0 4k")),
    # once
    ({"inject-error": [{"event": "read_aio", "sector": 1, "once": True}]},
     ("read 0 4k", "read 0 4k")),
    # fail the second read: state 1 -> 2 on the first
    ({"inject-error": [{"event": "read_aio", "state": 2}],
      "set-state": [{"event": "read_aio", "state": 1, "new_state": 2}]},
     ("read 0 4k", "read 4k 4k", "read 0 512")),
    # a three-state dance: reads 2 and 4 fail
    ({"inject-error": [{"event": "read_aio", "state": 2, "once": True}],
      "set-state": [{"event": "read_aio", "state": 1, "new_state": 2},
                    {"event": "read_aio", "state": 2, "new_state": 3},
                    {"event": "read_aio", "state": 3, "new_state": 2}]},
     ("read 0 512", "read 0 512", "read 0 512", "read 0 512", "read 0 512")),
    # 'none' fires at open: active from the start; errno 0 injects nothing
    ({"inject-error": [{"event": "none", "iotype": "write", "errno": 0},
                       {"event": "none", "iotype": "read", "immediately": True}]},
     ("write 0 512", "read 0 512")),
    # two set-state rules for one event and state: the first configured wins
    ({"inject-error": [{"event": "read_aio", "state": 2}],
      "set-state": [{"event": "read_aio", "new_state": 3},
                    {"event": "read_aio", "new_state": 2}]},
     ("read 0 512", "read 0 512")),
    ({"inject-error": [{"event": "pwritev", "sector": 2}]},
     ("write 0 512", "write 0 1k", "write 1k 512")),
]


@pytest.mark.parametrize("rules,commands", IO_CASES)
def test_io_as_qemu_io(tmp_path: Path, rules: dict[str, Any], commands: tuple[str, ...]) -> None:
    (tmp_path / "img.raw").write_bytes(bytes(range(256)) * 4096)
    _both(tmp_path, _raw_over_blkdebug(Path("img.raw"), **rules), *commands)


def test_io_read_aio_needs_a_parent_as_qemu_io(tmp_path: Path) -> None:
    # QEMU's formats fire read_aio on their file: a read made straight to the blkdebug
    # node fires nothing
    (tmp_path / "img.raw").write_bytes(bytes(range(256)) * 4096)
    filename = "json:" + json.dumps({"driver": "blkdebug", "image": {
        "driver": "file", "filename": "img.raw"},
        "inject-error": [{"event": "read_aio"}, {"event": "none", "iotype": "write"}]})
    _both(tmp_path, filename, "read 0 512", "write 0 512")


def test_io_flush_events_as_qemu_io(tmp_path: Path) -> None:
    # flush_to_os activates the rule; a flush is only checked once something was
    # written (QEMU's write generation); writeback, so the write itself does not flush
    (tmp_path / "img.raw").write_bytes(bytes(range(256)) * 4096)
    rules = {"inject-error": [{"event": "flush_to_os", "iotype": "flush"}]}
    _both(tmp_path, _raw_over_blkdebug(Path("img.raw"), **rules),
          "flush", "write 0 512", "flush", "read 0 512", cache="writeback")


@pytest.mark.parametrize("options,message", BAD_RULES[:-1])
def test_io_bad_rules_as_qemu_io(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    (tmp_path / "img.raw").write_bytes(bytes(4096))
    _both(tmp_path, _raw_over_blkdebug(Path("img.raw"), **options), "read 0 512")


def test_io_default_cache_is_writethrough_as_qemu_io(tmp_path: Path) -> None:
    # without -t, qemu-io flushes after every write: a flush rule fails the write
    (tmp_path / "img.raw").write_bytes(bytes(range(256)) * 4096)
    rules = {"inject-error": [{"event": "flush_to_os", "iotype": "flush"}]}
    _both(tmp_path, _raw_over_blkdebug(Path("img.raw"), **rules),
          "read 0 512", "write 0 512", "read 0 512", cache=None)
