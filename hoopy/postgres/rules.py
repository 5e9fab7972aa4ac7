"""The postgres rule words: ``read | write | lock | ddl | admin | all [OBJECT ...]``.

OBJECT is a table ``schema.name`` or a function ``schema.name()`` (globs
allowed; a bare name is in ``public``; a quoted part is taken literally, case,
dots and glob characters included). A statement touching two tables is two
units; each must be covered on its own.

``lock`` covers advisory locks (a unit without a table), ``LOCK TABLE`` in a
mode stronger than ACCESS SHARE and row locks (``FOR UPDATE`` and its kin) on
a table. ``write TABLE`` implies ``lock TABLE`` (and ``write`` without tables,
every lock).

A few objects are covered only by a rule that names them (no glob) or by a
rule without objects: the catalog views and functions that show other
sessions' activity, server files or statistics samples
(``hoopy.postgres.functions``), so ``read pg_catalog.*`` is not
``read pg_catalog.pg_stat_activity``.
"""
from __future__ import annotations

import fnmatch
import re

from hoopy.policy.rules import RuleError, Unit
from hoopy.postgres.functions import named_only_subject
from hoopy.postgres.names import object_name, quote_part

PG_CLASSES = ("read", "write", "lock", "ddl", "admin")
# What a rule of each class covers: write TABLE implies lock TABLE.
COVERS = {"read": ("read",), "write": ("write", "lock"), "lock": ("lock",), "ddl": ("ddl",),
          "admin": ("admin",), "all": PG_CLASSES}

_PART = r'(?:[A-Za-z_*?][A-Za-z0-9_$*?]*|"(?:[^"]|"")+")'
_OBJECT = re.compile(rf"^{_PART}(?:\.{_PART})?(\(\))?$")
_GLOB = re.compile(r"[*?\[]")


def _split(text: str) -> list[str]:
    return re.findall(r'"(?:[^"]|"")+"|[^."]+', text)


def _pattern(text: str) -> tuple[str, bool]:
    """A rule's object as an fnmatch pattern over unit subjects, and whether it has a glob."""
    func = text.endswith("()")
    if func:
        text = text[:-2]
    parts = _split(text)
    out = []
    glob = False
    for p in parts:
        if p.startswith('"'):
            literal = p[1:-1].replace('""', '"')
            # Literal: glob characters in a quoted name match only themselves.
            out.append(re.sub(r"([*?\[])", r"[\1]", quote_part(literal)))
        else:
            glob |= bool(_GLOB.search(p))
            out.append(p.lower())
    if len(out) == 1:
        out.insert(0, "public")
    return ".".join(out) + ("()" if func else ""), glob


def parse(text: str, deny: bool = False):
    words = text.split()
    cls = words[0].lower()
    if cls not in COVERS:
        raise RuleError(f"{text!r}: postgres rules start with read, write, lock, ddl, admin or all")
    patterns = []
    for t in words[1:]:
        t = t.rstrip(",")
        if not _OBJECT.match(t):
            raise RuleError(f"{text!r}: {t!r} is not a table name (schema.table) or function (schema.name())")
        patterns.append(_pattern(t))
    classes = COVERS[cls]
    literal = frozenset(p for p, glob in patterns if not glob)

    def match(unit: Unit) -> bool:
        if unit.kind not in classes:
            return False
        if not patterns:
            return True
        if unit.subject is None:
            # A unit without a table (SELECT 1, an advisory lock) is covered by any
            # rule of its class; write TABLE implies lock on that table only.
            return unit.kind == cls or cls == "all"
        if named_only(unit.subject) and not deny:
            return unit.subject in literal
        return any(fnmatch.fnmatchcase(unit.subject, p) for p, _ in patterns)

    return match


def parse_deny(text: str):
    """A rule of a grant's ``deny`` list: its globs cover everything they match
    (``deny = ["read pg_catalog.*"]`` denies pg_stat_activity too)."""
    return parse(text, deny=True)


def named_only(subject: str) -> bool:
    """Objects a glob never covers (see the module's doc)."""
    return named_only_subject(subject)


def pg_table_unit(cls: str, schema: str | None, name: str | None) -> Unit:
    """The unit for one table a statement touches (names as PostgreSQL folds them)."""
    if name is None:
        return Unit(cls, None)
    return Unit(cls, object_name(schema or "public", name))
