"""Where an unqualified name leads: the session's search path, as the server has it.

The server looks an unqualified relation name up in the schemas of
``current_schemas(true)``, in order: the session's temporary schema first (if it
has one and the path does not place ``pg_temp`` elsewhere), ``pg_catalog`` first
unless the path names it later, then the path's schemas that exist (``"$user"``
becomes the current user's schema when there is one). The first schema holding
a relation of that name wins. A name to be created goes to the first schema of
the explicit path (``current_schemas(false)``). Functions are looked up in the
same schemas except the temporary one, and overload resolution may pick any of
them.

A ``Scope`` holds what the gateway read from the upstream about that: the path,
and the relation names of every schema in it but the last (a name found in none
of them is in the last, or nowhere). ``SCOPE_QUERY`` reads it, at connect and
again after any statement that may have changed it (``Classified.may_change_path``).
"""
from __future__ import annotations

import json

import attrs

CATALOG = "pg_catalog"
TEMP = "pg_temp"

# One simple query, four result sets: the path, the relation names of every
# schema in it but the last, the function names of its schemas (pg_catalog's
# are hoopy's reviewed catalogue, hoopy.postgres.functions), and the functions
# outside pg_catalog that a statement reaches through an operator or a cast:
# every user-defined operator (its function, and whether that is VOLATILE), and
# the VOLATILE functions behind a type: casts into it, a domain's CHECK
# constraints (its base domains' too). A function PostgreSQL may not treat as
# free of side effects (VOLATILE, the default of CREATE FUNCTION) reached that
# way is judged as called; an IMMUTABLE or STABLE one (what extensions such as
# citext or PostGIS declare) is the type's own behaviour, as a built-in's is.
SCOPE_QUERY = (
    "SELECT pg_catalog.array_to_json(pg_catalog.current_schemas(true))::text,"
    " pg_catalog.array_to_json(pg_catalog.current_schemas(false))::text,"
    " pg_catalog.current_user()::text,"
    " CASE WHEN pg_catalog.pg_my_temp_schema() <> 0"
    " THEN pg_catalog.pg_my_temp_schema()::pg_catalog.regnamespace::text END;"
    "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = ANY ((pg_catalog.current_schemas(true))"
    "[1:pg_catalog.array_length(pg_catalog.current_schemas(true), 1) - 1]);"
    "SELECT DISTINCT n.nspname, p.proname FROM pg_catalog.pg_proc p"
    " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname = ANY (pg_catalog.current_schemas(false)) AND n.nspname <> 'pg_catalog'"
    " AND p.pronamespace <> pg_catalog.pg_my_temp_schema();"
    "WITH RECURSIVE d(oid, base) AS ("
    " SELECT oid, oid FROM pg_catalog.pg_type WHERE typtype = 'd'"
    " UNION SELECT d.oid, t.typbasetype FROM d JOIN pg_catalog.pg_type t ON t.oid = d.base AND t.typtype = 'd'),"
    " fn(target, proc) AS ("
    " SELECT d.oid, dep.refobjid FROM d JOIN pg_catalog.pg_constraint c ON c.contypid = d.base"
    " JOIN pg_catalog.pg_depend dep ON dep.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass"
    " AND dep.objid = c.oid AND dep.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass"
    " UNION SELECT c.casttarget, c.castfunc FROM pg_catalog.pg_cast c WHERE c.castfunc <> 0"
    " UNION SELECT d.oid, c.castfunc FROM d JOIN pg_catalog.pg_cast c ON c.casttarget = d.base AND c.castfunc <> 0)"
    " SELECT 't', tn.nspname, t.typname, t.oid::text || ' ' || t.typarray::text, pn.nspname, p.proname"
    " FROM fn JOIN pg_catalog.pg_proc p ON p.oid = fn.proc"
    " JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace"
    " JOIN pg_catalog.pg_type t ON t.oid = fn.target JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace"
    " WHERE pn.nspname <> 'pg_catalog' AND p.provolatile = 'v'"
    " UNION ALL SELECT 'o', n.nspname, o.oprname, p.provolatile::text, pn.nspname, p.proname"
    " FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace"
    " JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace"
    " WHERE n.nspname <> 'pg_catalog';"
)
SCOPE_RESULTS = 4  # result sets SCOPE_QUERY returns

# PostgreSQL's own catalog relations (tables, views, sequences; PostgreSQL 15):
# what the default scope, used without an upstream, knows pg_catalog holds.
_CATALOG_RELATIONS = frozenset("""
pg_aggregate pg_am pg_amop pg_amproc pg_attrdef pg_attribute pg_auth_members pg_authid
pg_available_extension_versions pg_available_extensions pg_backend_memory_contexts pg_cast pg_class
pg_collation pg_config pg_constraint pg_conversion pg_cursors pg_database pg_db_role_setting pg_default_acl
pg_depend pg_description pg_enum pg_event_trigger pg_extension pg_file_settings pg_foreign_data_wrapper
pg_foreign_server pg_foreign_table pg_group pg_hba_file_rules pg_ident_file_mappings pg_index pg_indexes
pg_inherits pg_init_privs pg_language pg_largeobject pg_largeobject_metadata pg_locks pg_matviews
pg_namespace pg_opclass pg_operator pg_opfamily pg_parameter_acl pg_partitioned_table pg_policies pg_policy
pg_prepared_statements pg_prepared_xacts pg_proc pg_publication pg_publication_namespace pg_publication_rel
pg_publication_tables pg_range pg_replication_origin pg_replication_origin_status pg_replication_slots
pg_rewrite pg_roles pg_rules pg_seclabel pg_seclabels pg_sequence pg_sequences pg_settings pg_shadow
pg_shdepend pg_shdescription pg_shmem_allocations pg_shseclabel pg_stat_activity pg_stat_all_indexes
pg_stat_all_tables pg_stat_archiver pg_stat_bgwriter pg_stat_database pg_stat_database_conflicts
pg_stat_gssapi pg_stat_progress_analyze pg_stat_progress_basebackup pg_stat_progress_cluster
pg_stat_progress_copy pg_stat_progress_create_index pg_stat_progress_vacuum pg_stat_recovery_prefetch
pg_stat_replication pg_stat_replication_slots pg_stat_slru pg_stat_ssl pg_stat_subscription
pg_stat_subscription_stats pg_stat_sys_indexes pg_stat_sys_tables pg_stat_user_functions pg_stat_user_indexes
pg_stat_user_tables pg_stat_wal pg_stat_wal_receiver pg_stat_xact_all_tables pg_stat_xact_sys_tables
pg_stat_xact_user_functions pg_stat_xact_user_tables pg_statio_all_indexes pg_statio_all_sequences
pg_statio_all_tables pg_statio_sys_indexes pg_statio_sys_sequences pg_statio_sys_tables
pg_statio_user_indexes pg_statio_user_sequences pg_statio_user_tables pg_statistic pg_statistic_ext
pg_statistic_ext_data pg_stats pg_stats_ext pg_stats_ext_exprs pg_subscription pg_subscription_rel pg_tables
pg_tablespace pg_timezone_abbrevs pg_timezone_names pg_transform pg_trigger pg_ts_config pg_ts_config_map
pg_ts_dict pg_ts_parser pg_ts_template pg_type pg_user pg_user_mapping pg_user_mappings pg_views
""".split())


# Every session of a database reads the same names (pg_catalog's relations alone are
# hundreds): one frozen set of them is kept for all sessions that read equal ones, not one
# each. Bounded by the names held; past that the table starts again (sets already handed
# out stay with their scopes).
_SHARED: dict = {}
_SHARED_NAMES = [0]
SHARED_NAMES_MAX = 500_000


def _shared(names) -> frozenset:
    names = frozenset(names)
    kept = _SHARED.get(names)
    if kept is not None:
        return kept
    if _SHARED_NAMES[0] + len(names) > SHARED_NAMES_MAX:
        _SHARED.clear()
        _SHARED_NAMES[0] = 0
    _SHARED[names] = names
    _SHARED_NAMES[0] += len(names)
    return names


@attrs.frozen(eq=False)
class Scope:
    """The session's search path and what its schemas hold, as last read upstream.

    ``path`` None: not known (it may have changed and not been read again yet);
    an unqualified name cannot be judged then.
    """

    path: tuple | None  # current_schemas(true), temp schema under its own name
    explicit: tuple = ()  # current_schemas(false): an unqualified CREATE goes to the first
    user: str = ""
    temp: str | None = None  # this session's temporary schema (pg_temp_N), if it has one
    relations: dict = attrs.field(factory=dict)  # schema -> relation names (every path schema but the last)
    functions: dict = attrs.field(factory=dict)  # schema -> function names (path schemas, not pg_catalog)
    # What operators and casts reach (the fourth result set), as (function schema, name) sets:
    operators: dict = attrs.field(factory=dict)  # (schema, operator) -> VOLATILE functions of operators
    user_operators: frozenset = frozenset()  # every (schema, operator) outside pg_catalog
    types: dict = attrs.field(factory=dict)  # (schema, type) -> VOLATILE functions a cast into it runs
    type_oids: dict = attrs.field(factory=dict)  # type OID (and its array's) -> the same
    # id(Parsed) -> (Parsed, Classified): classify.resolve's answers under this scope. Sound
    # because a Scope is never changed in place: what the session's path becomes is a new Scope.
    resolved: dict = attrs.field(factory=dict, init=False, repr=False)

    @classmethod
    def default(cls, functions: dict | None = None) -> "Scope":
        """PostgreSQL's default for a user with no schema of its own: pg_catalog, public."""
        return cls(("pg_catalog", "public"), ("public",), "", None, {CATALOG: _CATALOG_RELATIONS},
                   dict(functions or {}))

    @classmethod
    def unknown(cls, previous: "Scope | None" = None) -> "Scope":
        """The path not known; what operators and casts reach (the whole database's, not
        the path's) is kept from ``previous``."""
        if previous is None:
            return cls(None)
        return cls(None, operators=previous.operators, user_operators=previous.user_operators,
                   types=previous.types, type_oids=previous.type_oids)

    def code_schemas(self, late: bool) -> tuple | None:
        """The schemas an unqualified operator or type name may be found in: the path's
        (pg_temp holds no operators, but types); every schema when the path is not known
        or will have changed (``late``): None."""
        return None if late or self.path is None else self.path

    @classmethod
    def from_results(cls, results) -> "Scope":
        """``results``: SCOPE_QUERY's row sets, as text values."""
        head, rels, funcs, code = (list(results) + [[], [], [], []])[:4]
        if not head:
            return cls.unknown()
        path_json, explicit_json, user, temp = (list(head[0]) + [None] * 4)[:4]
        path = tuple(json.loads(path_json or "[]"))
        explicit = tuple(json.loads(explicit_json or "[]"))
        relations: dict = {}
        for nsp, rel in rels:
            relations.setdefault(nsp, set()).add(rel)
        functions: dict = {}
        for nsp, name in funcs:
            functions.setdefault(nsp, set()).add(name)
        operators: dict = {}
        user_operators = set()
        types: dict = {}
        type_oids: dict = {}
        for row in code:
            kind, nsp, name, extra, fnsp, fn = (list(row) + [None] * 6)[:6]
            if kind == "o":
                user_operators.add((nsp, name))
                if extra == "v":
                    operators.setdefault((nsp, name), set()).add((fnsp, fn))
            elif kind == "t":
                types.setdefault((nsp, name), set()).add((fnsp, fn))
                for oid in (extra or "").split():
                    if oid != "0":
                        type_oids.setdefault(int(oid), set()).add((fnsp, fn))
        return cls(path, explicit, user or "", temp,
                   {k: _shared(v) for k, v in relations.items()},
                   {k: _shared(v) for k, v in functions.items()},
                   {k: _shared(v) for k, v in operators.items()}, _shared(user_operators),
                   {k: _shared(v) for k, v in types.items()}, {k: _shared(v) for k, v in type_oids.items()})

    @property
    def known(self) -> bool:
        return self.path is not None

    def schema_name(self, schema: str) -> str:
        """The name a unit shows for a schema: the session's own temporary schema is pg_temp."""
        if schema == self.temp or schema == TEMP:
            return TEMP
        return schema

    def relation(self, schema: str | None, name: str, create: bool = False) -> str | None:
        """The schema an existing relation of this name is in (or a new one goes to);
        None if that cannot be known."""
        if schema is not None:
            return self.schema_name(schema)
        if self.path is None:
            return None
        if create:
            # CREATE TABLE x: the first schema of the explicit path (the server
            # refuses when there is none: judged as pg_catalog, which no one creates in).
            return self.schema_name(self.explicit[0]) if self.explicit else CATALOG
        if not self.path:
            return None
        for s in self.path[:-1]:
            if name in self.relations.get(s, ()):
                return self.schema_name(s)
        return self.schema_name(self.path[-1])

    def function_schemas(self, name: str) -> list | None:
        """The schemas an unqualified call of this name may resolve to (overload
        resolution may pick any of them), pg_catalog's built-in included; None if
        the path is not known."""
        if self.path is None:
            return None
        out = []
        for s in self.path:
            if s == self.temp or s.startswith("pg_temp"):
                continue  # never searched for functions
            if s == CATALOG or name in self.functions.get(s, ()):
                out.append(s)
        if CATALOG not in out:
            out.append(CATALOG)
        return out


DEFAULT = Scope.default()
