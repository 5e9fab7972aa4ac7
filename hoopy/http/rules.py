"""The http rule words: ``METHOD /path/glob`` (METHOD may be ``*``).

``*`` matches within one segment, ``?`` one character of it, ``**`` across segments. A ``*`` that is a
whole segment never matches an empty one: ``GET /v1/customers/*`` is one customer, not the
collection ``/v1/customers/`` (which upstreams that ignore a trailing slash serve as ``/v1/customers``).
"""
from __future__ import annotations

import re

from hoopy.policy.rules import RuleError

_METHOD = re.compile(r"^(\*|[A-Z]+)$")


def _tokens(glob: str) -> list[str]:
    """"*", "**", "?" or one literal character each; a "*" that is a whole segment is "?" then "*"
    (at least one character: never an empty segment)."""
    tokens = []
    i, n = 0, len(glob)
    while i < n:
        if glob.startswith("**", i):
            tokens.append("**")
            i += 2
        elif glob[i] == "*":
            whole = (i > 0 and glob[i - 1] == "/") and (i + 1 == n or glob[i + 1] == "/")
            tokens += ["?", "*"] if whole else ["*"]
            i += 1
        else:
            tokens.append(glob[i])
            i += 1
    return tokens


def _path_pattern(glob: str) -> re.Pattern:
    """The glob as one regex: what _path_matcher computes, without its speed guarantee (tests)."""
    parts = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(parts.get(t) or re.escape(t) for t in _tokens(glob)), re.DOTALL)


def _path_matcher(glob: str):
    """Does a path match the glob? In time linear in the path, whatever the glob.

    A regex of several ``[^/]*`` and ``.*`` runs backtracks polynomially on a
    long path that almost matches (seconds for a crafted request), and with
    ``*`` and ``**`` mixed no leftmost shortcut is right. So the glob runs as
    an NFA, its live states kept as the bits of one integer (shift-and).
    """
    tokens = _tokens(glob)
    m = len(tokens)
    final = 1 << m
    any_char = 0  # "?" positions: any character but "/"
    stars = 0  # "*": stay on any character but "/"
    globstars = 0  # "**": stay on any character
    literal: dict[str, int] = {}
    for pos, t in enumerate(tokens):
        bit = 1 << pos
        if t == "?":
            any_char |= bit
        elif t == "*":
            stars |= bit
        elif t == "**":
            globstars |= bit
        else:
            literal[t] = literal.get(t, 0) | bit
    skippable = stars | globstars

    def closure(d: int) -> int:
        while True:  # a star may match nothing: step over it
            nxt = d | ((d & skippable) << 1)
            if nxt == d:
                return d
            d = nxt

    start = closure(1)

    def match(text: str) -> bool:
        d = start
        for c in text:
            if c == "/":
                step = literal.get(c, 0)
                stay = globstars
            else:
                step = literal.get(c, 0) | any_char
                stay = skippable
            d = closure(((d & step) << 1) | (d & stay))
            if not d:
                return False
        return bool(d & final)

    return match


def _compile(text: str):
    parts = text.split()
    if len(parts) != 2:
        raise RuleError(f"{text!r}: http rules are METHOD /path/glob")
    method, path = parts
    if not _METHOD.match(method):
        raise RuleError(f"{text!r}: {method!r} is not a method (GET, POST, ... or *)")
    if not path.startswith("/"):
        raise RuleError(f"{text!r}: the path must start with /")
    return method, _path_matcher(path)


def parse(text: str):
    method, matches = _compile(text)
    return lambda unit: (method == "*" or unit.kind == method) and unit.subject is not None and matches(
        unit.subject)


def route_matcher(text: str):
    """``METHOD /glob`` as a test of (method, path): a route list outside grants (masking passthrough)."""
    method, matches = _compile(text)
    return lambda m, path: (method == "*" or m == method) and matches(path)
