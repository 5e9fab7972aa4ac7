"""The walk's handlers of the statements it judges itself (every other kind is DDL or admin:
hoopy.postgres.statement_kinds): which relations each reads, writes or locks, and what each
does to the session (settings, prepared statements, cursors)."""
from __future__ import annotations

from hoopy.postgres import gucs
from hoopy.postgres.nodes import strings, unwrap
from hoopy.postgres.parsed import CopyTarget
from hoopy.postgres.sqltree import CONST, const_text
from hoopy.postgres.walker import ROOT, TOP, Ctx, Walk

_LOCK_ACCESS_SHARE = 1  # LOCK TABLE ... IN ACCESS SHARE MODE: what a read takes


def _settings_row_name(f):
    """pg_dump's ``SELECT set_config(name, 'v', false) FROM pg_settings WHERE name = 'x'``
    sets x: the setting's name, or None if the SELECT is not of that form."""
    items = f.get("fromClause") or ()
    if len(items) != 1:
        return None
    typ, rv = unwrap(items[0])
    if typ != "RangeVar" or rv.get("relname") != "pg_settings" or rv.get("schemaname") not in (None, "pg_catalog"):
        return None
    typ, w = unwrap(f.get("whereClause"))
    if typ != "A_Expr" or w.get("kind") != "AEXPR_OP" or strings(w.get("name")) != ["="]:
        return None
    t, left = unwrap(w.get("lexpr"))
    value = const_text(w.get("rexpr"))
    if t != "ColumnRef" or strings(left.get("fields"))[-1:] != ["name"] or value is None:
        return None
    return value


def _select(w: Walk, f, ctx):
    name = _settings_row_name(f)
    if name is not None:
        # The only row's name is that constant: judge set_config(name, ...) as SET of it.
        for t in f.get("targetList") or ():
            typ, call = unwrap(unwrap(t)[1].get("val"))
            args = call.get("args") if typ == "FuncCall" else None
            if args and strings(call.get("funcname"))[-1:] == ["set_config"] \
                    and unwrap(args[0])[0] == "ColumnRef" \
                    and strings(unwrap(args[0])[1].get("fields"))[-1:] == ["name"]:
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
        rels = unwrap(lc)[1].get("lockedRels")
        w.seen[2] += len(rels or ())  # FOR UPDATE OF name: FROM items, judged there
        if rels:
            lock_names.update(unwrap(rv)[1].get("relname") for rv in rels)
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
            v = unwrap(t)[1].get("val")
            typ, vf = unwrap(v)
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
            d = unwrap(o)[1]
            arg = d.get("arg")
            t, af = unwrap(arg)
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
                                tuple(strings(f.get("attlist"))), tuple(opts))
            w.cacheable = False  # the options' values (FORMAT ..., NULL ...) are read
    if f.get("whereClause"):
        w.push(f["whereClause"], ROOT)


def _prepare(w: Walk, f, ctx):
    sub = w.sub()
    for t in f.get("argtypes") or ():
        sub.cast(unwrap(t)[1])  # EXECUTE's parameters are converted to these types
    sub.push(f.get("query"), TOP)
    sub.run_stack()
    w.merge(sub)
    # Its kind: a body that names nothing (PREPARE p AS SELECT 1) is still a read.
    w.prepares.append((f.get("name"), sub.finish((unwrap(f.get("query"))[0] or "SelectStmt",))))


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
        w.relation(unwrap(rv)[1], cls)


def _truncate(w: Walk, f, ctx):
    for rv in f.get("relations") or ():
        w.relation(unwrap(rv)[1], "write")


def _call(w: Walk, f, ctx):
    # A procedure is a function: a write on it, as for a function call.
    fc = f.get("funccall")
    w.may_change_path = True  # a procedure can run anything, SET search_path included
    if fc:
        w.stack.append(("FuncCall", fc, ROOT))


# The statements the walk judges itself, each by its handler.
STATEMENTS = {
    "SelectStmt": _select,
    "InsertStmt": _dml("InsertStmt"),
    "UpdateStmt": _dml("UpdateStmt"),
    "DeleteStmt": _dml("DeleteStmt"),
    "MergeStmt": _dml("MergeStmt"),
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
}
