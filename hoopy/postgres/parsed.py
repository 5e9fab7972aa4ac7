"""What the walk finds in a statement (hoopy.postgres.walk): ``Parsed``, before its names are
looked up in the session's search path (hoopy.postgres.classify.resolve does that)."""
from __future__ import annotations

import attrs

# The subject of a ddl or admin unit that is not about one named table or function
# (DO, SET ROLE, COPY ... PROGRAM, DROP SCHEMA, ALTER ROLE, ...). No table pattern
# matches it (patterns have a dot), so only a rule without tables covers it: a
# rule for one table must not grant a DO block or a DROP of another table.
ANY_OBJECT = "(any object)"


@attrs.frozen
class CopyTarget:
    """COPY ... TO STDOUT of a relation: what column masking needs."""

    schema: str | None
    name: str
    columns: tuple  # as listed; () = every column
    options: tuple  # (name, value) of the WITH (...) options, lower-case names


@attrs.frozen
class Parsed:
    """A statement's meaning before names are looked up in the session's path."""

    statements: tuple  # one top-level statement kind per statement ("SelectStmt", ...)
    fixed: tuple  # Units needing no lookup
    refs: tuple  # (class, what, schema or None, name, late): what = rel | new | fn | newfn
    calls: tuple  # (schema or None, name, late) of every function called
    operators: tuple  # (schema or None, operator, late) of every operator named (explicitly or by IN, LIKE, ...)
    casts: tuple  # (schema or None, type, late) of every type a value is cast or coerced to
    # late: in a statement after one that may change the search path, in the same
    # string (the server looks its names up only when it gets to it).
    dotted: frozenset  # (last name, late) of "a.b" column references: b may be a function of a
    column_names: frozenset  # every column name referenced (lower-case)
    whole_row: bool  # a whole-row reference, a star below the top, or a cursor FETCH
    copy_out: bool  # COPY ... TO STDOUT
    copy: CopyTarget | None
    fetch: bool
    prepares: tuple  # (name, Parsed) of PREPARE statements
    executes: tuple  # names of EXECUTE statements
    deallocates: tuple  # names of DEALLOCATE (None: all, DISCARD ALL too)
    declares: tuple  # names of cursors DECLAREd
    may_change_path: bool  # the search path (or who "$user" is) may differ afterwards
    cacheable: bool  # judged from the shape alone: no constant's value was read
    # Why a COPY ... TO STDOUT's options could hide a value from the patterns (see _copy), or None.
    copy_quoting: str | None = None
