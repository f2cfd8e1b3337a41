"""A small Erlang term model: render Python values as Erlang term text, and parse term text back.

Pure. `core.nodeconfig` uses it to write `sys.config`, `core.rpccodec` to write erl_call
arguments and read plain erl_call results (`ok`, `"12345"`, `{badrpc,...}`), `core.upgrade` to
read and rewrite the release_handler's `RELEASES` file and `.rel` files.

Python side of the mapping:
    str -> charlist "..."     Atom -> atom (quoted when needed)   Binary -> <<"..."/utf8>>
    bytes -> <<1,2,3>>        int/float -> number                 bool -> true/false
    None -> undefined         tuple -> {...}                      list -> [...]
The parser understands the subset erl_call and release_handler print: atoms, strings, numbers,
lists (proper, and `[a|b]`), tuples, binaries (`<<...>>` and erl_call's `#Bin<...>`), maps, and
treats pids/refs/funs (`<0.1.0>`, `#Ref<...>`) as opaque `Opaque` values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# fmt: off
RESERVED_WORDS = frozenset({
    "after", "and", "andalso", "band", "begin", "bnot", "bor", "bsl", "bsr", "bxor", "case",
    "catch", "cond", "div", "else", "end", "fun", "if", "let", "maybe", "not", "of", "or",
    "orelse", "receive", "rem", "try", "when", "xor",
})
# fmt: on
_UNQUOTED_ATOM_RE = re.compile(r"[a-z][A-Za-z0-9_@]*\Z")
MAX_ATOM_CHARS = 255


@dataclass(frozen=True)
class Atom:
    name: str

    def __post_init__(self) -> None:
        if len(self.name) > MAX_ATOM_CHARS:
            raise ValueError(f"atom longer than {MAX_ATOM_CHARS} characters")


@dataclass(frozen=True)
class Binary:
    """A UTF-8 binary given as text: renders as `<<"text"/utf8>>`."""

    text: str


@dataclass(frozen=True)
class Opaque:
    """A pid, port, reference or fun as printed: kept as text, never interpreted."""

    text: str


@dataclass(frozen=True)
class ImproperList:
    items: tuple[Any, ...]
    tail: Any


class TermSyntaxError(ValueError):
    pass


# --------------------------------------------------------------------------------- rendering


def _escape_char(ch: str, quote: str) -> str:
    code = ord(ch)
    if ch in ("\\", quote):
        return "\\" + ch
    if ch == "\n":
        return "\\n"
    if ch == "\t":
        return "\\t"
    if ch == "\r":
        return "\\r"
    if 0x20 <= code < 0x7F:
        return ch
    # Everything else as a code point escape: the file stays pure ASCII, so its encoding can
    # never be misread, and control characters cannot break out of the literal.
    return f"\\x{{{code:X}}}"


def quote_string(text: str, quote: str = '"') -> str:
    return quote + "".join(_escape_char(c, quote) for c in text) + quote


def render_atom(name: str) -> str:
    Atom(name)  # length check
    if _UNQUOTED_ATOM_RE.match(name) and name not in RESERVED_WORDS:
        return name
    return quote_string(name, "'")


def _render_float(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"{value!r} has no Erlang form")
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"  # Erlang floats need digits on both sides of the point
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def render_term(value: Any) -> str:
    """Erlang term text for a Python value (see the module docstring for the mapping)."""
    if value is None:
        return "undefined"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Atom):
        return render_atom(value.name)
    if isinstance(value, str):
        return quote_string(value)
    if isinstance(value, Binary):
        return f"<<{quote_string(value.text)}/utf8>>" if value.text else "<<>>"
    if isinstance(value, bytes):
        return "<<" + ",".join(str(b) for b in value) + ">>"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _render_float(value)
    if isinstance(value, tuple):
        return "{" + ",".join(render_term(v) for v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render_term(v) for v in value) + "]"
    if isinstance(value, ImproperList):
        head = ",".join(render_term(v) for v in value.items)
        return f"[{head}|{render_term(value.tail)}]"
    if isinstance(value, dict):
        inner = ",".join(f"{render_term(k)} => {render_term(v)}" for k, v in value.items())
        return "#{" + inner + "}"
    if isinstance(value, Opaque):
        raise ValueError(f"cannot render opaque term {value.text}")
    raise TypeError(f"no Erlang form for {type(value).__name__}")


# ----------------------------------------------------------------------------------- parsing

_SIMPLE_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "s": " ",
    "e": "\x1b",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "d": "\x7f",
    "0": "\0",
}
_NUMBER_RE = re.compile(r"-?\d+(\.\d+([eE][+-]?\d+)?)?(#[0-9A-Za-z]+)?")
_BARE_ATOM_RE = re.compile(r"[a-z][A-Za-z0-9_@]*")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> TermSyntaxError:
        near = self.text[self.pos : self.pos + 20]
        return TermSyntaxError(f"{what} at offset {self.pos} near {near!r}")

    def skip(self) -> None:
        t = self.text
        while self.pos < len(t):
            c = t[self.pos]
            if c in " \t\r\n":
                self.pos += 1
            elif c == "%":
                end = t.find("\n", self.pos)
                self.pos = len(t) if end < 0 else end + 1
            else:
                return

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, token: str) -> None:
        self.skip()
        if not self.text.startswith(token, self.pos):
            raise self.fail(f"expected {token!r}")
        self.pos += len(token)

    def quoted(self, quote: str) -> str:
        self.expect(quote)
        out: list[str] = []
        t = self.text
        while True:
            if self.pos >= len(t):
                raise self.fail("unterminated literal")
            c = t[self.pos]
            self.pos += 1
            if c == quote:
                return "".join(out)
            out.append(self.escape() if c == "\\" else c)

    def escape(self) -> str:
        """The character of an escape sequence; `pos` is just after the backslash."""
        t = self.text
        if self.pos >= len(t):
            raise self.fail("unterminated escape")
        e = t[self.pos]
        self.pos += 1
        try:
            if e in _SIMPLE_ESCAPES:
                return _SIMPLE_ESCAPES[e]
            if e == "x":
                if t.startswith("{", self.pos):
                    end = t.index("}", self.pos)
                    code = int(t[self.pos + 1 : end], 16)
                    self.pos = end + 1
                else:
                    code = int(t[self.pos : self.pos + 2], 16)
                    self.pos += 2
                return chr(code)
            if e in "01234567":
                digits = e
                while len(digits) < 3 and self.pos < len(t) and t[self.pos] in "01234567":
                    digits += t[self.pos]
                    self.pos += 1
                return chr(int(digits, 8))
            if e == "^":
                self.pos += 1
                return chr(ord(t[self.pos - 1]) % 32)
        except (ValueError, IndexError, OverflowError) as exc:
            raise self.fail("bad escape") from exc
        return e

    def sequence(self, close: str) -> list[Any]:
        items: list[Any] = []
        if self.peek() == close:
            self.pos += 1
            return items
        while True:
            items.append(self.value())
            c = self.peek()
            if c == ",":
                self.pos += 1
            elif c == close:
                self.pos += 1
                return items
            else:
                raise self.fail(f"expected ',' or {close!r}")

    def value(self) -> Any:
        c = self.peek()
        t = self.text
        if c == "{":
            self.pos += 1
            return tuple(self.sequence("}"))
        if c == "[":
            self.pos += 1
            return self.list_value()
        if c == '"':
            s = self.quoted('"')
            while self.peek() == '"':  # adjacent literals concatenate
                s += self.quoted('"')
            return s
        if c == "'":
            return Atom(self.quoted("'"))
        if t.startswith("<<", self.pos):
            return self.binary()
        if t.startswith("#Bin<", self.pos):
            end = t.index(">", self.pos)
            body = t[self.pos + 5 : end]
            self.pos = end + 1
            return bytes(int(b) for b in body.split(",") if b.strip())
        if t.startswith("#{", self.pos):
            self.pos += 2
            return self.map_value()
        if c in ("#", "<"):
            return self.opaque()
        if c == "$":
            self.pos += 1
            if self.pos >= len(t):
                raise self.fail("bad character literal")
            ch = t[self.pos]
            self.pos += 1
            return ord(self.escape() if ch == "\\" else ch)
        m = _NUMBER_RE.match(t, self.pos)
        if m and m.group(0) not in ("", "-"):
            self.pos = m.end()
            text = m.group(0)
            if m.group(3):
                base, _, digits = text.partition("#")
                return int(digits, int(base))
            return float(text) if m.group(1) else int(text)
        m = _BARE_ATOM_RE.match(t, self.pos)
        if m:
            self.pos = m.end()
            name = m.group(0)
            return {"true": True, "false": False}.get(name, Atom(name))
        raise self.fail("unexpected character" if c else "unexpected end of input")

    def list_value(self) -> Any:
        items: list[Any] = []
        if self.peek() == "]":
            self.pos += 1
            return items
        while True:
            items.append(self.value())
            c = self.peek()
            if c == ",":
                self.pos += 1
            elif c == "|":
                self.pos += 1
                tail_value = self.value()
                self.expect("]")
                return ImproperList(tuple(items), tail_value)
            elif c == "]":
                self.pos += 1
                return items
            else:
                raise self.fail("expected ',', '|' or ']'")

    def map_value(self) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        if self.peek() == "}":
            self.pos += 1
            return out
        while True:
            key = self.value()
            self.expect("=>")
            out[_hashable(key)] = self.value()
            c = self.peek()
            if c == ",":
                self.pos += 1
            elif c == "}":
                self.pos += 1
                return out
            else:
                raise self.fail("expected ',' or '}'")

    def binary(self) -> bytes | Binary:
        self.expect("<<")
        if self.peek() == '"':
            text = self.quoted('"')
            if self.text.startswith("/utf8", self.pos):
                self.pos += 5
            self.expect(">>")
            return Binary(text)
        if self.text.startswith(">>", self.pos):
            self.pos += 2
            return b""
        parts: list[int] = []
        while True:
            v = self.value()
            if not isinstance(v, int) or not 0 <= v < 256:
                raise self.fail("binary segment is not a byte")
            parts.append(v)
            c = self.peek()
            if c == ",":
                self.pos += 1
            elif self.text.startswith(">>", self.pos):
                self.pos += 2
                return bytes(parts)
            else:
                raise self.fail("expected ',' or '>>'")

    def opaque(self) -> Opaque:
        # `<0.90.0>`, `#Ref<0.1.2.3>`, `#Port<0.5>`, `#Fun<erl_eval.6.1>`: up to the matching `>`.
        t = self.text
        start = self.pos
        depth = 0
        while self.pos < len(t):
            ch = t[self.pos]
            self.pos += 1
            if ch == "<":
                depth += 1
            elif ch == ">":
                depth -= 1
                if depth == 0:
                    return Opaque(t[start : self.pos])
        raise self.fail("unterminated opaque term")


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def parse_term(text: str) -> Any:
    """One term, optionally followed by a full stop (as in a consult file or erl_call output)."""
    p = _Parser(text)
    value = p.value()
    if p.peek() == ".":
        p.pos += 1
    if p.peek():
        raise p.fail("trailing text")
    return value
