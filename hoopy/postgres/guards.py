"""Refusals that need no rule: what would corrupt data or the gateway's reading of SQL.

- A write that stores the redaction marker: a client that read a masked row and
  writes it back (Django's ``save()`` of every field) would replace the real
  value with ``[REDACTED]``.
- A change of ``client_encoding`` away from UTF8: the gateway's parser reads SQL
  as UTF-8; under another encoding the server could read a statement otherwise.
- While the session is in such a state anyway (a role default, an admin's
  ``SET``), the one statement that may pass is the one restoring the setting.

Each check is a substring test first; SQL is parsed only when it may apply.
"""
from __future__ import annotations

import json

from pglast import parser

from hoopy.policy.masking import MASK
from hoopy.postgres.startup import is_utf8_name, lexing_unsafe

MARKER = MASK
MARKER_B = MASK.encode()
_STORES = ("InsertStmt", "UpdateStmt", "MergeStmt")


def _nodes(sql: str):
    """Every node of the parse tree as (type name, fields); None if it does not parse."""
    try:
        tree = json.loads(parser.parse_sql_json(sql))
    except (parser.ParseError, RecursionError, ValueError):
        return None  # the classifier reports what does not parse; this check does not apply
    out = []
    stack = [tree]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            for k, v in x.items():
                if isinstance(v, dict) and k[:1].isupper():
                    out.append((k, v))
                stack.append(v)
        elif isinstance(x, list):
            stack.extend(x)
    return out


def holds_marker(sql: str, params=()) -> bool:
    if MARKER in sql:
        return True
    for p in params:  # (a loop, not any() over a generator: every statement asks)
        if p is not None and MARKER_B in p:
            return True
    return False


def stores_marker(sql: str, params=()) -> str | None:
    """Why a statement storing the redaction marker is refused, or None."""
    if not holds_marker(sql, params):
        return None
    nodes = _nodes(sql)
    if nodes is None:
        return None
    if any(k in _STORES or (k == "CopyStmt" and v.get("is_from")) for k, v in nodes):
        return (f"refused: this write holds hoopy's redaction marker {MARKER}: it would replace the real "
                "value with the mask (write back only the columns you changed)")
    return None


def _const(node) -> str | None:
    if not isinstance(node, dict):
        return None
    c = node.get("A_Const")
    if c is None:
        return None
    for kind in ("sval", "ival", "fval", "boolval"):
        for v in c.values():
            if isinstance(v, dict) and kind in v:
                return str(v[kind])
    return None


def _settings_made(nodes):
    """(setting name, value or None for a default/reset, or ... if unknown) for each SET or set_config."""
    for k, v in nodes:
        if k == "VariableSetStmt":
            name = (v.get("name") or "").lower()
            kind = v.get("kind")
            if kind in ("VAR_SET_VALUE",):
                args = v.get("args") or []
                yield name, _const(args[0]) if len(args) == 1 else ...
            elif kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
                yield name, None
            elif kind == "VAR_RESET_ALL":
                yield "all", None
        elif k == "FuncCall":
            names = [n.get("String", {}).get("sval") for n in v.get("funcname", [])]
            if names and names[-1] == "set_config" and names[:-1] in ([], ["pg_catalog"]):
                args = v.get("args") or []
                name = _const(args[0]) if args else None
                if name is None:
                    yield ..., ...
                else:
                    yield name.lower(), _const(args[1]) if len(args) > 1 else ...


def encoding_problem(sql: str) -> str | None:
    """A statement that would set client_encoding to anything but UTF8."""
    low = sql.lower()
    if "client_encoding" not in low and "names" not in low and "set_config" not in low:
        return None
    nodes = _nodes(sql)
    if not nodes:
        return None
    for name, value in _settings_made(nodes):
        if name is ... and "set_config" in low:
            continue  # a computed name is the classifier's to judge (admin)
        if name == "client_encoding" and value is not None and (value is ... or not is_utf8_name(value)):
            return "refused: hoopy accepts only UTF8 as client_encoding"
    return None


def restores(sql: str, unsafe: dict) -> bool:
    """True for a plain-ASCII statement that only sets the unsafe settings back
    to safe values (read the same by the server under any encoding hoopy meets)."""
    if not sql.isascii() or "\\" in sql:
        return False
    nodes = _nodes(sql)
    if not nodes:
        return False
    stmts = [k for k, _ in nodes if k.endswith("Stmt") and k != "RawStmt"]
    if not stmts or any(k != "VariableSetStmt" for k in stmts):
        return False
    for name, value in _settings_made(nodes):
        if name not in unsafe or value is ...:
            return False
        if value is not None and lexing_unsafe(name, value):
            return False
    return True
