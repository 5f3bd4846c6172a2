"""QEMU's JSON dialect, sans I/O: a streaming lexer/parser and a writer.

Input (QEMU's json-lexer/json-streamer/json-parser): objects arrive split across reads
or several in one read; single-quoted strings are accepted; a message ends when its
braces and brackets balance (a scalar at the top level ends at its delimiter); a stray
character (0x1B, an invalid UTF-8 byte) drops the message in progress and is reported;
a message is bounded in size, token count and nesting as QEMU bounds it.

Output (QEMU's json-writer over QDicts): ``{"a": 1, "b": [2]}`` spacing, non-ASCII and
control characters as upper-case ``\\uXXXX`` escapes, doubles as ``%.17g`` and object
members in QDict order -- QEMU's hash table walks its 512 buckets in order and each
bucket newest first, so the key order on the wire is a function of the key set.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from blocklayer.core import qjson as core_qjson
from blocklayer.core.qjson import qdict_order

MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10


class JSONParseError(Exception):
    """One bad message; ``desc`` is QEMU's text."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


# ---- writer ------------------------------------------------------------------------------
class Ordered(dict):  # type: ignore[type-arg]
    """A dict whose member order is already QEMU's (e.g. relayed from QEMU itself)."""


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        cp = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif 0x20 <= cp < 0x7F:
            out.append(ch)
        elif cp > 0xFFFF:
            cp -= 0x10000
            out.append(f"\\u{0xD800 | (cp >> 10):04X}\\u{0xDC00 | (cp & 0x3FF):04X}")
        else:
            out.append(f"\\u{cp:04X}")
    out.append('"')
    return "".join(out)


def dumps(value: Any) -> str:
    """``value`` as QEMU writes it."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, ".17g")
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, dict):
        keys = list(value) if isinstance(value, Ordered) else qdict_order(list(value))
        return "{" + ", ".join(f"{_quote(k)}: {dumps(value[k])}" for k in keys) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


# ---- lexer -------------------------------------------------------------------------------
@dataclass(slots=True)
class Token:
    kind: str          # "{", "}", "[", "]", ",", ":", "str", "num", "kw", "error"
    text: str
    value: Any = None


_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")


_STRING_RUN = {q: re.compile(r"(?:[^" + q + r"\\\x00-\x1f\ufffd]|\\[^\x00-\x1f\ufffd])*")
               for q in "\"'"}
_WORD_RUN = re.compile(r"[A-Za-z0-9+\-.]*")
_SPACE_RUN = re.compile(r"[ \t\r\n]*")


class Lexer:
    """Characters in, tokens out; keeps the partial token between feeds.

    Runs of ordinary characters are consumed with regular expressions and a partial
    token is kept as a list of pieces, so a huge string costs linear time."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.partial_size = 0
        self.quote = ""          # the open string's quote character, if any
        self.escape = False      # a string's backslash ended the last feed
        self.in_word = False

    def _take(self, piece: str) -> None:
        self.parts.append(piece)
        self.partial_size += len(piece)

    def _flush(self) -> str:
        text = "".join(self.parts)
        self.parts, self.partial_size = [], 0
        return text

    def feed(self, text: str) -> Iterator[Token]:
        i, n = 0, len(text)
        while i < n:
            if self.quote:
                i, tok = self._string(text, i)
            elif self.in_word:
                j = _WORD_RUN.match(text, i).end()  # type: ignore[union-attr]
                self._take(text[i:j])
                i, tok = j, (self._word() if j < n else None)
            else:
                i, tok = self._start(text, _SPACE_RUN.match(text, i).end())  # type: ignore[union-attr]
            if tok is not None:
                yield tok

    def _string(self, text: str, i: int) -> tuple[int, Token | None]:
        if self.escape:
            self.escape = False
            ch = text[i]
            if ord(ch) < 0x20 or ch == "\ufffd":
                self.quote = ""
                return i + 1, Token("error", self._flush() + ch)
            self._take(ch)
            return i + 1, None
        j = _STRING_RUN[self.quote].match(text, i).end()  # type: ignore[union-attr]
        if j > i:
            self._take(text[i:j])
        if j >= len(text):
            return j, None
        ch = text[j]
        if ch == self.quote:
            self._take(ch)
            self.quote = ""
            return j + 1, Token("str", self._flush())
        if ch == "\\":              # at the end of this feed: the escaped character follows
            self._take(ch)
            self.escape = True
            return j + 1, None
        self.quote = ""
        return j + 1, Token("error", self._flush() + ch)

    def _start(self, text: str, i: int) -> tuple[int, Token | None]:
        if i >= len(text):
            return i, None
        ch = text[i]
        if ch in "{}[],:":
            return i + 1, Token(ch, ch)
        if ch in "\"'":
            self.quote = ch
            self._take(ch)
            return i + 1, None
        if ch.isalnum() or ch == "-":
            self.in_word = True
            self._take(ch)
            return i + 1, None
        return i + 1, Token("error", ch)

    def _word(self) -> Token:
        self.in_word = False
        word = self._flush()
        if word[0].isalpha():
            return Token("kw", word)
        if _NUMBER.match(word):
            return Token("num", word)
        return Token("error", word)


# ---- parser ------------------------------------------------------------------------------
def _scalar(convert: Callable[[str], Any], text: str) -> Any:
    """A string or number token's value, by the one decoder ``json:`` filenames use too."""
    try:
        return convert(text)
    except core_qjson.QJSONError as e:
        raise JSONParseError(str(e)) from e


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def next(self) -> Token | None:
        if self.pos >= len(self.tokens):
            return None
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def value(self) -> Any:
        tok = self.next()
        if tok is None:
            raise JSONParseError("JSON parse error, expecting value")
        if tok.kind == "{":
            return self.object()
        if tok.kind == "[":
            return self.array()
        if tok.kind == "str":
            return _scalar(core_qjson.unescape, tok.text)
        if tok.kind == "num":
            return _scalar(core_qjson.number, tok.text)
        if tok.kind == "kw":
            if tok.text in ("true", "false", "null"):
                return {"true": True, "false": False, "null": None}[tok.text]
            raise JSONParseError(f"JSON parse error, invalid keyword '{tok.text}'")
        raise JSONParseError("JSON parse error, expecting value")

    def object(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        tok = self.peek()
        if tok is not None and tok.kind == "}":
            self.next()
            return out
        while True:
            key = self.peek()
            name = self.value()
            if key is None or key.kind != "str":
                raise JSONParseError("JSON parse error, key is not a string in object")
            colon = self.next()
            if colon is None or colon.kind != ":":
                raise JSONParseError("JSON parse error, missing : in object pair")
            if name in out:
                raise JSONParseError("JSON parse error, duplicate key")
            out[name] = self.value()
            sep = self.next()
            if sep is not None and sep.kind == "}":
                return out
            if sep is None or sep.kind != ",":
                raise JSONParseError("JSON parse error, expected separator in dict")

    def array(self) -> list[Any]:
        out: list[Any] = []
        tok = self.peek()
        if tok is not None and tok.kind == "]":
            self.next()
            return out
        while True:
            out.append(self.value())
            sep = self.next()
            if sep is not None and sep.kind == "]":
                return out
            if sep is None or sep.kind != ",":
                raise JSONParseError("JSON parse error, expected separator in list")


def parse_tokens(tokens: list[Token]) -> Any:
    parser = _Parser(tokens)
    value = parser.value()
    if parser.peek() is not None:
        raise JSONParseError("JSON parse error, expecting value")
    return value


class Streamer:
    """Bytes in, complete messages out: each item is a value or a :class:`JSONParseError`.

    Memory is bounded: the message in progress never exceeds ``max_size`` characters
    (QEMU's 64 MiB token limit by default) before it is dropped with QEMU's error."""

    def __init__(self, max_size: int = MAX_TOKEN_SIZE) -> None:
        self.lexer = Lexer()
        self.tokens: list[Token] = []
        self.size = 0
        self.depth = 0
        self.max_size = max_size
        self._tail = b""

    def feed(self, data: bytes) -> list[Any]:
        text = self._decode(data)
        out: list[Any] = []
        for tok in self.lexer.feed(text):
            item = self._token(tok)
            if item is not _NOTHING:
                out.append(item)
        if self.size + self.lexer.partial_size > self.max_size:
            self._reset()
            out.append(JSONParseError("JSON token size limit exceeded"))
        return out

    def _decode(self, data: bytes) -> str:
        data = self._tail + data
        self._tail = b""
        # keep an incomplete UTF-8 sequence at the end for the next read
        for cut in range(1, 4):
            if len(data) >= cut and 0xC2 <= data[-cut] <= 0xF4:
                if len(data[-cut:]) < (2 if data[-cut] < 0xE0 else 3 if data[-cut] < 0xF0 else 4):
                    self._tail, data = data[-cut:], data[:-cut]
                break
        return data.decode("utf-8", "replace")

    def _reset(self) -> None:
        self.tokens, self.size, self.depth = [], 0, 0
        self.lexer = Lexer()

    def _token(self, tok: Token) -> Any:
        if tok.kind == "error":
            self._reset()
            return JSONParseError(f"JSON parse error, stray '{tok.text}'")
        self.tokens.append(tok)
        self.size += len(tok.text)
        if tok.kind in "{[":
            self.depth += 1
        elif tok.kind in "}]":
            self.depth -= 1
        if self.depth > MAX_NESTING:
            self._reset()
            return JSONParseError("JSON nesting depth limit exceeded")
        if len(self.tokens) > MAX_TOKEN_COUNT:
            self._reset()
            return JSONParseError("JSON token count limit exceeded")
        if self.size > self.max_size and self.depth > 0:
            self._reset()
            return JSONParseError("JSON token size limit exceeded")
        if self.depth > 0:
            return _NOTHING
        tokens = self.tokens
        self.tokens, self.size, self.depth = [], 0, 0
        try:
            return parse_tokens(tokens)
        except JSONParseError as exc:
            return exc


_NOTHING = object()


def loads(text: str) -> Any:
    """One complete value (the command line's JSON options), QEMU's parse errors."""
    lexer = Lexer()
    tokens = list(lexer.feed(text + " "))
    for tok in tokens:
        if tok.kind == "error":
            raise JSONParseError(f"JSON parse error, stray '{tok.text}'")
    if lexer.quote or not tokens:
        raise JSONParseError("JSON parse error, expecting value")
    return parse_tokens(tokens)
