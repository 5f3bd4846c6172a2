"""QEMU's JSON dialect: what ``json:`` filenames, ``--image-opts``-style JSON and QMP accept.

QEMU's parser takes RFC 8259 JSON plus single-quoted strings (with ``\\'`` as an escape
in either kind), and refuses the rest with its own error texts, which scripts see:

- a lexer error names the *stray* text, from the start of the bad token through the
  first character that cannot continue it (``stray '01'``, ``stray '1.}'``, ``stray '@'``);
- the parser's errors are ``JSON parse error, <what>`` (``expecting value``, ``premature
  EOI``, ``duplicate key``, ``missing : in object pair``, ...);
- an empty input is ``Expecting a JSON value``, a second value ``Expecting at most one
  JSON value``, more than 1024 open brackets ``JSON nesting depth limit exceeded``.

Integers are Python ints while they fit int64 or uint64, floats beyond that, as QEMU's
QNum.  :func:`loads` raises :class:`QJSONError` (a ``ValueError``) whose ``str()`` is
QEMU's message.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_NESTING = 1024
WHITESPACE = " \t\n\r"
PUNCT = "{}[]:,"
ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n",
           "r": "\r", "t": "\t"}
INT64_MIN, UINT64_MAX = -(1 << 63), (1 << 64) - 1


class QJSONError(ValueError):
    """Input QEMU's JSON parser refuses; ``str()`` is QEMU's text."""


@dataclass(frozen=True)
class Token:
    kind: str          # one of PUNCT, "string", "number", "keyword"
    text: str


# ---- QDict order -------------------------------------------------------------------------
QDICT_BUCKETS = 512


def qdict_bucket(key: str) -> int:
    """The bucket QEMU's QDict puts ``key`` in (tdb_hash modulo 512)."""
    data = key.encode("utf-8", "surrogatepass")
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, c in enumerate(data):
        value = (value + (c << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % QDICT_BUCKETS


def qdict_order(keys: list[str]) -> list[str]:
    """Keys in the order QEMU iterates a QDict they were inserted into in this order."""
    index = {k: i for i, k in enumerate(keys)}
    return sorted(keys, key=lambda k: (qdict_bucket(k), -index[k]))


# ---- lexer ------------------------------------------------------------------------------
# Numbers: which characters may follow in each state, the next state, and which states
# may end the token.  After a lone ``0`` another digit is an error, not a new token.
NUMBER: dict[str, dict[str, str | None]] = {
    "start": {"-": "sign", "0": "zero", "1-9": "int"},
    "sign": {"0": "zero", "1-9": "int"},
    "zero": {".": "dot", "eE": "exp", "0-9": None},
    "int": {"0-9": "int", ".": "dot", "eE": "exp"},
    "dot": {"0-9": "frac"},
    "frac": {"0-9": "frac", "eE": "exp"},
    "exp": {"+-": "expsign", "0-9": "expdig"},
    "expsign": {"0-9": "expdig"},
    "expdig": {"0-9": "expdig"},
}
NUMBER_ENDS = {"zero", "int", "frac", "expdig"}


def _classes(ch: str, table: dict[str, str | None]) -> tuple[bool, str | None]:
    for chars, nxt in table.items():
        if ch in chars or (len(chars) == 3 and chars[1] == "-" and chars[0] <= ch <= chars[2]):
            return True, nxt
    return False, None


def _stray(text: str, start: int, end: int) -> QJSONError:
    return QJSONError(f"JSON parse error, stray '{text[start:end]}'")


def _lex_number(text: str, pos: int) -> int:
    state, i = "start", pos
    while i < len(text):
        listed, nxt = _classes(text[i], NUMBER[state])
        if not listed:
            if state in NUMBER_ENDS:
                return i
            raise _stray(text, pos, i + 1)
        if nxt is None:
            raise _stray(text, pos, i + 1)
        state, i = nxt, i + 1
    if state in NUMBER_ENDS:
        return i
    raise _stray(text, pos, i)


def _lex_string(text: str, pos: int) -> int:
    quote, i = text[pos], pos + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return i + 1
        if ord(ch) < 0x20 or 0xDC80 <= ord(ch) <= 0xDCFF:   # control, or undecodable byte
            raise _stray(text, pos, i + 1)
        i += 2 if ch == "\\" else 1
    raise _stray(text, pos, len(text))


def _lex_keyword(text: str, pos: int) -> int:
    i = pos
    while i < len(text) and "a" <= text[i] <= "z":
        i += 1
    return i


def tokens(text: str) -> tuple[list[Token], int]:
    """The tokens of the first JSON value and where it ends (a lexer error on the way
    wins over any parse error, as in QEMU's streamer)."""
    out: list[Token] = []
    depth, i = 0, 0
    while i < len(text):
        ch = text[i]
        if ch in WHITESPACE:
            i += 1
            continue
        if out and depth <= 0:
            break
        if ch in PUNCT:
            depth += 1 if ch in "{[" else -1 if ch in "}]" else 0
            if depth > MAX_NESTING:
                raise QJSONError("JSON nesting depth limit exceeded")
            out.append(Token(ch, ch))
            i += 1
            continue
        if ch in "\"'":
            end, kind = _lex_string(text, i), "string"
        elif ch == "-" or "0" <= ch <= "9":
            end, kind = _lex_number(text, i), "number"
        elif "a" <= ch <= "z":
            end, kind = _lex_keyword(text, i), "keyword"
        else:
            raise _stray(text, i, i + 1)
        out.append(Token(kind, text[i:end]))
        i = end
    return out, i


# ---- parser -----------------------------------------------------------------------------
def unescape(raw: str) -> str:
    """The text of a string token ``raw`` (its quotes included), escapes resolved."""
    body, out, i = raw[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = body[i + 1]
        if esc in ESCAPES:
            out.append(ESCAPES[esc])
            i += 2
            continue
        if esc != "u":
            raise QJSONError("JSON parse error, invalid escape sequence in string")
        code, i = _hex4(body, i + 2), i + 6
        if 0xD800 <= code < 0xDC00 and body[i:i + 2] == "\\u":
            low = _hex4(body, i + 2)
            if 0xDC00 <= low < 0xE000:
                code, i = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00), i + 6
        if 0xD800 <= code < 0xE000:
            raise QJSONError(f"JSON parse error, \\u{body[i - 4:i]} is not a valid "
                             "Unicode character")
        out.append(chr(code))
    return "".join(out)


def _hex4(body: str, at: int) -> int:
    digits = body[at:at + 4]
    if len(digits) < 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise QJSONError(f"JSON parse error, \\u{digits} is not a valid Unicode character")
    return int(digits, 16)


def number(text: str) -> int | float:
    """A number token's value: an int while it fits int64 or uint64, else a float."""
    if not any(c in text for c in ".eE"):
        value = int(text)
        if INT64_MIN <= value <= UINT64_MAX:
            return value
    return float(text)


class _Parser:
    """Recursive descent made iterative (1024 levels would exceed Python's stack): a stack
    of open containers, each a list or a dict with the key awaiting its value."""

    def __init__(self, toks: list[Token]) -> None:
        self.toks, self.pos = toks, 0

    def pop(self) -> Token:
        if self.pos >= len(self.toks):
            raise QJSONError("JSON parse error, premature EOI")
        self.pos += 1
        return self.toks[self.pos - 1]

    def peek_is(self, kind: str) -> bool:
        if self.pos >= len(self.toks):
            raise QJSONError("JSON parse error, premature EOI")
        return self.toks[self.pos].kind == kind

    def value(self) -> Any:
        stack: list[list[Any]] = []          # [container, pending key or None]
        while True:
            value = self._scalar_or_open(stack)
            while value is not _OPEN:
                if not stack:
                    return value
                value = self._add(stack, value)

    def _scalar_or_open(self, stack: list[list[Any]]) -> Any:
        """Scalars and empty containers are returned; a new container is pushed."""
        tok = self.pop()
        if tok.kind in ("{", "["):
            close = "}" if tok.kind == "{" else "]"
            if self.peek_is(close):
                self.pop()
                return {} if tok.kind == "{" else []
            stack.append([{} if tok.kind == "{" else [], None])
            return _OPEN
        if tok.kind == "string":
            return unescape(tok.text)
        if tok.kind == "number":
            return number(tok.text)
        if tok.kind == "keyword":
            keywords = {"true": True, "false": False, "null": None}
            if tok.text not in keywords:
                raise QJSONError(f"JSON parse error, invalid keyword '{tok.text}'")
            return keywords[tok.text]
        raise QJSONError("JSON parse error, expecting value")

    def _add(self, stack: list[list[Any]], value: Any) -> Any:
        """Put a complete value into the innermost container; return the container when
        it closes, or ``_OPEN`` when more is to come (the next value was started)."""
        top = stack[-1]
        container = top[0]
        if isinstance(container, dict):
            if top[1] is None:                       # value is a key
                if not isinstance(value, str):
                    raise QJSONError("JSON parse error, key is not a string in object")
                if self.pop().kind != ":":
                    raise QJSONError("JSON parse error, missing : in object pair")
                top[1] = _Key(value)
                return self._scalar_or_open(stack)
            key = top[1].name
            if key in container:
                raise QJSONError("JSON parse error, duplicate key")
            container[key] = value
            top[1] = None
            close, error = "}", "expected separator in dict"
        else:
            container.append(value)
            close, error = "]", "expected separator in list"
        sep = self.pop().kind
        if sep == close:
            stack.pop()
            return container
        if sep != ",":
            raise QJSONError(f"JSON parse error, {error}")
        return self._scalar_or_open(stack)


@dataclass(frozen=True)
class _Key:
    name: str


_OPEN = object()


def loads(text: str) -> Any:
    """Parse one value of QEMU's JSON dialect."""
    toks, end = tokens(text)
    if not toks:
        raise QJSONError("Expecting a JSON value")
    parser = _Parser(toks)
    result = parser.value()
    if parser.pos < len(toks) or text[end:].strip(WHITESPACE):
        raise QJSONError("Expecting at most one JSON value")
    return result
