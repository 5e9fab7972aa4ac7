"""The walker: the state of one walk over a statement's tree, its stack, and the scopes
of the names it meets (the handlers of particular nodes: hoopy.postgres.walk_statements,
hoopy.postgres.walk_expressions).

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

from hoopy.policy.rules import Unit
from hoopy.postgres import gucs
from hoopy.postgres.functions import ROW_FUNCTIONS
from hoopy.postgres.nodes import qualified, strings, unwrap
from hoopy.postgres.parsed import ANY_OBJECT, CopyTarget, Parsed
from hoopy.postgres.sqltree import STRUCT_FIELDS
from hoopy.postgres.statement_kinds import CREATES

# ctes: names of WITH queries visible; lock: the FROM list of this query level
# is locked (FOR UPDATE of a query above, propagated); top: the statement's own
# SELECT (a star in its target list yields columns with an origin).
Ctx = namedtuple("Ctx", "ctes lock top")
ROOT = Ctx(frozenset(), False, False)
TOP = Ctx(frozenset(), False, True)


class Walk:
    """What one walk has found so far, and its stack of nodes still to judge."""

    def __init__(self, handlers: dict):
        self.handlers = handlers  # node type -> handler(walk, fields, ctx); other types: their fields
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
        self.copy: CopyTarget | None = None
        self.copy_quoting: str | None = None
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
    def sub(self) -> "Walk":
        """A walk of a part judged apart (a PREPARE's body, a DDL statement), merged after."""
        return Walk(self.handlers)

    def run_stack(self):
        stack = self.stack
        handlers = self.handlers
        while stack:
            typ, fields, ctx = stack.pop()
            handler = handlers.get(typ)
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
        typ, fields = unwrap(v)
        if typ is None:
            # A struct we were not told the type of: a RangeVar must still count.
            typ = "RangeVar" if "relname" in v else "?"
        self.stack.append((typ, fields, ctx))

    def field(self, typ, name, v, ctx):
        if isinstance(v, dict) and v:
            if unwrap(v)[0] is not None:
                # A node written with its type ({"FuncCall": {...}}): fields declared as an
                # abstract Expr (CASE ... THEN, ELSE, IS NULL, IS TRUE, ...) are, and must be
                # walked as what they hold, never as a struct of their declared type.
                self.stack.append(unwrap(v) + (ctx,))
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
        typ, f = unwrap(item)
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
        items = [unwrap(c)[1] for c in w.get("ctes") or ()]
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
        q = qualified(names)
        if q is not None and q[1]:
            self.operators.setdefault(q + (self.late,), None)

    def cast(self, type_name):
        """A value converted to this type (TypeName): its casts and domain checks may run code."""
        if isinstance(type_name, dict):
            q = qualified(strings(type_name.get("names")))
            if q is not None:
                self.casts.setdefault(q + (self.late,), None)

    def column_ref(self, f, star_ok=False):
        self.seen[1] += 1
        names = strings(f.get("fields"))
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
