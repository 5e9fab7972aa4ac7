"""PostgreSQL's parser, bounded: SQL text to a tree of plain dicts the walker reads.

pglast (libpg_query: the server's own grammar, in C) parses to JSON. Before
Python builds objects from it, the JSON is made small at C speed: positions
are dropped and every constant and parameter is folded to one scalar (a string
constant keeps its text, which ``set_config('name', ...)`` needs). A bulk
``INSERT ... VALUES`` of a megabyte is then a few thousand small lists.

What one statement may cost is bounded: the parser's own stack-depth check
(as the server's), at most ``MAX_NODES`` objects, and a decoder that does not
recurse (a deeply nested expression is decoded without Python's recursion
limit). A statement past a bound raises ``CannotJudge``: refused, with the reason.
"""
from __future__ import annotations

import json
import re

from pglast import ast as _ast
from pglast.parser import ParseError, parse_sql_json


class ClassifyError(Exception):
    """The statement cannot be judged: refused with this message and SQLSTATE."""

    code = "42601"
    prefix = "syntax error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def reason(self) -> str:
        return f"{self.prefix}: {self.message}"


class Heavy(Exception):
    """Judging this statement would take more than a moment: do it off the reactor."""


class CannotJudge(ClassifyError):
    """Past a bound (too large, too deep) or an internal failure of the classifier."""

    code = "54001"  # statement_too_complex
    prefix = "hoopy cannot judge this statement"


# Objects after folding; a SELECT list may have at most 1664 entries and a
# megabyte of VALUES rows folds to a few objects per row.
MAX_NODES = 200_000
MAX_DEPTH = 100_000  # JSON nesting (the parser refuses far less: its stack-depth check)
INLINE_NODES = 4000  # more than this is judged on a thread (about 10 ms of work)

_STRING = r'"(?:[^"\\]++|\\.)*+"'  # possessive: no backtracking state on long strings
# Positions are set to 0 (a literal prefix: fast to find; a quote in a string is
# escaped, so `"location":` is never inside one).
_LOCATION = re.compile(r'"location":-?\d+')
_STRING_CONST = re.compile(r'\{"A_Const":\{"sval":\{(?:"sval":(' + _STRING + r'))?\}(?:,"location":0)?\}\}')
_OTHER_CONST = re.compile(r'\{"A_Const":\{(?:,?"[a-z_]+":(?:\{(?:"[a-z_]+":(?:' + _STRING
                          + r'|[-\w.]+))?\}|true|false|-?\d+))*\}\}|\{"ParamRef":\{[^{}]*\}\}')


# A string constant becomes a JSON string starting with NUL (which no SQL name or
# value can hold): the walk tells it from a name, and ``shape`` can leave it out.
CONST = "\x00"


def _string_const(m):
    g = m.group(1)
    return '"\\u0000' + g[1:] if g else '"\\u0000"'


def _fold(j: str) -> str:
    j = _LOCATION.sub('"location":0', j)
    j = _STRING_CONST.sub(_string_const, j)
    return _OTHER_CONST.sub("0", j)


def const_text(v):
    """A folded string constant's text, or None for anything else."""
    if isinstance(v, str) and v.startswith(CONST):
        return v[1:]
    return None


def parse(sql: str) -> list:
    """The raw statements ({"stmt": {Type: fields}, ...}) of the SQL, constants folded."""
    return load(folded(sql))


def folded(sql: str, inline: bool = False) -> str:
    """The parse tree as JSON text, positions dropped and constants folded; bounded."""
    try:
        j = parse_sql_json(sql)
    except ParseError as e:
        message = str(e.args[0]) if e.args else str(e)
        if "stack depth" in message:
            raise CannotJudge("it is nested too deeply") from None
        raise ClassifyError(message) from None
    except (MemoryError, RecursionError) as e:
        raise CannotJudge(f"the parser ran out of room ({type(e).__name__})") from None
    # A first bound before the folding copies are made: each constant folds
    # away at most three objects, each parameter two.
    least = j.count("{") - 3 * j.count('{"A_Const"') - 2 * j.count('{"ParamRef"')
    if least > MAX_NODES:
        raise CannotJudge(f"it has more than {MAX_NODES} parse nodes")
    if inline and (least > INLINE_NODES or len(j) > 64 * INLINE_NODES):
        raise Heavy()
    j = _fold(j)
    nodes = j.count("{")  # an upper bound: braces inside string constants count too
    if nodes > MAX_NODES:
        raise CannotJudge(f"it has more than {MAX_NODES} parse nodes ({nodes})")
    return j


_CONST_VALUE = re.compile(r'"\\u0000(?:[^"\\]++|\\.)*+"')


def shape(j: str) -> str:
    """``folded``'s text with the string constants' values left out too: statements
    that differ only in constants share it. Only a statement whose meaning does not
    depend on a constant's value may be cached by it (``Parsed.cacheable``)."""
    return _CONST_VALUE.sub("0", j)


def load(j: str, inline: bool = False) -> list:
    """The folded JSON as Python objects. ``inline``: on the reactor thread, where a
    tree too large or too deep for a moment's work raises Heavy instead."""
    if inline and j.count("{") > INLINE_NODES:
        raise Heavy()
    try:
        tree = json.loads(j)
    except RecursionError:
        if inline:
            raise Heavy() from None
        tree = _loads_flat(j)
    return tree.get("stmts") or []


_TOKEN = re.compile(r'[{}\[\],:]|' + _STRING + r'|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null|\s+')
_LITERALS = {"true": True, "false": False, "null": None}


def _loads_flat(j: str):
    """json.loads without recursion, for trees nested deeper than Python's stack."""
    stack: list = []  # open containers: [container, pending key]
    root = None
    expect_key = False
    pos = 0
    end = len(j)
    match = _TOKEN.match
    while pos < end:
        m = match(j, pos)
        if m is None:
            raise CannotJudge("the parser's output could not be read")
        tok = m.group()
        pos = m.end()
        c = tok[0]
        if c in " \t\r\n" or c == "," or c == ":":
            continue
        if c == "}" or c == "]":
            done = stack.pop()[0]
            if not stack:
                root = done
            expect_key = bool(stack) and isinstance(stack[-1][0], dict)
            continue
        value: object  # a JSON value: dict, list, str, number, bool or None
        if c == "{" or c == "[":
            value = {} if c == "{" else []
        elif c == '"':
            value = json.loads(tok) if "\\" in tok else tok[1:-1]
            if expect_key:
                stack[-1][1] = value
                expect_key = False
                continue
        elif tok in _LITERALS:
            value = _LITERALS[tok]
        else:
            value = float(tok) if ("." in tok or "e" in tok or "E" in tok) else int(tok)
        if stack:
            top = stack[-1]
            if isinstance(top[0], dict):
                top[0][top[1]] = value
            else:
                top[0].append(value)
        if c == "{" or c == "[":
            if len(stack) >= MAX_DEPTH:
                raise CannotJudge("it is nested too deeply")
            stack.append([value, None])
            expect_key = c == "{"
        elif stack:
            expect_key = isinstance(stack[-1][0], dict)
    if root is None:
        raise CannotJudge("the parser's output could not be read")
    return root


def _struct_fields() -> dict:
    """(node type, field) -> the struct type of fields that hold one struct, not a Node:
    libpg_query writes those without the {"Type": ...} wrapper."""
    out = {}
    for name in dir(_ast):
        cls = getattr(_ast, name)
        slots = getattr(cls, "__slots__", None)
        if not isinstance(cls, type) or not isinstance(slots, dict):
            continue
        for field, info in slots.items():
            t = getattr(info, "c_type", "")
            if t.endswith("*") and t not in ("Node*", "List*", "char*") and hasattr(_ast, t[:-1]):
                out[(name, field)] = t[:-1]
    return out


STRUCT_FIELDS = _struct_fields()
NODE_TYPES = frozenset(n for n in dir(_ast) if isinstance(getattr(_ast, n), type)
                       and issubclass(getattr(_ast, n), _ast.Node)) | {"List", "IntList", "OidList"}
