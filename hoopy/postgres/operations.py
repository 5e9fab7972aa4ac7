"""What a statement is judged as: its ``Operation`` (the units of what EXECUTE of a
prepared name runs included, and what a retry-mode approval is bound to), the
prepared-statement names the server holds, and the refusals that need no rule
(what the gateway cannot judge or mask safely). A mixin of ``ClientSide``
(hoopy/postgres/client_side.py).
"""
from __future__ import annotations

from typing import Any

import attrs

from hoopy.policy.rules import Operation, Unit
from hoopy.postgres import guards
from hoopy.postgres.classify import ANY_OBJECT, ClassifyError, classify_or_error, resolve
from hoopy.postgres.rows import MaskRules
from hoopy.postgres.rules import object_name
from hoopy.postgres.scope import Scope

MAX_SQL_RECORDED = 100_000
# Catalog views holding sample values of columns (histograms, most common values).
STATISTICS = frozenset(f"pg_catalog.{n}" for n in (
    "pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data"))


class StatementOperations:
    # What it shares with the ClientSide it is mixed into (set in ClientSide.__init__).
    rules: MaskRules
    scope: Scope
    statements: dict
    prepared: dict
    prepared_sql: dict
    unsafe_settings: dict

    def _operation(self, sql: str, c, params=None, raw_params=None, types=()) -> Operation:
        detail: dict[str, Any] = {"sql": sql if len(sql) <= MAX_SQL_RECORDED else sql[:MAX_SQL_RECORDED] + "..."}
        if params is not None:
            detail["params"] = params
        units = c.units  # (distinct already)
        if c.executes or types:
            more = list(units)
            for name in c.executes:
                more.extend(self._prepared_units(name))
            for oid in types:
                # A parameter of a domain (or a type) whose conversion runs a VOLATILE function:
                # the server converts the Bind's values to it (a CHECK constraint, a cast).
                for fn in sorted(self.scope.type_oids.get(oid, ())):
                    more.append(Unit("write", object_name(*fn) + "()"))
            units = tuple(dict.fromkeys(more))
        # What a retry-mode approval is bound to: the whole SQL text, the parameters' exact bytes
        # (the recorded text and values may be shortened), and what the text means here: the
        # same text under another search path names other tables.
        # An EXECUTE is bound to the text of what each name it runs holds: approved while p deleted
        # one row, it must not run after p was prepared again to delete them all.
        bodies = [[name, list(self.prepared_sql.get(name, ())),
                   self.statements[name][0] if name in self.statements else None]
                  for name in c.executes] if c.executes else None
        values = list(params) if raw_params is None and params is not None else None  # (as they are now)

        def canonical() -> str:  # made only if an approval asks for it
            return Operation.canonical_of(sql, [None if v is None else bytes(v).hex() for v in raw_params]
                                          if raw_params is not None else values, sorted(str(u) for u in units),
                                          *([bodies] if bodies else []))

        if bodies:  # what the reviewer approves: the statements behind the names, not only "EXECUTE p"
            detail["prepared"] = [t[:MAX_SQL_RECORDED] for _, texts, proto in bodies
                                  for t in (*texts, *([proto] if proto is not None else [])) if t]
        return Operation("postgres", "statement", detail["sql"][:2000], units, detail, canonical=canonical)

    def forget_statements(self, names) -> None:
        """A DEALLOCATE, DISCARD ALL or Close has completed: the server dropped these names."""
        for name in names:
            if name is None:
                self.prepared.clear()
                self.prepared_sql.clear()
                self.statements.clear()
            else:
                self.prepared.pop(name, None)
                self.prepared_sql.pop(name, None)
                self.statements.pop(name, None)

    def _prepared_bodies(self, name: str) -> list:
        """What EXECUTE of a name may run: what an SQL PREPARE of it held and a protocol
        statement of that name (one namespace), its names looked up in today's search
        path (the server analyses a prepared statement again when the path has changed)."""
        # Each body with its PREPARE's length: resolve's memo keeps what it resolves alive, and
        # counts it against its bound by that (a text not known: not remembered).
        sqls = self.prepared_sql.get(name, ())
        found = [resolve(body, self.scope, len(sqls[i]) if i < len(sqls) and sqls[i] else None)
                 for i, body in enumerate(self.prepared.get(name, ()))]
        if name in self.statements:
            found.append(classify_or_error(self.statements[name][0], self.scope))
        return found

    def _prepared_units(self, name: str) -> list:
        units = []
        for c in self._prepared_bodies(name):
            if isinstance(c, ClassifyError) or c.executes or c.unresolved:
                units.append(Unit("admin", ANY_OBJECT))
            else:
                units.extend(c.units)
        return units or [Unit("admin", ANY_OBJECT)]

    def with_prepared(self, c):
        """For masking, EXECUTE of a prepared statement reads what its statement reads;
        a name the gateway cannot see into stays unknown (every expression masked)."""
        if not c.executes:
            return c
        found = []
        for name in c.executes:
            known = self._prepared_bodies(name)
            if not known or any(isinstance(k, ClassifyError) or k.executes or k.unresolved for k in known):
                return c
            found.extend(known)
        return attrs.evolve(
            c, relations=c.relations.union(*(k.relations for k in found)),
            column_names=c.column_names.union(*(k.column_names for k in found)),
            whole_row=c.whole_row or any(k.whole_row for k in found),
            fetch=c.fetch or any(k.fetch for k in found), executes=())

    def parse_refusal(self, c, sql: str) -> str | None:
        """What refuses a Parse whatever the grant: a statement whose names cannot be looked up."""
        if self.unsafe_settings:
            return self.local_refusal(c, sql)
        if c.unresolved:
            return self.local_refusal(c, sql)
        return None

    def local_refusal(self, c, sql: str, raw_params=()) -> str | None:
        """Refusals that need no rule: what the gateway cannot judge or mask safely."""
        if self.unsafe_settings and not guards.restores(sql, self.unsafe_settings):
            return ("refused: standard_conforming_strings is off or client_encoding is not UTF8 in this "
                    "session, so hoopy cannot read its SQL as the server does (only setting it back is allowed)")
        why = guards.encoding_problem(sql) or guards.stores_marker(sql, raw_params)
        if why:
            return why
        if c.unresolved:
            return ("refused: the search path may have changed (earlier in this pipeline or query string) and "
                    "hoopy has not read it again yet, so an unqualified name cannot be judged; qualify the "
                    "names, or send the statement after the change has completed")
        rules = self.rules
        if rules.detectors and c.copy_out and c.copy_quoting:
            return f"refused: {c.copy_quoting}"
        if rules.configured and not STATISTICS.isdisjoint(c.relations):
            return "refused: column statistics (pg_stats) hold sample values of masked columns"
        if rules.configured and rules.touches(c):
            if c.copy_out:
                how = rules.copy_columns(c)  # text format, columns listed (what pg_dump sends): masked line by line
                if isinstance(how, str):
                    return f"refused: COPY TO STDOUT of a table with masked columns cannot be masked here: {how}"
            # A write whose rows never come back to be masked: any result that would be masked
            # (a masked column by name, a whole row, a view over a masked table, whose columns
            # may be renamed) would be copied in clear.
            if c.classes - {"read", "lock"} and rules.tainted(c):
                return "refused: this statement would copy a masked column"
        return None
