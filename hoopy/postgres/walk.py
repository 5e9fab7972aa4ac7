"""The walk: what a parsed statement does, scoped as PostgreSQL scopes names.

Input: the trees of ``hoopy.postgres.sqltree``. Output: ``Parsed``, which does
not depend on the session's search path (it is cached by the statement's shape);
``hoopy.postgres.classify.resolve`` turns its references into units with the
session's ``Scope``.

Scoping, as the server's parse analysis does it:
- A ``WITH`` query's name is visible in the queries after it in the same list
  and in the statement it belongs to, with every subquery below; not in its
  own body nor in the ones before it, unless the list is ``WITH RECURSIVE``
  (then every name is visible in every body).
- Only an unqualified name of a FROM item (a SELECT's FROM, UPDATE's FROM,
  DELETE's USING, MERGE's USING, TABLESAMPLE) can name a ``WITH`` query. The
  target of INSERT / UPDATE / DELETE / MERGE, COPY, LOCK, TRUNCATE and every
  name in DDL is a relation.
- ``FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE`` without ``OF`` locks every
  relation of the FROM list and everything in the FROM lists of its FROM
  subqueries, recursively (not ``WITH`` queries, functions or subqueries
  elsewhere); ``OF name`` locks the FROM item of that name (a subquery: all of
  it).

The walk keeps its own stack: a deep tree cannot exhaust Python's.
"""
from __future__ import annotations

from collections import namedtuple

import attrs

from hoopy.policy.rules import Unit
from hoopy.postgres import gucs
from hoopy.postgres.functions import PURE, ROW_FUNCTIONS
from hoopy.postgres.sqltree import CONST, NODE_TYPES, STRUCT_FIELDS, const_text

# The subject of a ddl or admin unit that is not about one named table or function
# (DO, SET ROLE, COPY ... PROGRAM, DROP SCHEMA, ALTER ROLE, ...). No table pattern
# matches it (patterns have a dot), so only a rule without tables covers it: a
# rule for one table must not grant a DO block or a DROP of another table.
ANY_OBJECT = "(any object)"

# ctes: names of WITH queries visible; lock: the FROM list of this query level
# is locked (FOR UPDATE of a query above, propagated); top: the statement's own
# SELECT (a star in its target list yields columns with an origin).
Ctx = namedtuple("Ctx", "ctes lock top")
ROOT = Ctx(frozenset(), False, False)
TOP = Ctx(frozenset(), False, True)


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
    resolved: dict = attrs.field(factory=dict, eq=False, repr=False, hash=False)  # Scope -> Classified


# Statement classes of everything the walk does not handle itself.
STATEMENT_CLASS = {k: "ddl" for k in (
    "CreateStmt", "AlterTableStmt", "DropStmt", "IndexStmt", "ViewStmt", "CreateTableAsStmt",
    "RenameStmt", "CommentStmt", "CreateSeqStmt", "AlterSeqStmt", "CreateFunctionStmt",
    "AlterFunctionStmt", "CreateTrigStmt", "RuleStmt", "CreateSchemaStmt", "CompositeTypeStmt",
    "CreateEnumStmt", "AlterEnumStmt", "CreateDomainStmt", "AlterDomainStmt", "DefineStmt",
    "CreateCastStmt", "AlterObjectSchemaStmt", "AlterOwnerStmt", "CreateStatsStmt",
    "RefreshMatViewStmt", "CreatePolicyStmt", "AlterPolicyStmt", "CreateRangeStmt",
    "AlterDefaultPrivilegesStmt", "SecLabelStmt", "AlterStatsStmt", "CreateForeignTableStmt")}

# Statements whose object is the relation they name: the units of those
# relations say what they touch.
ON_RELATIONS = {"CreateStmt", "AlterTableStmt", "IndexStmt", "ViewStmt", "CreateTableAsStmt", "CreateSeqStmt",
                "AlterSeqStmt", "CreateTrigStmt", "RuleStmt", "RefreshMatViewStmt", "CreatePolicyStmt",
                "AlterPolicyStmt", "CreateStatsStmt", "RenameStmt", "AlterObjectSchemaStmt", "GrantStmt",
                "VacuumStmt", "ClusterStmt", "ReindexStmt", "CreateForeignTableStmt"}

# Fields that name a relation to be created (looked up as CREATE would: the
# first schema of the path, or pg_temp for a temporary one).
CREATES = {("CreateStmt", "relation"), ("ViewStmt", "view"), ("IntoClause", "rel"),
           ("CreateSeqStmt", "sequence"), ("CompositeTypeStmt", "typevar")}

_RELATION_OBJECTS = {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_INDEX", "OBJECT_SEQUENCE",
                     "OBJECT_FOREIGN_TABLE"}
_ROUTINE_OBJECTS = {"OBJECT_FUNCTION", "OBJECT_PROCEDURE", "OBJECT_ROUTINE", "OBJECT_AGGREGATE"}

# Statements the walk judges itself; every other kind is ddl or admin.
HANDLED = {"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "ExplainStmt", "CopyStmt",
           "PrepareStmt", "ExecuteStmt", "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt",
           "VariableSetStmt", "VariableShowStmt", "TransactionStmt", "DeallocateStmt", "DiscardStmt",
           "ListenStmt", "UnlistenStmt", "NotifyStmt", "LockStmt", "TruncateStmt", "CallStmt", "DoStmt",
           "ConstraintsSetStmt"}

_LOCK_ACCESS_SHARE = 1  # LOCK TABLE ... IN ACCESS SHARE MODE: what a read takes


def _unwrap(v):
    """A Node as written by libpg_query: {"Type": {fields}} -> (Type, fields)."""
    if isinstance(v, dict) and len(v) == 1:
        for k, f in v.items():
            if k in NODE_TYPES and isinstance(f, dict):
                return k, f
    return None, v


def _strings(items) -> list:
    out = []
    for x in items or ():
        t, f = _unwrap(x)
        if t == "String":
            out.append(f.get("sval", ""))
        elif t == "A_Star":
            out.append("*")
    return out


def _qualified(names):
    """(schema or None, name) of a possibly qualified name list (catalog.schema.name)."""
    if not names or len(names) > 3:
        return None
    return (names[-2] if len(names) >= 2 else None), names[-1]


class Walk:
    def __init__(self):
        self.fixed: dict = {}
        self.refs: dict = {}
        self.calls: dict = {}
        self.operators: dict = {}
        self.casts: dict = {}
        self.columns: set = set()
        self.aliases: set = set()
        self.pending_lone: list = []
        self.whole_row = False
        self.dotted: set = set()
        self.copy_out = False
        self.copy = None
        self.copy_quoting = None
        self.fetch = False
        self.prepares: list = []
        self.executes: list = []
        self.deallocates: list = []
        self.declares: list = []
        self.may_change_path = False
        self.cacheable = True
        self.late = False  # a statement before this one in the string may change the path
        self.impure = False  # a function hoopy cannot vouch for was called
        self.stack: list = []
        # FuncCall, ColumnRef and RangeVar nodes judged: every one in the tree must be
        # (walk() checks against the parser's output), or the statement is refused.
        self.seen = [0, 0, 0]

    # --- results ---------------------------------------------------------------
    def add(self, cls, subject=None):
        if subject is None and cls in ("admin", "ddl"):
            subject = ANY_OBJECT
        self.fixed.setdefault(Unit(cls, subject), None)

    def ref(self, cls, schema, name, what="rel"):
        self.refs.setdefault((cls, what, schema, name, self.late), None)

    def finish(self, kinds) -> Parsed:
        whole = self.whole_row or any(n in self.aliases for n in self.pending_lone)
        return Parsed(
            statements=tuple(kinds), fixed=tuple(self.fixed), refs=tuple(self.refs), calls=tuple(self.calls),
            operators=tuple(self.operators), casts=tuple(self.casts),
            dotted=frozenset(self.dotted), column_names=frozenset(self.columns), whole_row=whole,
            copy_out=self.copy_out, copy=self.copy, fetch=self.fetch, prepares=tuple(self.prepares),
            executes=tuple(self.executes), deallocates=tuple(self.deallocates), declares=tuple(self.declares),
            may_change_path=self.may_change_path, cacheable=self.cacheable, copy_quoting=self.copy_quoting)

    def merge(self, o: "Walk", cls=None):
        """Take what another walk found; ``cls``: its reads count as this class (DDL)."""
        for u in o.fixed:
            self.fixed.setdefault(Unit(cls, u.subject) if cls and u.kind == "read" else u, None)
        for c, what, schema, name, late in o.refs:
            self.refs.setdefault((cls if cls and c == "read" else c, what, schema, name, late or self.late), None)
        for schema, name, late in o.calls:
            self.calls.setdefault((schema, name, late or self.late), None)
        for schema, name, late in o.operators:
            self.operators.setdefault((schema, name, late or self.late), None)
        for schema, name, late in o.casts:
            self.casts.setdefault((schema, name, late or self.late), None)
        for name, late in o.dotted:
            self.dotted.add((name, late or self.late))
        self.columns |= o.columns
        self.aliases |= o.aliases
        self.pending_lone.extend(o.pending_lone)
        self.whole_row |= o.whole_row
        self.copy_out |= o.copy_out
        self.copy_quoting = self.copy_quoting or o.copy_quoting
        self.fetch |= o.fetch
        self.executes.extend(o.executes)
        self.prepares.extend(o.prepares)
        self.deallocates.extend(o.deallocates)
        self.declares.extend(o.declares)
        self.may_change_path |= o.may_change_path
        self.cacheable &= o.cacheable
        self.seen = [a + b for a, b in zip(self.seen, o.seen)]

    # --- the loop --------------------------------------------------------------
    def run_stack(self):
        stack = self.stack
        while stack:
            typ, fields, ctx = stack.pop()
            handler = _HANDLERS.get(typ)
            if handler is not None:
                handler(self, fields, ctx)
            else:
                self.fields(typ, fields, ctx)

    def push(self, v, ctx):
        """Walk a Node, a list of them, or a scalar (a folded constant: nothing)."""
        if isinstance(v, list):
            for x in v:
                if isinstance(x, (dict, list)):
                    self.push(x, ctx)
            return
        if not isinstance(v, dict) or not v:
            return
        typ, fields = _unwrap(v)
        if typ is None:
            # A struct we were not told the type of: a RangeVar must still count.
            typ = "RangeVar" if "relname" in v else "?"
        self.stack.append((typ, fields, ctx))

    def field(self, typ, name, v, ctx):
        if isinstance(v, dict) and v:
            if _unwrap(v)[0] is not None:
                # A node written with its type ({"FuncCall": {...}}): fields declared as an
                # abstract Expr (CASE ... THEN, ELSE, IS NULL, IS TRUE, ...) are, and must be
                # walked as what they hold, never as a struct of their declared type.
                self.stack.append(_unwrap(v) + (ctx,))
                return
            st = STRUCT_FIELDS.get((typ, name))
            if st is not None:
                if st == "RangeVar" and (typ, name) in CREATES:
                    return self.new_relation(v)
                self.stack.append((st, v, ctx))
                return
        if isinstance(v, (dict, list)):
            self.push(v, ctx)

    def fields(self, typ, f, ctx, skip=()):
        for name, v in f.items():
            if name not in skip and isinstance(v, (dict, list)):
                self.field(typ, name, v, ctx)

    # --- names -----------------------------------------------------------------
    def alias(self, a):
        if not isinstance(a, dict):
            return
        self.aliases.add(a.get("aliasname"))
        if a.get("colnames"):
            # "customers AS c(i, n, x)": x is a masked column under a name we
            # cannot tell from the SQL; count it as a whole-row reference.
            self.whole_row = True

    def relation(self, rv, cls="read", ctes=frozenset(), lock=False):
        """A RangeVar that names a relation (or, with ``ctes``, maybe a WITH query)."""
        self.seen[2] += 1
        name = rv.get("relname") or ""
        schema = rv.get("schemaname")
        self.alias(rv.get("alias"))
        self.aliases.add(name)
        if schema is None and rv.get("catalogname") is None and name in ctes:
            return  # a WITH query: its body is judged where it is written
        self.ref(cls, schema, name)
        if lock:
            self.ref("lock", schema, name)

    def new_relation(self, rv):
        self.seen[2] += 1
        schema = rv.get("schemaname")
        if schema is None and rv.get("relpersistence") == "t":
            schema = "pg_temp"
        self.ref("ddl", schema, rv.get("relname") or "", "new")
        self.may_change_path = True  # a new relation may hide another of its name

    def from_item(self, item, ctx, lock_all, lock_names):
        typ, f = _unwrap(item)
        if typ == "RangeVar":
            a = f.get("alias")
            eref = a.get("aliasname") if isinstance(a, dict) else f.get("relname")
            self.relation(f, "read", ctx.ctes, lock_all or eref in lock_names)
        elif typ == "JoinExpr":
            if f.get("usingClause"):
                self.operator(["="])  # JOIN ... USING compares with "=" as written
            a = f.get("alias")
            locked = lock_all or (isinstance(a, dict) and a.get("aliasname") in lock_names)
            self.alias(a)
            for side in ("larg", "rarg"):
                if f.get(side):
                    self.from_item(f[side], ctx, locked, lock_names)
            self.fields(typ, f, ctx._replace(lock=False, top=False), skip=("larg", "rarg", "alias"))
        elif typ == "RangeSubselect":
            a = f.get("alias")
            name = a.get("aliasname") if isinstance(a, dict) else None
            self.alias(a)
            locked = lock_all or (name is not None and name in lock_names)
            self.push(f.get("subquery"), Ctx(ctx.ctes, locked, False))
        elif typ == "RangeTableSample":
            rel = f.get("relation")
            if rel:
                self.from_item(rel, ctx, lock_all, lock_names)
            self.fields(typ, f, ctx._replace(lock=False, top=False), skip=("relation", "method"))
        elif typ is not None:
            # RangeFunction, RangeTableFunc, JsonTable: expressions (functions are judged as calls).
            self.stack.append((typ, f, ctx._replace(lock=False, top=False)))

    def with_clause(self, w, ctes):
        """Walk the WITH queries in their scopes; the names visible after the list."""
        items = [_unwrap(c)[1] for c in w.get("ctes") or ()]
        names = [c.get("ctename") for c in items]
        rec = bool(w.get("recursive"))
        every = ctes | frozenset(names)
        for i, c in enumerate(items):
            visible = every if rec else ctes | frozenset(names[:i])
            self.push(c.get("ctequery"), Ctx(visible, False, False))
            if c.get("aliascolnames"):
                self.whole_row = True  # renames columns, as a table alias list does
        self.aliases.update(names)
        return every

    # --- settings --------------------------------------------------------------
    def setting(self, name, value=None, reset=False):
        name = name.lower()
        if name in gucs.PATH_SETTINGS:
            self.may_change_path = True
        if name == "client_encoding" and not reset:
            self.cacheable = False  # judged by the value
        if name in ("role", "session_authorization") and not reset:
            # SET ROLE NONE returns the session to its login role.
            self.cacheable = False
            cls = "read" if isinstance(value, str) and value.lower() == "none" and name == "role" else "admin"
            return self.add(cls)
        self.add(gucs.set_class(name, value, reset))

    def operator(self, names):
        q = _qualified(names)
        if q is not None and q[1]:
            self.operators.setdefault(q + (self.late,), None)

    def cast(self, type_name):
        """A value converted to this type (TypeName): its casts and domain checks may run code."""
        if isinstance(type_name, dict):
            q = _qualified(_strings(type_name.get("names")))
            if q is not None:
                self.casts.setdefault(q + (self.late,), None)

    def column_ref(self, f, star_ok=False):
        self.seen[1] += 1
        names = _strings(f.get("fields"))
        if "*" in names:
            if not star_ok:
                self.whole_row = True
            names = [n for n in names if n != "*"]
        elif len(names) == 1:
            # A lone name may be a whole row ("SELECT c FROM customers c").
            self.pending_lone.append(names[0].lower())
        elif names:
            last = names[-1].lower()
            self.dotted.add((last, self.late))
            if last in ROW_FUNCTIONS:
                self.whole_row = True
        self.columns.update(n.lower() for n in names)


# --- handlers: one per node type the walk treats specially ---------------------------

def _settings_row_name(f):
    """pg_dump's ``SELECT set_config(name, 'v', false) FROM pg_settings WHERE name = 'x'``
    sets x: the setting's name, or None if the SELECT is not of that form."""
    items = f.get("fromClause") or ()
    if len(items) != 1:
        return None
    typ, rv = _unwrap(items[0])
    if typ != "RangeVar" or rv.get("relname") != "pg_settings" or rv.get("schemaname") not in (None, "pg_catalog"):
        return None
    typ, w = _unwrap(f.get("whereClause"))
    if typ != "A_Expr" or w.get("kind") != "AEXPR_OP" or _strings(w.get("name")) != ["="]:
        return None
    t, left = _unwrap(w.get("lexpr"))
    value = const_text(w.get("rexpr"))
    if t != "ColumnRef" or _strings(left.get("fields"))[-1:] != ["name"] or value is None:
        return None
    return value


def _select(w: Walk, f, ctx):
    name = _settings_row_name(f)
    if name is not None:
        # The only row's name is that constant: judge set_config(name, ...) as SET of it.
        for t in f.get("targetList") or ():
            typ, call = _unwrap(_unwrap(t)[1].get("val"))
            args = call.get("args") if typ == "FuncCall" else None
            if args and _strings(call.get("funcname"))[-1:] == ["set_config"] \
                    and _unwrap(args[0])[0] == "ColumnRef" \
                    and _strings(_unwrap(args[0])[1].get("fields"))[-1:] == ["name"]:
                args[0] = CONST + name
                w.seen[1] += 1  # the column reference it replaces
    ctes = ctx.ctes
    wc = f.get("withClause")
    if wc:
        ctes = w.with_clause(wc, ctes)
    inner = Ctx(ctes, False, False)
    skip = ["withClause", "fromClause", "lockingClause", "intoClause", "targetList", "larg", "rarg"]
    lock_all = ctx.lock
    lock_names: set = set()
    for lc in f.get("lockingClause") or ():
        rels = _unwrap(lc)[1].get("lockedRels")
        w.seen[2] += len(rels or ())  # FOR UPDATE OF name: FROM items, judged there
        if rels:
            lock_names.update(_unwrap(rv)[1].get("relname") for rv in rels)
        else:
            lock_all = True
    if f.get("op", "SETOP_NONE") != "SETOP_NONE":
        # A locking clause here is refused by the server; judged as locking both sides.
        sub = Ctx(ctes, lock_all or bool(lock_names), False)
        for side in ("larg", "rarg"):
            if f.get(side):
                w.stack.append(("SelectStmt", f[side], sub))
    for item in f.get("fromClause") or ():
        w.from_item(item, inner, lock_all, lock_names)
    into = f.get("intoClause")
    if into:
        w.stack.append(("IntoClause", into, inner))
    if ctx.top:
        for t in f.get("targetList") or ():
            v = _unwrap(t)[1].get("val")
            typ, vf = _unwrap(v)
            if typ == "ColumnRef":
                w.column_ref(vf, star_ok=True)
            else:
                w.push(v, inner)
    else:
        w.push(f.get("targetList"), inner)
    w.fields("SelectStmt", f, inner, skip)


def _dml(kind):
    def handler(w: Walk, f, ctx):
        ctes = ctx.ctes
        wc = f.get("withClause")
        if wc:
            ctes = w.with_clause(wc, ctes)
        inner = Ctx(ctes, False, False)
        rel = f.get("relation")
        if isinstance(rel, dict):
            w.relation(rel, "write")  # always a relation, never a WITH query
        items = f.get("fromClause") or f.get("usingClause") or ()
        for item in items:
            w.from_item(item, inner, False, ())
        if f.get("sourceRelation"):
            w.from_item(f["sourceRelation"], inner, False, ())
        w.fields(kind, f, inner, skip=("withClause", "relation", "fromClause", "usingClause", "sourceRelation"))
    return handler


def _range_var(w: Walk, f, ctx):
    w.relation(f, "read")  # outside a FROM list: a relation (DDL's names, LIKE, ...)


def _explain(w: Walk, f, ctx):
    # Judged as what it explains: EXPLAIN ANALYZE runs it; even a plain EXPLAIN
    # of a write asks about a write.
    w.push(f.get("query"), ROOT)


# Delimiter, quote and escape characters that no built-in pattern's match contains (an address's
# local part takes most punctuation, a card number spaces and dashes), so escaping them cannot
# split a value the patterns look for.
COPY_SAFE_CHARS = frozenset('\t,;:"()<>[]')


def _copy(w: Walk, f, ctx):
    if f.get("filename") is not None or f.get("is_program"):
        w.add("admin")  # server files and programs
    rel = f.get("relation")
    is_from = bool(f.get("is_from"))
    if rel:
        w.relation(rel, "write" if is_from else "read")
    if f.get("query"):
        w.push(f["query"], ROOT)
    if not is_from and f.get("filename") is None:
        w.copy_out = True
        opts = []
        for o in f.get("options") or ():
            d = _unwrap(o)[1]
            arg = d.get("arg")
            t, af = _unwrap(arg)
            value = af.get("sval") if t == "String" else const_text(arg)
            opts.append(((d.get("defname") or "").lower(), value if value is not None else arg))
        for name, value in opts:
            # COPY escapes (text) or quotes and doubles (csv) its delimiter, quote and escape
            # characters inside a value: one that can be part of what a pattern finds splits it
            # for the patterns (QUOTE '@' wrote ann@example.com as @ann@@example.com@).
            if name in ("delimiter", "quote", "escape") and not (
                    isinstance(value, str) and len(value) == 1 and value in COPY_SAFE_CHARS):
                w.copy_quoting = (f"COPY's {name.upper()} {value!r} may be written inside a value, "
                                  "where it hides the value from the masking patterns; use one of "
                                  + " ".join(repr(c) for c in sorted(COPY_SAFE_CHARS)))
                w.cacheable = False
        if rel:
            w.copy = CopyTarget(rel.get("schemaname"), rel.get("relname") or "",
                                tuple(_strings(f.get("attlist"))), tuple(opts))
            w.cacheable = False  # the options' values (FORMAT ..., NULL ...) are read
    if f.get("whereClause"):
        w.push(f["whereClause"], ROOT)


def _prepare(w: Walk, f, ctx):
    sub = Walk()
    for t in f.get("argtypes") or ():
        sub.cast(_unwrap(t)[1])  # EXECUTE's parameters are converted to these types
    sub.push(f.get("query"), TOP)
    sub.run_stack()
    w.merge(sub)
    # Its kind: a body that names nothing (PREPARE p AS SELECT 1) is still a read.
    w.prepares.append((f.get("name"), sub.finish((_unwrap(f.get("query"))[0] or "SelectStmt",))))


def _execute(w: Walk, f, ctx):
    w.executes.append(f.get("name"))
    w.push(f.get("params"), ROOT)


def _declare(w: Walk, f, ctx):
    w.declares.append(f.get("portalname"))
    w.push(f.get("query"), ROOT)


def _fetch(w: Walk, f, ctx):
    w.fetch = True
    w.whole_row = True  # we cannot see what the cursor reads here
    w.add("read")


def _read(w: Walk, f, ctx):
    w.add("read")


def _show(w: Walk, f, ctx):
    # SHOW ALL and a superuser-only setting show server configuration: a read of pg_settings.
    name = (f.get("name") or "").lower()
    if name == "all" or name in gucs.SUPERUSER_ONLY:
        return w.ref("read", *gucs.SETTINGS_VIEW)
    w.add("read")


def _write(w: Walk, f, ctx):
    w.add("write")


def _admin(w: Walk, f, ctx):
    w.add("admin")
    w.may_change_path = True  # DO can run anything, SET search_path included


def _transaction(w: Walk, f, ctx):
    # COMMIT / ROLLBACK PREPARED act on a transaction another session may have prepared;
    # PREPARE TRANSACTION leaves one behind that outlives the session, holding its locks
    # and its snapshot (vacuum stops at it) until an admin ends it.
    w.add("admin" if f.get("kind") in ("TRANS_STMT_COMMIT_PREPARED", "TRANS_STMT_ROLLBACK_PREPARED",
                                       "TRANS_STMT_PREPARE") else "read")


def _set(w: Walk, f, ctx):
    kind = f.get("kind")
    if kind == "VAR_RESET_ALL":
        w.may_change_path = True
        return w.add("read")
    if kind == "VAR_SET_MULTI":  # SET TRANSACTION ..., SESSION CHARACTERISTICS, TRANSACTION SNAPSHOT
        return w.add("read")
    args = f.get("args") or ()
    value = const_text(args[0]) if args else None
    w.setting(f.get("name") or "", value, reset=kind in ("VAR_RESET", "VAR_SET_DEFAULT"))


def _constraints(w: Walk, f, ctx):
    w.seen[2] += len(f.get("constraints") or ())  # SET CONSTRAINTS name: constraints, not relations
    w.add("read")


def _deallocate(w: Walk, f, ctx):
    w.deallocates.append(None if f.get("isall") or f.get("name") is None else f.get("name"))
    w.add("read")


def _discard(w: Walk, f, ctx):
    # Back to the start state: DISCARD ALL also resets the role and the path;
    # DISCARD TEMP drops this session's temporary tables.
    target = f.get("target")
    if target == "DISCARD_ALL":
        w.deallocates.append(None)
    if target in ("DISCARD_ALL", "DISCARD_TEMP"):
        w.may_change_path = True
    w.add("read")


def _lock(w: Walk, f, ctx):
    cls = "read" if f.get("mode", 8) == _LOCK_ACCESS_SHARE else "lock"
    for rv in f.get("relations") or ():
        w.relation(_unwrap(rv)[1], cls)


def _truncate(w: Walk, f, ctx):
    for rv in f.get("relations") or ():
        w.relation(_unwrap(rv)[1], "write")


def _call(w: Walk, f, ctx):
    # A procedure is a function: a write on it, as for a function call.
    fc = f.get("funccall")
    w.may_change_path = True  # a procedure can run anything, SET search_path included
    if fc:
        w.stack.append(("FuncCall", fc, ROOT))


def _func_call(w: Walk, f, ctx):
    w.seen[0] += 1
    q = _qualified(_strings(f.get("funcname")))
    if q is not None:
        schema, name = q
        w.calls.setdefault((schema, name, w.late), None)
        if name not in PURE or schema not in (None, "pg_catalog"):
            w.impure = True  # may run SET search_path before a later statement of the string
        if name == "current_setting" and schema in (None, "pg_catalog"):
            # Judged by the setting's name: a superuser-only one, or a name we cannot read,
            # is a read of pg_settings (server configuration).
            args: list = f.get("args") or []
            setting = const_text(args[0]) if args else None
            w.cacheable = False
            if setting is None or setting.strip().lower() in gucs.SUPERUSER_ONLY:
                w.ref("read", *gucs.SETTINGS_VIEW)
        if name == "set_config" and schema in (None, "pg_catalog"):
            # What drivers send (asyncpg turns jit off): judged as SET of that name.
            w.cacheable = False
            args = f.get("args") or []
            name = const_text(args[0]) if args else None
            if name is not None:
                w.setting(name, const_text(args[1]) if len(args) > 1 else None)
            else:
                w.add("admin")  # a name we cannot read
                w.may_change_path = True
    w.fields("FuncCall", f, ctx._replace(lock=False, top=False), skip=("funcname",))


def _column_ref(w: Walk, f, ctx):
    w.column_ref(f)


# Operators an expression names without writing them (the server looks these names up
# as it looks up a written operator).
_IMPLIED_OPERATORS = {"AEXPR_BETWEEN": (">=", "<="), "AEXPR_BETWEEN_SYM": (">=", "<="),
                      "AEXPR_NOT_BETWEEN": ("<", ">"), "AEXPR_NOT_BETWEEN_SYM": ("<", ">")}


def _a_expr(w: Walk, f, ctx):
    implied = _IMPLIED_OPERATORS.get(f.get("kind"))
    if implied:
        for op in implied:
            w.operator([op])
    else:
        w.operator(_strings(f.get("name")))
    w.fields("A_Expr", f, ctx, skip=("name",))


def _sublink(w: Walk, f, ctx):
    if f.get("operName"):
        w.operator(_strings(f.get("operName")))
    elif f.get("subLinkType") == "ANY_SUBLINK":
        w.operator(["="])  # x IN (SELECT ...)
    w.fields("SubLink", f, ctx, skip=("operName",))


def _sort_by(w: Walk, f, ctx):
    if f.get("useOp"):
        w.operator(_strings(f.get("useOp")))  # ORDER BY x USING op
    w.fields("SortBy", f, ctx, skip=("useOp",))


def _case(w: Walk, f, ctx):
    if f.get("arg") is not None:
        w.operator(["="])  # CASE x WHEN v: x = v
    w.fields("CaseExpr", f, ctx)


def _type_cast(w: Walk, f, ctx):
    w.cast(f.get("typeName"))
    w.fields("TypeCast", f, ctx)


def _table_func_column(w: Walk, f, ctx):
    w.cast(f.get("typeName"))  # XMLTABLE ... COLUMNS x type: each value is converted to it
    w.fields("RangeTableFuncCol", f, ctx)


def _alias(w: Walk, f, ctx):
    w.alias(f)


def _cte(w: Walk, f, ctx):
    # Reached only outside a WITH clause's own handling (cannot happen in valid trees).
    w.push(f.get("ctequery"), ctx)


def _lockedrel(w: Walk, f, ctx):
    pass


_HANDLERS = {
    "SelectStmt": _select,
    "InsertStmt": _dml("InsertStmt"),
    "UpdateStmt": _dml("UpdateStmt"),
    "DeleteStmt": _dml("DeleteStmt"),
    "MergeStmt": _dml("MergeStmt"),
    "RangeVar": _range_var,
    "ExplainStmt": _explain,
    "CopyStmt": _copy,
    "PrepareStmt": _prepare,
    "ExecuteStmt": _execute,
    "DeclareCursorStmt": _declare,
    "FetchStmt": _fetch,
    "ClosePortalStmt": _read,
    "VariableSetStmt": _set,
    "VariableShowStmt": _show,
    "TransactionStmt": _transaction,
    "DeallocateStmt": _deallocate,
    "DiscardStmt": _discard,
    "ListenStmt": _read,
    "UnlistenStmt": _read,
    "NotifyStmt": _write,
    "LockStmt": _lock,
    "TruncateStmt": _truncate,
    "CallStmt": _call,
    "DoStmt": _admin,
    "ConstraintsSetStmt": _constraints,
    "FuncCall": _func_call,
    "ColumnRef": _column_ref,
    "A_Expr": _a_expr,
    "SubLink": _sublink,
    "SortBy": _sort_by,
    "CaseExpr": _case,
    "TypeCast": _type_cast,
    "RangeTableFuncCol": _table_func_column,
    "Alias": _alias,
    "CommonTableExpr": _cte,
    "LockingClause": _lockedrel,
}


def _named_objects(kind, f):
    """The (what, schema, name) a DROP or CREATE FUNCTION is about, or None if the
    statement is not one of those or names something else."""
    if kind == "DropStmt":
        obj_kind = f.get("removeType")
        out = []
        for obj in f.get("objects") or ():
            t, of = _unwrap(obj)
            if obj_kind in _RELATION_OBJECTS and t == "List":
                q, what = _qualified(_strings(of.get("items"))), "rel"
            elif obj_kind in _ROUTINE_OBJECTS and t == "ObjectWithArgs":
                q, what = _qualified(_strings(of.get("objname"))), "fn"
            else:
                q = None
            if q is None:
                return None
            out.append((what,) + q)
        return out
    if kind == "CreateFunctionStmt":
        q = _qualified(_strings(f.get("funcname")))
        return None if q is None else [("newfn",) + q]
    return None


def walk(stmts, expected=None) -> Parsed:
    """What the raw statements of ``hoopy.postgres.sqltree.parse`` do. ``expected``: how many
    FuncCall, ColumnRef and RangeVar nodes the parser's output holds; a walk that judged
    fewer missed part of the statement, which is then refused (CannotJudge)."""
    w = Walk()
    kinds = []
    for raw in stmts:
        kind, f = _unwrap(raw.get("stmt"))
        if kind is None:
            continue
        kinds.append(kind)
        w.late = w.may_change_path or w.impure
        if kind in HANDLED:
            w.stack.append((kind, f, TOP))
            w.run_stack()
            continue
        cls = STATEMENT_CLASS.get(kind, "admin")
        w.may_change_path = True  # DDL and admin statements may change what a name finds
        sub = Walk()
        sub.fields(kind, f, ROOT)
        sub.run_stack()
        named = _named_objects(kind, f)
        # Tables named by a DDL statement are DDL on those tables; its embedded
        # queries (CREATE TABLE AS, views) also read.
        w.merge(sub, cls)
        for what, schema, name in named or ():
            w.ref(cls, schema, name, what)
        if named is None and (kind not in ON_RELATIONS or not sub.refs):
            w.add(cls)  # about no table we can name: (any object)
        else:
            w.fixed.setdefault(Unit(cls, None), None)
    if expected is not None and any(a < b for a, b in zip(w.seen, expected)):
        from hoopy.postgres.sqltree import CannotJudge

        missed = ", ".join(f"{b - a} {n}" for a, b, n in zip(w.seen, expected, ("calls", "column references",
                                                                                   "relation names")) if a < b)
        raise CannotJudge(f"internal error: the classifier did not reach every part of it ({missed})")
    return w.finish(kinds)
