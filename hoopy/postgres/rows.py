"""Masking of result rows, by each field's origin (table OID, attribute number).

``MaskRules`` is built per session from the upstream catalog (``catalog_query``);
``plan`` looks at one RowDescription (and what the statement references) and
returns None when no rule can apply, so the rows pass through as bytes, untouched.
The plan itself is hoopy/postgres/rowplan.py; what text a value may show,
hoopy/postgres/values.py.
"""
from __future__ import annotations

import attrs

from hoopy.postgres import codec
from hoopy.postgres.rowplan import RowPlan
from hoopy.postgres.values import FLOATS, NO_TEXT, binary_texts

# binary_texts: still importable from here (it lived here before values.py).
__all__ = ["MaskRules", "RowPlan", "binary_texts", "catalog_query"]


def catalog_query(columns) -> str:
    """One simple query: the masked columns, then every view that depends
    on their tables (recursively). Names are passed as literals."""
    lit = ",".join("'" + c.replace("'", "''") + "'" for c in columns) or "NULL"
    # Inheritance children and partitions hold the column too (under its name:
    # an inherited column cannot be renamed), with origins of their own.
    return (
        "WITH RECURSIVE t(oid, attname) AS ("
        " SELECT a.attrelid, a.attname FROM pg_catalog.pg_attribute a"
        " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE a.attnum > 0 AND NOT a.attisdropped"
        f" AND n.nspname || '.' || c.relname || '.' || a.attname = ANY(ARRAY[{lit}]::text[])"
        " UNION SELECT i.inhrelid, t.attname FROM pg_catalog.pg_inherits i JOIN t ON i.inhparent = t.oid) "
        "SELECT c.oid, a.attnum, n.nspname, c.relname, a.attname, a.atttypid FROM t "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attname = t.attname "
        "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE NOT a.attisdropped;"
        "WITH RECURSIVE b(oid) AS ("
        " SELECT a.attrelid FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE n.nspname || '.' || c.relname || '.' || a.attname = ANY(ARRAY[{lit}]::text[])"
        " UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN b ON i.inhparent = b.oid), "
        "m(oid) AS (SELECT oid FROM b"
        " UNION SELECT r.ev_class FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid"
        " JOIN m ON d.refobjid = m.oid WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass"
        " AND r.ev_class <> m.oid) "
        "SELECT m.oid, c.relkind, n.nspname, c.relname FROM m JOIN pg_catalog.pg_class c ON c.oid = m.oid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace")


_NONE = object()
PLAN_CACHE = 32  # plans kept a session
PLAN_CACHE_BYTES = 4096  # a longer RowDescription (a very wide result) is planned each time


@attrs.define
class MaskRules:
    detectors: tuple = ()
    columns: dict = attrs.field(factory=dict)  # (oid, attnum) -> "schema.table.column"
    tables: dict = attrs.field(factory=dict)  # oid -> "schema.table" with a masked column
    views: dict = attrs.field(factory=dict)  # oid -> "schema.view" (every column masked)
    relations: frozenset = frozenset()  # "schema.name" of masked tables and their views
    names: frozenset = frozenset()  # masked column names
    view_names: frozenset = frozenset()  # "schema.view" of views over masked tables
    configured: tuple = ()  # the column names as configured
    column_types: dict = attrs.field(factory=dict)  # "schema.table.column" -> type OID
    # (RowDescription bytes, taint, formats) -> the plan made for them (plan_for): rules do not
    # change once loaded (load runs before the first statement), so neither does a plan.
    _plans: dict = attrs.field(factory=dict, init=False, repr=False, eq=False)

    @property
    def active(self) -> bool:
        return bool(self.detectors or self.configured)

    def load(self, results):
        """``results``: the two row sets of catalog_query, as text values."""
        cols, rels = results
        for oid, attnum, nsp, rel, att, *typ in cols:
            self.columns[(int(oid), int(attnum))] = f"{nsp}.{rel}.{att}"
            self.tables[int(oid)] = f"{nsp}.{rel}"
            self.column_types[f"{nsp}.{rel}.{att}"] = int(typ[0]) if typ and typ[0] else 0
        names = {c.rsplit(".", 1)[-1].lower() for c in self.configured}
        relations = {c.rsplit(".", 1)[0] for c in self.configured}
        view_names = set()
        for oid, kind, nsp, rel in rels:
            relations.add(f"{nsp}.{rel}")
            if kind in ("v", "m"):
                self.views[int(oid)] = f"{nsp}.{rel}"
                view_names.add(f"{nsp}.{rel}")
        self.relations = frozenset(relations)
        self.view_names = frozenset(view_names)
        self.names = frozenset(names)

    def unresolved(self) -> list:
        """The configured columns the catalog did not return: a mistyped column or table masks
        nothing, so the session that read this catalog must refuse every statement."""
        return [c for c in self.configured if c not in self.column_types]

    def touches(self, c) -> bool:
        """The statement names a masked table or a view over one."""
        if c is not None and self.configured and (c.executes or c.fetch):
            return True  # what a prepared statement or a cursor reads is not in this SQL
        return bool(self.relations and c is not None and not self.relations.isdisjoint(c.relations))

    def tainted(self, c) -> bool:
        """Result columns without an origin may carry a masked value: the
        statement references a masked relation and a masked column name,
        a whole row, a star below the top, or reads a cursor; or it names a
        view over a masked table (whose columns may be renamed)."""
        if c is None:
            return bool(self.configured)
        if (c.fetch or c.executes) and self.configured:
            return True
        if not self.view_names.isdisjoint(c.relations):
            return True
        return self.touches(c) and (c.whole_row or not self.names.isdisjoint(c.column_names))

    def copy_columns(self, c):
        """For COPY ... TO STDOUT of a table with masked columns: None if none of
        its columns is masked; (index, label, type OID) of each masked one in
        COPY's text format; or a string saying why it cannot be masked."""
        if c is None or c.copy is None:
            return "a query's results have no column origins"
        rel, target = c.copy
        masked = [(lbl, t) for lbl, t in self.column_types.items() if lbl.rsplit(".", 1)[0] == rel]
        if not masked:
            return None
        if not target.columns:
            return "list its columns (COPY t (a, b) TO STDOUT, as pg_dump does) so hoopy can tell which to mask"
        for name, value in target.options:
            if name == "format" and str(value).lower() == "text":
                continue
            if name == "encoding" and isinstance(value, str) and value.replace("-", "").lower() in ("utf8",):
                continue
            return f"only the default text format can be masked (option {name})"
        types = dict(masked)
        out = [(i, f"{rel}.{col}", types[f"{rel}.{col}"]) for i, col in enumerate(target.columns)
               if f"{rel}.{col}" in types]
        return out or None

    def plan_for(self, description: bytes, classified, formats=None) -> "RowPlan | None":
        """``plan`` of a RowDescription payload as it came, with a Bind's result formats: the
        same plan as ``plan(parse_row_description(description), classified)`` then
        ``with_formats(formats)``, a fresh copy of the one made for the same bytes, taint
        and formats (a session asks the same statement's plan again and again: pgbench -S
        does on every statement)."""
        if not self.active:
            return None
        taint = self.tainted(classified) if self.configured else False
        key = (description, taint, formats or None)
        cache = self._plans
        made = cache.get(key, _NONE)
        if made is _NONE:
            made = self._plan(codec.parse_row_description(description), taint)
            if made is not None and formats:
                made.with_formats(formats)
            if len(description) <= PLAN_CACHE_BYTES:
                if len(cache) >= PLAN_CACHE:
                    cache.clear()  # a session with many shapes of result: start again
                cache[key] = made
        return None if made is None else made.fresh()

    def plan(self, fields, classified) -> "RowPlan | None":
        if not self.active:
            return None
        return self._plan(fields, self.tainted(classified) if self.configured else False)

    def _plan(self, fields, taint: bool) -> "RowPlan | None":
        actions: list[tuple[str, str | None, codec.Field] | None] = []
        any_action = False
        for f in fields:
            label = None
            if f.table_oid:
                label = self.columns.get((f.table_oid, f.attnum))
                if label is None and f.attnum <= 0 and f.table_oid in self.tables:
                    label = self.tables[f.table_oid] + " (whole row)"
                if label is None and f.table_oid in self.views:
                    label = self.views[f.table_oid] + "." + f.name
            elif taint:
                label = f"expression {f.name}"
            if label is not None:
                actions.append(("mask", label, f))
                any_action = True
            elif self.detectors and f.type_oid not in NO_TEXT and not (
                    f.type_oid in FLOATS and all(d.name == "email" for d in self.detectors)):
                actions.append(("scan", None, f))
                any_action = True
            else:
                actions.append(None)
        return RowPlan(actions, self.detectors) if any_action else None
