"""The walk's handlers of the nodes below a statement that it treats specially: function
calls, column references, operators (written or implied), casts, aliases, and a relation
named outside a FROM list."""
from __future__ import annotations

from hoopy.postgres import gucs
from hoopy.postgres.functions import PURE
from hoopy.postgres.nodes import qualified, strings
from hoopy.postgres.sqltree import const_text
from hoopy.postgres.walker import Walk


def _range_var(w: Walk, f, ctx):
    w.relation(f, "read")  # outside a FROM list: a relation (DDL's names, LIKE, ...)


def _func_call(w: Walk, f, ctx):
    w.seen[0] += 1
    q = qualified(strings(f.get("funcname")))
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
        w.operator(strings(f.get("name")))
    w.fields("A_Expr", f, ctx, skip=("name",))


def _sublink(w: Walk, f, ctx):
    if f.get("operName"):
        w.operator(strings(f.get("operName")))
    elif f.get("subLinkType") == "ANY_SUBLINK":
        w.operator(["="])  # x IN (SELECT ...)
    w.fields("SubLink", f, ctx, skip=("operName",))


def _sort_by(w: Walk, f, ctx):
    if f.get("useOp"):
        w.operator(strings(f.get("useOp")))  # ORDER BY x USING op
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


# The nodes below a statement the walk treats specially, each by its handler.
EXPRESSIONS = {
    "RangeVar": _range_var,
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
