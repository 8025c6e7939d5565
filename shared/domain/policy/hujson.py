"""HuJSON ("human JSON"): JSON plus // and /* */ comments and trailing commas.

`loads(text)` returns plain Python values (dict, list, str, int/float, bool, None). Errors are
PolicyError with the 1-based line and column of the offending character. Duplicate object keys
are an error (Tailscale rejects them too). Nothing but PolicyError escapes, whatever the input.
"""

from __future__ import annotations

from typing import Any

from .errors import PolicyError

_WS = " \t\r\n\ufeff"
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_MAX_DEPTH = 200


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.n = len(text)

    # -- positions ---------------------------------------------------------------------------
    def where(self, pos: int) -> tuple[int, int]:
        line = self.s.count("\n", 0, pos) + 1
        start = self.s.rfind("\n", 0, pos) + 1
        return line, pos - start + 1

    def fail(self, message: str, pos: int | None = None) -> PolicyError:
        line, col = self.where(self.i if pos is None else pos)
        return PolicyError(message, line, col)

    # -- lexing ------------------------------------------------------------------------------
    def skip(self) -> None:
        s, n = self.s, self.n
        while self.i < n:
            ch = s[self.i]
            if ch in _WS:
                self.i += 1
            elif s.startswith("//", self.i):
                end = s.find("\n", self.i)
                self.i = n if end < 0 else end + 1
            elif s.startswith("/*", self.i):
                end = s.find("*/", self.i + 2)
                if end < 0:
                    raise self.fail("unterminated /* comment")
                self.i = end + 2
            else:
                return

    def value(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise self.fail("nesting too deep")
        self.skip()
        if self.i >= self.n:
            raise self.fail("unexpected end of input, expected a value")
        ch = self.s[self.i]
        if ch == "{":
            return self.obj(depth)
        if ch == "[":
            return self.arr(depth)
        if ch == '"':
            return self.string()
        if ch == "-" or ch.isdigit():
            return self.number()
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.s.startswith(word, self.i):
                self.i += len(word)
                return val
        raise self.fail(f"invalid character {ch!r} looking for beginning of value")

    def obj(self, depth: int) -> dict[str, Any]:
        self.i += 1
        out: dict[str, Any] = {}
        while True:
            self.skip()
            if self.i >= self.n:
                raise self.fail("unexpected end of input in object")
            if self.s[self.i] == "}":
                self.i += 1
                return out
            if self.s[self.i] != '"':
                raise self.fail(f"invalid character {self.s[self.i]!r} looking for object key")
            key_pos = self.i
            key = self.string()
            if key in out:
                raise self.fail(f"duplicate key {key!r}", key_pos)
            self.skip()
            if self.i >= self.n or self.s[self.i] != ":":
                raise self.fail("expected ':' after object key")
            self.i += 1
            out[key] = self.value(depth + 1)
            self.skip()
            if self.i >= self.n:
                raise self.fail("unexpected end of input in object")
            if self.s[self.i] == ",":
                self.i += 1
            elif self.s[self.i] != "}":
                raise self.fail(f"invalid character {self.s[self.i]!r} after object value")

    def arr(self, depth: int) -> list[Any]:
        self.i += 1
        out: list[Any] = []
        while True:
            self.skip()
            if self.i >= self.n:
                raise self.fail("unexpected end of input in array")
            if self.s[self.i] == "]":
                self.i += 1
                return out
            out.append(self.value(depth + 1))
            self.skip()
            if self.i >= self.n:
                raise self.fail("unexpected end of input in array")
            if self.s[self.i] == ",":
                self.i += 1
            elif self.s[self.i] != "]":
                raise self.fail(f"invalid character {self.s[self.i]!r} after array element")

    def string(self) -> str:
        start = self.i
        self.i += 1
        parts: list[str] = []
        s, n = self.s, self.n
        while True:
            if self.i >= n:
                raise self.fail("unterminated string", start)
            ch = s[self.i]
            if ch == '"':
                self.i += 1
                return "".join(parts)
            if ch == "\\":
                if self.i + 1 >= n:
                    raise self.fail("unterminated string", start)
                esc = s[self.i + 1]
                if esc in _ESCAPES:
                    parts.append(_ESCAPES[esc])
                    self.i += 2
                elif esc == "u":
                    hexdigits = s[self.i + 2 : self.i + 6]
                    if len(hexdigits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in hexdigits):
                        raise self.fail("invalid \\u escape in string")
                    code = int(hexdigits, 16)
                    self.i += 6
                    if 0xD800 <= code < 0xDC00 and s.startswith("\\u", self.i):
                        low_hex = s[self.i + 2 : self.i + 6]
                        if len(low_hex) == 4 and all(c in "0123456789abcdefABCDEF" for c in low_hex):
                            low = int(low_hex, 16)
                            if 0xDC00 <= low < 0xE000:
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                                self.i += 6
                    if 0xD800 <= code < 0xE000:
                        code = 0xFFFD  # a lone surrogate: replaced, as Go does
                    parts.append(chr(code))
                else:
                    raise self.fail(f"invalid escape '\\{esc}' in string")
            elif ch < " ":
                raise self.fail("invalid control character in string")
            else:
                end = self.i
                while end < n and s[end] not in '"\\' and s[end] >= " ":
                    end += 1
                parts.append(s[self.i : end])
                self.i = end

    def number(self) -> int | float:
        start = self.i
        s, n = self.s, self.n
        if s[self.i] == "-":
            self.i += 1
        if self.i >= n or not s[self.i].isdigit():
            raise self.fail("invalid number", start)
        if s[self.i] == "0":
            self.i += 1
        else:
            while self.i < n and s[self.i].isdigit():
                self.i += 1
        is_float = False
        if self.i < n and s[self.i] == ".":
            is_float = True
            self.i += 1
            if self.i >= n or not s[self.i].isdigit():
                raise self.fail("invalid number", start)
            while self.i < n and s[self.i].isdigit():
                self.i += 1
        if self.i < n and s[self.i] in "eE":
            is_float = True
            self.i += 1
            if self.i < n and s[self.i] in "+-":
                self.i += 1
            if self.i >= n or not s[self.i].isdigit():
                raise self.fail("invalid number", start)
            while self.i < n and s[self.i].isdigit():
                self.i += 1
        text = s[start : self.i]
        if not text.isascii():
            raise self.fail("invalid number", start)
        try:
            return float(text) if is_float else int(text)
        except (ValueError, OverflowError):  # pragma: no cover - digits are checked above
            raise self.fail("invalid number", start) from None


def loads(text: str | bytes) -> Any:
    """Parse HuJSON text into Python values; raise PolicyError(line, column, reason)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"policy is not valid UTF-8 (byte {exc.start})", 1, 1) from None
    p = _Parser(text)
    value = p.value()
    p.skip()
    if p.i < p.n:
        raise p.fail(f"invalid character {p.s[p.i]!r} after top-level value")
    return value
