"""Reads the Go composite literals the conformance cases are written in.

The GAMMA conformance tests (conformance/tests/mesh/*.go) state their
expectations as `http.ExpectedResponse{...}` literals. Rather than copying
them by hand, the ported tests read them from the pinned module with this
small parser: strings, numbers, booleans, composite literals (`T{...}`,
`[]T{...}`, `map[K]V{...}`, `&T{...}`), `a + b` of strings, and names and
calls looked up in an environment the caller gives (`ns`, `v2.Address`, ...).
Anything else raises GoSyntaxError, so a case this cannot read is reported as
not ported instead of being misread.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_TOKEN = re.compile(
    r'\s+|//[^\n]*|"(?:[^"\\]|\\.)*"|`[^`]*`|[A-Za-z_][A-Za-z0-9_.]*|[0-9]+(?:\.[0-9]+)?|\.\.\.|[{}\[\]():,+&*]'
)


class GoSyntaxError(ValueError):
    pass


def tokens(text: str) -> list[str]:
    out = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise GoSyntaxError(f"unexpected {text[pos : pos + 20]!r}")
        token = match.group()
        pos = match.end()
        if not token.isspace() and not token.startswith("//"):
            out.append(token)
    return out


Env = Mapping[str, Any]


class Parser:
    def __init__(self, toks: list[str], env: Env, calls: Mapping[str, Callable[..., Any]]):
        self.toks, self.pos, self.env, self.calls = toks, 0, env, calls

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.toks[index] if index < len(self.toks) else ""

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if expected is not None and token != expected:
            raise GoSyntaxError(f"expected {expected!r}, got {token!r}")
        self.pos += 1
        return token

    def value(self) -> Any:
        left = self._operand()
        while self.peek() == "+":
            self.take()
            left = left + self._operand()
        return left

    def _operand(self) -> Any:
        token = self.peek()
        if token.startswith('"'):
            self.take()
            return bytes(token[1:-1], "utf-8").decode("unicode_escape")
        if token.startswith("`"):
            self.take()
            return token[1:-1]
        if token[:1].isdigit():
            self.take()
            return float(token) if "." in token else int(token)
        if token in ("true", "false"):
            self.take()
            return token == "true"
        if token == "&":
            self.take()
            return self._operand()
        if token == "[" or token == "map" or self.peek(1) == "{":
            self._type()
            return self._composite()
        if token and (token[0].isalpha() or token[0] == "_"):
            self.take()
            if self.peek() == "(":
                return self._call(token)
            if token in self.env:
                return self.env[token]
            raise GoSyntaxError(f"unknown name {token!r}")
        raise GoSyntaxError(f"unexpected {token!r}")

    def _call(self, name: str) -> Any:
        self.take("(")
        args = []
        while self.peek() != ")":
            args.append(self.value())
            if self.peek() == ",":
                self.take()
        self.take(")")
        if name not in self.calls:
            raise GoSyntaxError(f"unknown call {name}()")
        return self.calls[name](*args)

    def _type(self) -> None:
        """Skip a type: name, []T, map[K]V, *T."""
        if self.peek() == "[":
            self.take("[")
            self.take("]")
            self._type()
        elif self.peek() == "map":
            self.take()
            self.take("[")
            self._type()
            self.take("]")
            self._type()
        elif self.peek() == "*":
            self.take()
            self._type()
        else:
            self.take()

    def _composite(self) -> Any:
        self.take("{")
        keyed: dict[Any, Any] = {}
        items: list[Any] = []
        while self.peek() != "}":
            if self.peek() == "{":
                items.append(self._composite())  # elided element type
            else:
                first = self.value()
                if self.peek() == ":":
                    self.take()
                    keyed[first] = self._element()
                else:
                    items.append(first)
            if self.peek() == ",":
                self.take()
        self.take("}")
        if keyed and items:
            raise GoSyntaxError("mixed keyed and positional elements")
        return keyed if keyed else items

    def _element(self) -> Any:
        return self._composite() if self.peek() == "{" else self.value()


class _Names(dict[str, Any]):
    """Field names in keyed literals (`Path: ...`) read as themselves."""

    def __init__(self, env: Env):
        super().__init__(env)

    def __missing__(self, key: str) -> str:
        if key[:1].isupper() and "." not in key:
            return key
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (
            isinstance(key, str) and key[:1].isupper() and "." not in key
        )


def parse_value(text: str, env: Env, calls: Mapping[str, Callable[..., Any]]) -> Any:
    """One Go expression (as `text`), evaluated."""
    parser = Parser(tokens(text), _Names(env), calls)
    value = parser.value()
    if parser.pos != len(parser.toks):
        raise GoSyntaxError(f"trailing {parser.peek()!r}")
    return value


def literal_at(text: str, start: int) -> tuple[str, int]:
    """The balanced `{...}` starting at the first "{" from `start`, and its end."""
    open_at = text.index("{", start)
    depth = 0
    index = open_at
    in_string: str | None = None
    while index < len(text):
        char = text[index]
        if in_string:
            if char == "\\" and in_string == '"':
                index += 1
            elif char == in_string:
                in_string = None
        elif char in '"`':
            in_string = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_at : index + 1], index + 1
        index += 1
    raise GoSyntaxError("unbalanced braces")
