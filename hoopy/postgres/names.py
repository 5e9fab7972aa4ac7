"""An object's name as postgres units show it: ``schema.name``, a part quoted when it holds a dot or
a quote. Rules match it (rules.py) and the function catalogue names units by it (functions.py)."""
from __future__ import annotations


def quote_part(part: str) -> str:
    """One part of an object's name as units show it: quoted when it holds a dot
    or a quote, so "a.b".c and a."b.c" stay apart."""
    if "." in part or '"' in part:
        return '"' + part.replace('"', '""') + '"'
    return part


def object_name(schema: str, name: str) -> str:
    return f"{quote_part(schema)}.{quote_part(name)}"
