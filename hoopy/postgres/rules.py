"""The postgres rule words: ``read | write | ddl | admin | all [TABLE ...]``.

TABLE is ``schema.name`` (globs allowed); a bare name is in ``public``. A
statement touching two tables is two units; each must be covered on its own.
"""
from __future__ import annotations

import fnmatch
import re

from hoopy.policy.rules import RuleError, Unit

PG_CLASSES = ("read", "write", "ddl", "admin")

_IDENT = r'(?:[A-Za-z_*?][A-Za-z0-9_$*?]*|"[^"]+")'
_TABLE = re.compile(rf"^{_IDENT}(?:\.{_IDENT})?$")


def _normalize_table(name: str) -> str:
    parts = [p[1:-1] if p.startswith('"') else p.lower() for p in _split_dotted(name)]
    if len(parts) == 1:
        parts.insert(0, "public")
    return ".".join(parts)


def _split_dotted(name: str) -> list[str]:
    return re.findall(r'"[^"]+"|[^.]+', name)


def parse(text: str):
    words = text.split()
    cls = words[0].lower()
    if cls not in PG_CLASSES + ("all",):
        raise RuleError(f"{text!r}: postgres rules start with read, write, ddl, admin or all")
    tables = []
    for t in words[1:]:
        t = t.rstrip(",")
        if not _TABLE.match(t):
            raise RuleError(f"{text!r}: {t!r} is not a table name (schema.table)")
        tables.append(_normalize_table(t))
    classes = PG_CLASSES if cls == "all" else (cls,)

    def match(unit: Unit) -> bool:
        if unit.kind not in classes:
            return False
        if not tables or unit.subject is None:
            return True
        return any(fnmatch.fnmatchcase(unit.subject, t) for t in tables)

    return match


def pg_table_unit(cls: str, schema: str | None, name: str | None) -> Unit:
    """The unit for one table a statement touches (names as PostgreSQL folds them)."""
    if name is None:
        return Unit(cls, None)
    return Unit(cls, f"{schema or 'public'}.{name}")


