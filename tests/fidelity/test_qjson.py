"""Item 2 of issue 11: QEMU's JSON dialect in ``json:`` filenames, against qemu-img."""
from __future__ import annotations

from pathlib import Path

import pytest

from blocklayer.core import qjson

from .helpers import run_both

CASES = [
    "{'driver': 'null-co', 'size': 1048576}",
    '{"driver": "null-co", "size": 1048576,}',
    '{"driver": "null-co" "size": 1}',
    '[1]',
    "{'driver': 'null-co', 'size': 0x10}",
    "{'driver': 'null\\u0041co'}",
    "{'driver': 'nu\\'ll'}",
    "{'a': null}",
    "{'driver': 'null-co'",
    "{'driver': 'null-co'}}",
    "{driver: 'null-co'}",
    '',
    "{'driver':'null-co','size':'1M'}",
    "{'file': {'driver': 'null-co'}}",
    "  {'driver':'null-co'}  ",
    "{'driver': 'null-co', 'driver': 'x'}",
    "{'driver': 'nu/*x*/ll-co'}",
    "{'driver': 'null-co', 'size': 012}",
    "{'a': 'x\\q'}",
    "{'a': '\\u00zz'}",
    "{'a': [1 2]}",
    "{'a': [1,]}",
    '{1: 2}',
    "{'a' 1}",
    "{'a':}",
    '{,}',
    "{'a': 1} x",
    '{\'a\': "unterminated}',
    "{'a': 'x'}[",
    "{'a': 1.}",
    "{'a': -}",
    "{'a': .5}",
    "{'a': 1e}",
    "{'a': @}",
    "{'a': %d}",
    "{'a': tru}",
    "{'a': truex}",
    "{'a': '\\ud83d\\ude00'}",
    "{'a': NaN}",
    "{'a': -0}",
    "{'a': 1E5}",
    "{'a': 'x'}}}",
    "{'driver': 'null-co'} {'x': 1}",
    "{'a': {'b': 1, 'b': 2}}",
    "{'a': 9223372036854775808}",
    "{'a': 00}",
    "{'a': -01}",
    "{'a': [}",
    "{'a': ]}",
    "{'a': 1}]",
    "{'a': '\\/'}",
    "{'a': 1",
    "{'a' 1",
    "{'a': 1,",
    "{'a': 1} @",
    "'x'",
    "{'a': 'x\\",
    "{'a': '\\uD800'}",
    "{'a': Driver}",
    '{"driver": "null-co", "size": 65536}',
    '{"driver": "raw", "file": {"driver": "null-co", "size": 4096}}',
    "{'driver': 'raw', 'file': {'driver': 'file', 'filename': 'nosuch'}}",
]


@pytest.mark.parametrize("text", CASES)
def test_json_filename_as_qemu_img(tmp_path: Path, text: str) -> None:
    ours, theirs = run_both(tmp_path, "qemu-img", "info", "json:" + text)
    assert str(ours) == str(theirs)


def test_loads_values() -> None:
    assert qjson.loads("{'a': [1, -2, 1.5, true, false, null, \"x\\u00e9\"]}") == \
        {"a": [1, -2, 1.5, True, False, None, "x\u00e9"]}
    assert qjson.loads("18446744073709551615") == (1 << 64) - 1
    assert isinstance(qjson.loads("18446744073709551616"), float)
    assert qjson.loads("'\\ud83d\\ude00'") == "\U0001F600"


def test_nesting_is_bounded() -> None:
    with pytest.raises(qjson.QJSONError, match="nesting depth limit"):
        qjson.loads("[" * 2000)
    assert qjson.loads("[" * 1024 + "]" * 1024) is not None
