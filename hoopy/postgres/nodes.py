"""Reading the nodes of a parse tree as libpg_query writes them (hoopy.postgres.sqltree)."""
from __future__ import annotations

from hoopy.postgres.sqltree import NODE_TYPES


def unwrap(v):
    """A Node as written by libpg_query: {"Type": {fields}} -> (Type, fields)."""
    if isinstance(v, dict) and len(v) == 1:
        for k, f in v.items():
            if k in NODE_TYPES and isinstance(f, dict):
                return k, f
    return None, v


def strings(items) -> list:
    out = []
    for x in items or ():
        t, f = unwrap(x)
        if t == "String":
            out.append(f.get("sval", ""))
        elif t == "A_Star":
            out.append("*")
    return out


def qualified(names):
    """(schema or None, name) of a possibly qualified name list (catalog.schema.name)."""
    if not names or len(names) > 3:
        return None
    return (names[-2] if len(names) >= 2 else None), names[-1]
