"""What a SQL string does: read / write / lock / ddl / admin, and what it touches.

Three steps, each its own module:
- ``sqltree``: PostgreSQL's own parser (pglast), bounded in size and depth;
- ``walk``: the statement's meaning with PostgreSQL's scoping of names
  (``WITH`` queries, DML targets, row-lock clauses), not yet tied to a session;
- ``resolve`` (here): names looked up in the session's search path (``scope``)
  and function calls judged by hoopy's reviewed catalogue (``functions``).

The first two are cached by the statement's shape (its text with constants
left out): a driver's or pgbench's statements are parsed once. Resolution is
cached per shape and scope.
"""
from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

import attrs

from hoopy.policy.rules import Unit
from hoopy.postgres import functions
from hoopy.postgres.rules import object_name, pg_table_unit
from hoopy.postgres.scope import CATALOG, DEFAULT, Scope
from hoopy.postgres import sqltext, sqltree
from hoopy.postgres.sqltree import CannotJudge, ClassifyError, Heavy, parse_sql_json
from hoopy.postgres.parsed import ANY_OBJECT, CopyTarget, Parsed
from hoopy.postgres.walk import walk

if TYPE_CHECKING:  # twisted is imported where it runs: the classifier itself is pure
    from twisted.internet.defer import DeferredSemaphore


@attrs.frozen
class Classified:
    units: tuple  # of Unit
    relations: frozenset  # "schema.name" of every relation named (any class)
    column_names: frozenset  # every column name referenced (lower-case)
    whole_row: bool  # a whole-row reference, a star below the top, or a cursor FETCH
    statements: tuple  # one top-level statement kind per statement ("SelectStmt", ...)
    copy_out: bool  # COPY ... TO STDOUT
    fetch: bool
    prepares: tuple = ()  # (name, Parsed) of PREPARE statements: resolved when EXECUTEd
    executes: tuple = ()  # names of EXECUTE statements
    deallocates: tuple = ()  # names of DEALLOCATE (None: all, DISCARD too)
    declares: tuple = ()  # names of cursors DECLAREd
    may_change_path: bool = False  # the gateway must read the search path again afterwards
    unresolved: bool = False  # an unqualified name could not be looked up: the path is not known
    copy: tuple | None = None  # ("schema.name", CopyTarget) of a COPY ... TO STDOUT of a relation
    copy_quoting: str | None = None  # why a COPY TO STDOUT's options could hide a value from patterns

    @property
    def classes(self) -> frozenset:
        return frozenset(u.kind for u in self.units)

    @property
    def sets_search_path(self) -> bool:
        return self.may_change_path


# --- the shape cache ---------------------------------------------------------------

_SHAPES: dict = {}
_TEXTS: dict = {}  # sqltext.key(text) -> the Parsed its shape gave (cacheable ones only)
_SHAPES_MAX = 4096
_SHAPE_MAX = 4096  # characters of a shape worth keeping (at most 16 MB of keys)
_lock = threading.Lock()


def parse_statement(sql: str, inline: bool = False) -> Parsed:
    """The statement's meaning before its names are looked up, cached by shape:
    the parse tree itself with constants' values left out (``aid = 1`` and
    ``aid = 2`` share one), so the key is exactly what the walk reads but for
    those values; a statement whose meaning depends on a value is never cached
    (Parsed.cacheable). Linear in the statement's size.

    In front of it, a text of the plain subset ``sqltext`` admits is looked up by its
    text with the literals' values left out, which skips the parser itself."""
    tkey = sqltext.key(sql) if len(sql) <= _SHAPE_MAX else None
    if tkey is not None:
        p = _TEXTS.get(tkey)
        if p is not None:
            return p
    p = _parse_shape(sql, inline)
    if tkey is not None and p.cacheable and _literals_are_constants(sql):
        with _lock:
            if len(_TEXTS) >= _SHAPES_MAX:
                _TEXTS.pop(next(iter(_TEXTS)), None)
            _TEXTS[tkey] = p
    return p


def _literals_are_constants(sql: str) -> bool:
    """Whether every literal the text key leaves out became a constant node where it stands.
    Only then may texts that differ in those values share a Parsed: the grammar turns a literal
    it reads for itself (a COPY option's string, the precision in ``float(25)``, a LANGUAGE
    name) into no constant, and the shape keeps such a value, but the text key would not.
    Once per new text key: it parses the text again, with positions."""
    offsets = sqltext.literal_offsets(sql)
    if not offsets:
        return True
    found = set()
    stack = [json.loads(parse_sql_json(sql))]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            const = node.get("A_Const")
            if isinstance(const, dict) and "location" in const:
                found.add(const["location"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return all(any(o in found for o in places) for places in offsets)


def _parse_shape(sql: str, inline: bool = False) -> Parsed:
    j = sqltree.folded(sql, inline)
    key = sqltree.shape(j) if len(j) <= 2 * _SHAPE_MAX else None
    if key is not None and len(key) <= _SHAPE_MAX:
        p = _SHAPES.get(key)
        if p is not None:
            return p
    else:
        key = None
    p = _walk(j, inline)
    if key is not None and p.cacheable:
        with _lock:
            if len(_SHAPES) >= _SHAPES_MAX:
                _SHAPES.pop(next(iter(_SHAPES)), None)  # oldest first; a dict keeps insertion order
            _SHAPES[key] = p
    return p


def _walk(j: str, inline: bool = False) -> Parsed:
    stmts = sqltree.load(j, inline)
    # Every call, column reference and relation name in the parser's output (a quote inside a
    # string is escaped, so these texts cannot come from a value) must be reached by the walk.
    expected = (j.count('{"FuncCall":'), j.count('{"ColumnRef":'), j.count('"relname":'))
    try:
        return walk(stmts, expected)
    except (RecursionError, MemoryError) as e:
        raise CannotJudge(f"the classifier ran out of room ({type(e).__name__})") from None


def _parse(sql: str) -> Parsed:
    return _walk(sqltree.folded(sql))


# --- resolution --------------------------------------------------------------------

RESOLVED_MAX = 1024  # Classifieds a Scope remembers (then it starts again)
RESOLVED_CHARS = 256 * 1024  # and at most this much statement text behind them (see resolve)


def resolve(p: Parsed, scope: Scope, size: int | None = None) -> Classified:
    """The units of a parsed statement in a session whose path is ``scope``.

    Remembered on the Scope, by the Parsed's identity: a Scope is never changed, only
    replaced (a new search path, or the path unknown, is a new Scope with an empty memo),
    and the Parsed is kept beside its answer so its id cannot be reused while remembered.
    (Kept on the Parsed, keyed by Scope, as before, eight connections sharing one cached
    Parsed evicted each other's answers from its four places on every statement.)

    ``size``: the length of the text ``p`` was parsed from (None: not known, not remembered).
    The memo keeps its Parsed alive, about 25 bytes of it a character of
    text: a Parsed no cache shares (not cacheable, or of a text longer than the caches keep)
    is never met again and is not remembered, and the texts behind a memo are bounded
    (RESOLVED_CHARS), else one connection's distinct long statements pinned gigabytes
    (tests/test_postgres_fastpath_attacks.py)."""
    memo = scope.resolved
    hit = memo.get(id(p))
    if hit is not None:
        return hit[1]
    c = _resolve(p, scope)
    if size is None or size > _SHAPE_MAX or not p.cacheable:
        return c
    # memo[0]: the characters of text behind it (no object's id is 0)
    chars = memo.get(0, 0) + size
    if len(memo) > RESOLVED_MAX or chars > RESOLVED_CHARS:
        memo.clear()
        chars = size
    memo[id(p)] = (p, c)
    memo[0] = chars
    return c


def _function_schemas(scope: Scope, name: str) -> list[str] | None:
    """Where an unqualified call may go. A name hoopy knows as no built-in and the
    session's schemas did not hold when last read may be created in any of them
    before it runs: every schema of the path then."""
    schemas = scope.function_schemas(name)
    if schemas is None or functions.is_builtin(name):
        return schemas
    if schemas == [CATALOG]:
        return [CATALOG] + [s for s in scope.explicit if s != CATALOG and s != scope.temp
                            and not s.startswith("pg_temp")]
    # Found in the session's schemas and no built-in hoopy knows: pg_catalog has
    # none of that name (a built-in of a later release is a documented limit).
    return [s for s in schemas if s != CATALOG]


def _write_units(functions_) -> list:
    return [Unit("write", object_name(s, f) + "()") for s, f in sorted(functions_)]


def _named_in(table: dict, schemas, schema, name) -> list:
    """Keys (schema, name) of ``table`` that a name may reach: the schema given, else the
    path's schemas, else (path not known, or changed by an earlier statement) any schema."""
    if schema is not None:
        return [(schema, name)] if (schema, name) in table else []
    if schemas is None:
        return [k for k in table if k[1] == name]
    return [(s, name) for s in schemas if (s, name) in table]


def _operator_units(scope: Scope, schema, name, late):
    """What an operator may run: the VOLATILE functions of user-defined operators of that
    name it may reach (an IMMUTABLE or STABLE one, as every built-in, is part of a read). An
    operator hoopy knows nowhere (created after the path was read) is a write on it in each
    schema it may be in; None if that cannot be told."""
    schemas = scope.code_schemas(late)
    units = []
    for key in _named_in(scope.operators, schemas, schema, name):
        units.extend(_write_units(scope.operators[key]))
    if name in functions.BUILTIN_OPERATORS or _named_in(dict.fromkeys(scope.user_operators), schemas, schema, name):
        return units
    if schema is not None:
        return units + [Unit("write", object_name(schema, name) + "()")]
    if schemas is None:
        return None
    return units + [Unit("write", object_name(s, name) + "()") for s in scope.explicit
                    if s != CATALOG and not s.startswith("pg_temp")]


def _resolve(p: Parsed, scope: Scope) -> Classified:
    units = dict.fromkeys(p.fixed)
    relations = set()
    unresolved = False
    for cls, what, schema, name, late in p.refs:
        if late and schema is None:
            unresolved = True  # looked up after an earlier statement of the string may change the path
            continue
        if what in ("rel", "new"):
            s = scope.relation(schema, name, create=what == "new")
            if s is None:
                unresolved = True
                continue
            units[Unit(cls, object_name(s, name))] = None
            relations.add(f"{s}.{name}")
            continue
        schemas: list[str] | None  # None: where the name goes cannot be known
        if schema is not None:
            schemas = [scope.schema_name(schema)]
        elif what == "newfn":
            new = scope.relation(None, name, create=True)
            schemas = [new] if new is not None else None
        else:
            schemas = _function_schemas(scope, name)
        if schemas is None:
            unresolved = True
            continue
        for s in schemas:
            units[Unit(cls, object_name(s, name) + "()")] = None
    for schema, name, late in p.calls:
        if late and schema is None:
            unresolved = True
            continue
        schemas = [scope.schema_name(schema)] if schema is not None else _function_schemas(scope, name)
        if schemas is None:
            unresolved = True
            continue
        for s in schemas:
            u = functions.call_unit(s, name)
            if u is not None:
                units[u] = None
    for schema, name, late in p.operators:
        if schema == CATALOG:
            continue
        found = _operator_units(scope, schema, name, late)
        if found is None:
            unresolved = True
        else:
            units.update(dict.fromkeys(found))
    for schema, name, late in p.casts:
        if schema == CATALOG:
            continue
        for key in _named_in(scope.types, scope.code_schemas(late), schema, name):
            units.update(dict.fromkeys(_write_units(scope.types[key])))
    if p.dotted:
        # "t.name" may be name(t) (functional notation): a function of that name
        # outside pg_catalog may be called.
        for name, late in p.dotted:
            schemas = scope.function_schemas(name)
            if schemas is None or late:
                unresolved = True
                break
            for s in schemas:
                if s != CATALOG:
                    units[functions.call_unit(s, name)] = None
                    if len(p.statements) > 1:
                        # A function that may change the path, called before the names of
                        # later statements are looked up (we do not keep which statement).
                        unresolved = True
    if not units and p.statements:
        units[Unit("read")] = None  # SELECT 1, SELECT now(): reads nothing, still a read
    # A function hoopy cannot vouch for may run SET search_path (or create what a name finds).
    may_change = p.may_change_path or any(
        u.kind in ("write", "admin") and u.subject and (u.subject.endswith("()") or u.subject == ANY_OBJECT)
        for u in units)
    copy = None
    if p.copy is not None:
        s = scope.relation(p.copy.schema, p.copy.name)
        copy = (f"{s}.{p.copy.name}", p.copy) if s is not None else None
    return Classified(
        units=tuple(units), relations=frozenset(relations), column_names=p.column_names, whole_row=p.whole_row,
        statements=p.statements, copy_out=p.copy_out, fetch=p.fetch, prepares=p.prepares, executes=p.executes,
        deallocates=p.deallocates, declares=p.declares, may_change_path=may_change,
        unresolved=unresolved, copy=copy, copy_quoting=p.copy_quoting)


# --- the entry points ------------------------------------------------------------------

def classify(sql: str, scope: Scope = DEFAULT, inline: bool = False) -> Classified:
    """Classified; raises ClassifyError (CannotJudge past a bound), and with
    ``inline`` Heavy when the statement is worth a thread."""
    return resolve(parse_statement(sql, inline), scope, len(sql))


def known(sql: str, scope: Scope) -> Classified | None:
    """What ``classify(sql, scope)`` answers, if the text cache holds the text's Parsed and
    ``scope`` has already resolved it; else None (classify then). One call in place of
    classify_or_error, classify, parse_statement and resolve for the steady state's statement:
    the same lookups, in the same tables, so the same answer."""
    if len(sql) > _SHAPE_MAX:
        return None
    tkey = sqltext.key(sql)
    if tkey is None:
        return None
    p = _TEXTS.get(tkey)
    if p is None:
        return None
    hit = scope.resolved.get(id(p))
    return hit[1] if hit is not None else None


def classify_or_error(sql: str, scope: Scope = DEFAULT, inline: bool = False):
    """Classified, or the ClassifyError that says why the statement cannot be judged.
    Never raises (but Heavy, with ``inline``): an internal failure is a CannotJudge
    too (refused, recorded)."""
    try:
        return classify(sql, scope, inline)
    except ClassifyError as e:
        return e.with_traceback(None)  # its frames hold the parse: let them go
    except Heavy:
        raise
    except (RecursionError, MemoryError) as e:
        return CannotJudge(f"the classifier ran out of room ({type(e).__name__})")
    except Exception as e:  # a bug must refuse the statement, not drop the connection
        from twisted.logger import Logger

        Logger().failure("classifying a statement", None)
        return CannotJudge(f"internal error in the classifier ({type(e).__name__})")


def _classify(sql: str, scope: Scope = DEFAULT) -> Classified:
    """Uncached: what a fresh parse gives (tests compare the cache with it)."""
    return _resolve(_parse(sql), scope)


# --- large statements: off the reactor, a few at a time ---------------------------

INLINE_SQL = 16 * 1024  # longer statements go to a thread at once (client_side.judge)


class ParseGate:
    """Large statements are classified on threads, at most ``limit`` at once
    gateway-wide (the rest wait their turn): the memory a parse may take is
    bounded per statement (``sqltree``), so the total is bounded too."""

    def __init__(self, limit: int = 2):
        self.limit = limit
        self._sem: DeferredSemaphore | None = None  # made on first use, on the reactor's thread

    def classify(self, reactor, sql: str, scope: Scope):
        """A Deferred firing with classify_or_error's result (never failing)."""
        from twisted.internet import defer, threads

        if self._sem is None:
            self._sem = defer.DeferredSemaphore(self.limit)

        def run():
            return threads.deferToThreadPool(reactor, reactor.getThreadPool(), _classify_and_trim, sql, scope)

        d = self._sem.run(run)
        d.addErrback(lambda f: CannotJudge(f"internal error in the classifier ({f.type.__name__})"))
        return d

    @property
    def waiting(self) -> int:
        return len(self._sem.waiting) if self._sem is not None else 0


PARSES = ParseGate(limit=1)  # one large parse at a time: its memory is the bound
_TRIM_AFTER = 256 * 1024


def _classify_and_trim(sql: str, scope: Scope):
    c = classify_or_error(sql, scope)
    if len(sql) >= _TRIM_AFTER:
        _malloc_trim()  # give the parser's memory back to the system, not only to malloc
    return c


def _malloc_trim():
    global _trim
    if _trim is None:
        try:
            import ctypes

            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim = None


__all__ = ["classify", "classify_or_error", "resolve", "parse_statement", "Classified", "ClassifyError",
           "CannotJudge", "CopyTarget", "Scope", "ANY_OBJECT", "pg_table_unit", "PARSES", "INLINE_SQL", "Heavy"]
