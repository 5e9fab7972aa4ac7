"""The walk: what a parsed statement does, scoped as PostgreSQL scopes names.

Input: the trees of ``hoopy.postgres.sqltree``. Output: ``Parsed``, which does
not depend on the session's search path (it is cached by the statement's shape);
``hoopy.postgres.classify.resolve`` turns its references into units with the
session's ``Scope``.

Its parts: the walker's state and scopes (hoopy.postgres.walker), the handlers of
statements (hoopy.postgres.walk_statements) and of the nodes below them
(hoopy.postgres.walk_expressions), what it knows of DDL and admin statements
(hoopy.postgres.statement_kinds), its result (hoopy.postgres.parsed).

The walk keeps its own stack: a deep tree cannot exhaust Python's.
"""
from __future__ import annotations

from hoopy.policy.rules import Unit
from hoopy.postgres.parsed import Parsed
from hoopy.postgres.sqltree import CannotJudge
from hoopy.postgres.nodes import unwrap
from hoopy.postgres.statement_kinds import ON_RELATIONS, STATEMENT_CLASS, named_objects
from hoopy.postgres.walk_expressions import EXPRESSIONS
from hoopy.postgres.walk_statements import STATEMENTS
from hoopy.postgres.walker import ROOT, TOP, Walk

# Every node type the walk treats specially, by its handler; other nodes are walked field by field.
HANDLERS = {**STATEMENTS, **EXPRESSIONS}


def walk(stmts, expected=None) -> Parsed:
    """What the raw statements of ``hoopy.postgres.sqltree.parse`` do. ``expected``: how many
    FuncCall, ColumnRef and RangeVar nodes the parser's output holds; a walk that judged
    fewer missed part of the statement, which is then refused (CannotJudge)."""
    w = Walk(HANDLERS)
    kinds = []
    for raw in stmts:
        kind, f = unwrap(raw.get("stmt"))
        if kind is None:
            continue
        kinds.append(kind)
        w.late = w.may_change_path or w.impure
        if kind in STATEMENTS:  # the statements the walk judges itself
            w.stack.append((kind, f, TOP))
            w.run_stack()
            continue
        cls = STATEMENT_CLASS.get(kind, "admin")
        w.may_change_path = True  # DDL and admin statements may change what a name finds
        sub = w.sub()
        sub.fields(kind, f, ROOT)
        sub.run_stack()
        named = named_objects(kind, f)
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
        missed = ", ".join(f"{b - a} {n}" for a, b, n in zip(w.seen, expected, ("calls", "column references",
                                                                                   "relation names")) if a < b)
        raise CannotJudge(f"internal error: the classifier did not reach every part of it ({missed})")
    return w.finish(kinds)
