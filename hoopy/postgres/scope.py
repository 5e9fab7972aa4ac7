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

# One simple query, three result sets: the path, the relation names of every
# schema in it but the last, the function names of its schemas (pg_catalog's
# are hoopy's reviewed catalogue, hoopy.postgres.functions).
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
)
SCOPE_RESULTS = 3  # result sets SCOPE_QUERY returns

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

    @classmethod
    def default(cls, functions: dict | None = None) -> "Scope":
        """PostgreSQL's default for a user with no schema of its own: pg_catalog, public."""
        return cls(("pg_catalog", "public"), ("public",), "", None, {CATALOG: _CATALOG_RELATIONS},
                   dict(functions or {}))

    @classmethod
    def unknown(cls) -> "Scope":
        return cls(None)

    @classmethod
    def from_results(cls, results) -> "Scope":
        """``results``: SCOPE_QUERY's three row sets, as text values."""
        head, rels, funcs = (list(results) + [[], [], []])[:3]
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
        return cls(path, explicit, user or "", temp,
                   {k: frozenset(v) for k, v in relations.items()},
                   {k: frozenset(v) for k, v in functions.items()})

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
