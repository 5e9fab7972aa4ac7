"""What the walk knows of the statements it does not walk itself (DDL, admin): their
class, whether their object is the relation they name, and what a DROP or CREATE
FUNCTION names."""
from __future__ import annotations

from hoopy.postgres.nodes import qualified, strings, unwrap

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


def named_objects(kind, f):
    """The (what, schema, name) a DROP or CREATE FUNCTION is about, or None if the
    statement is not one of those or names something else."""
    if kind == "DropStmt":
        obj_kind = f.get("removeType")
        out = []
        for obj in f.get("objects") or ():
            t, of = unwrap(obj)
            if obj_kind in _RELATION_OBJECTS and t == "List":
                q, what = qualified(strings(of.get("items"))), "rel"
            elif obj_kind in _ROUTINE_OBJECTS and t == "ObjectWithArgs":
                q, what = qualified(strings(of.get("objname"))), "fn"
            else:
                q = None
            if q is None:
                return None
            out.append((what,) + q)
        return out
    if kind == "CreateFunctionStmt":
        q = qualified(strings(f.get("funcname")))
        return None if q is None else [("newfn",) + q]
    return None
