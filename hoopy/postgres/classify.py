"""What a SQL string does: read / write / ddl / admin, and the tables it touches.

pglast parses with PostgreSQL's own parser; we walk the *whole* tree, so a
DELETE inside a CTE, ``EXPLAIN ANALYZE`` of a write, ``SELECT ... FOR
UPDATE``, ``COPY ... FROM`` or ``TO PROGRAM``, side-effecting functions,
``DO`` blocks and ``SET ROLE`` are never taken for reads.

Unqualified names are judged as ``public.NAME`` (``pg_*`` names as
``pg_catalog.NAME``): the gateway's documented search path. A session that
changed ``search_path`` cannot be judged that way, so ``Classified.unqualified``
lets the caller refuse.
"""
from __future__ import annotations

import attrs
from pglast import ast, parse_sql
from pglast.enums import VariableSetKind
from pglast.parser import ParseError, scan

from hoopy.policy.rules import Unit
from hoopy.postgres.rules import pg_table_unit


# The subject of a ddl or admin unit that is not about one named table or function
# (DO, SET ROLE, COPY ... PROGRAM, DROP SCHEMA, ALTER ROLE, ...). No table pattern
# matches it (patterns have a dot), so only a rule without tables covers it: a
# rule for one table must not grant a DO block or a DROP of another table.
ANY_OBJECT = "(any object)"


class ClassifyError(Exception):
    """The SQL does not parse: refused with the parser's message."""


# Functions known to be free of side effects (what an agent's SELECT uses).
SAFE_FUNCTIONS = frozenset("""
count sum avg min max stddev variance every bool_and bool_or array_agg string_agg json_agg jsonb_agg
json_object_agg jsonb_object_agg row_to_json to_json to_jsonb json_build_object jsonb_build_object
json_build_array jsonb_build_array jsonb_pretty json_typeof jsonb_typeof jsonb_set jsonb_array_length
json_array_length jsonb_each jsonb_each_text json_each json_each_text jsonb_object_keys jsonb_array_elements
json_array_elements jsonb_extract_path jsonb_extract_path_text json_extract_path json_extract_path_text
lower upper length char_length octet_length substr substring trim btrim ltrim rtrim concat concat_ws
replace split_part left right lpad rpad repeat reverse position strpos initcap format regexp_replace
regexp_match regexp_matches regexp_split_to_array regexp_split_to_table starts_with to_char to_date to_number
to_timestamp date_trunc date_part extract age now clock_timestamp statement_timestamp transaction_timestamp
timeofday make_date make_time make_timestamp make_timestamptz make_interval justify_days justify_hours
abs round floor ceil ceiling trunc mod power sqrt exp ln log sign greatest least random pi div
coalesce nullif generate_series unnest array_length array_position array_positions cardinality array_to_string
string_to_array array_append array_prepend array_cat array_remove array_upper array_lower md5 sha256 encode
decode gen_random_uuid uuid_generate_v4 pg_sleep version current_setting current_database current_schema
current_schemas current_user session_user pg_typeof format_type quote_ident quote_literal quote_nullable
row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
percentile_cont percentile_disc mode obj_description col_description shobj_description
pg_table_is_visible pg_type_is_visible pg_function_is_visible pg_get_userbyid pg_get_expr pg_get_indexdef
pg_get_constraintdef pg_get_viewdef pg_get_triggerdef pg_get_functiondef pg_get_function_arguments
pg_get_function_result pg_get_function_identity_arguments pg_get_ruledef pg_get_serial_sequence
pg_get_partkeydef pg_get_statisticsobjdef pg_relation_size pg_total_relation_size pg_table_size
pg_indexes_size pg_size_pretty pg_encoding_to_char pg_backend_pid pg_postmaster_start_time
has_table_privilege has_schema_privilege has_database_privilege has_column_privilege has_function_privilege
pg_has_role array_to_json inet_server_addr inet_server_port txid_current_if_assigned pg_is_in_recovery
""".split())

# Catalog readers psql's \d commands and drivers' introspection use.
SAFE_PREFIXES = ("pg_get_", "has_", "pg_stat_get_", "pg_describe_object", "pg_identify_object",
                 "pg_relation_", "pg_table_", "pg_total_relation_", "pg_indexes_", "pg_size_", "pg_column_size",
                 "pg_encoding_", "pg_char_to_encoding", "pg_partition_", "pg_options_to_table", "pg_tablespace_",
                 "pg_database_size", "pg_index_column_has_property", "pg_index_has_property",
                 "pg_indexam_has_property", "pg_sequence_parameters", "pg_input_is_valid", "pg_collation_",
                 "pg_event_trigger_", "pg_type_", "pg_function_", "pg_conversion_", "pg_ts_", "pg_opclass_",
                 "pg_opfamily_", "pg_operator_", "pg_statistics_", "array_", "string_", "text", "to_",
                 "pg_has_role", "pg_my_temp_schema", "pg_is_other_temp_schema", "pg_jit_available",
                 "pg_current_logfile", "format", "row_security_active")

# Built-ins callable with one row argument: "c.to_jsonb" is to_jsonb(c), a whole row
# (functional notation, which reads like a column reference).
ROW_FUNCTIONS = frozenset("""
any_out anycompatible_out anycompatiblenonarray_out anyelement_out anynonarray_out array_agg concat count
cume_dist dense_rank first_value hash_record json_agg json_build_array json_build_object jsonb_agg
jsonb_build_array jsonb_build_object lag last_value lead mode num_nonnulls num_nulls percent_rank
pg_collation_for pg_column_compression pg_column_size pg_typeof quote_literal quote_nullable rank
record_out record_send row_to_json to_json to_jsonb hstore to_tsvector json_populate_record
""".split())

# Settings that change who we are, how SQL is read, what the server logs or checks,
# or what code it loads: admin. So are extensions' settings (pgaudit.*, hoopy.*),
# log_*, debug_* and track_*.
ADMIN_SETTINGS = frozenset("""
role session_authorization session_replication_role search_path standard_conforming_strings client_encoding
backslash_quote lc_messages zero_damaged_pages ignore_checksum_failure ignore_system_indexes
ignore_invalid_pages allow_system_table_mods allow_in_place_tablespaces session_preload_libraries
local_preload_libraries dynamic_library_path compute_query_id row_security
""".split())

# Functions that reach outside SQL's data model: files, servers, settings, roles.
ADMIN_FUNCTIONS = frozenset("""
pg_read_file pg_read_binary_file pg_ls_dir pg_stat_file pg_ls_logdir pg_ls_waldir pg_ls_tmpdir
pg_ls_archive_statusdir pg_file_write pg_file_rename pg_file_unlink pg_logdir_ls dblink dblink_exec
dblink_connect dblink_connect_u dblink_send_query dblink_open dblink_fetch set_config pg_terminate_backend
pg_cancel_backend pg_reload_conf pg_rotate_logfile pg_switch_wal pg_create_restore_point pg_start_backup
pg_stop_backup pg_backup_start pg_backup_stop pg_promote pg_create_logical_replication_slot
pg_create_physical_replication_slot pg_drop_replication_slot pg_logical_slot_get_changes
pg_logical_emit_message pg_advisory_lock pg_advisory_xact_lock pg_import_system_collations
""".split())


@attrs.frozen
class Classified:
    units: tuple  # of Unit
    relations: frozenset  # "schema.name" of every relation named (any class)
    column_names: frozenset  # every column name referenced (lower-case)
    whole_row: bool  # a whole-row reference, a star below the top, or a cursor FETCH
    unqualified: bool  # some relation name had no schema
    statements: tuple  # one top-level statement kind per statement ("SelectStmt", ...)
    copy_out: bool  # COPY ... TO STDOUT
    fetch: bool
    prepares: tuple = ()  # (name, units, bare function names) of PREPARE statements
    executes: tuple = ()  # names of EXECUTE statements
    deallocates: tuple = ()  # names of DEALLOCATE (None: all, DISCARD too)
    declares: tuple = ()  # names of cursors DECLAREd
    sets_search_path: bool = False
    bare_functions: frozenset = frozenset()  # unqualified names judged side-effect free
    dotted: frozenset = frozenset()  # last names of "a.b" column references: b may be a function of a

    @property
    def classes(self) -> frozenset:
        return frozenset(u.kind for u in self.units)


class _Walk:
    def __init__(self):
        self.units: dict = {}
        self.relations: set = set()
        self.columns: set = set()
        self.aliases: set = set()
        self.whole_row = False
        self.unqualified = False
        self.copy_out = False
        self.fetch = False
        self.prepares = []
        self.executes = []
        self.deallocates = []
        self.declares = []
        self.sets_search_path = False
        self.pending_lone = []
        self.bare_functions = set()
        self.dotted = set()

    def add(self, cls, table=None):
        if table is None and cls in ("admin", "ddl"):
            table = ANY_OBJECT
        self.units.setdefault(Unit(cls, table), None)

    def rel(self, rv: ast.RangeVar, ctes=frozenset(), cls="read"):
        schema = rv.schemaname
        name = rv.relname
        if schema is None:
            if name in ctes:
                return None
            self.unqualified = True
            schema = "pg_catalog" if name.startswith("pg_") else "public"
        table = f"{schema}.{name}"
        self.relations.add(table)
        if rv.alias is not None:
            self.aliases.add(rv.alias.aliasname)
            self.on_Alias(rv.alias, ctes, False)
        self.aliases.add(name)
        self.add(cls, table)
        return table

    # The generic walk: every node, every field.
    def node(self, n, ctes=frozenset(), top=False):
        if n is None:
            return
        if isinstance(n, (list, tuple)):
            for x in n:
                self.node(x, ctes)
            return
        if not isinstance(n, ast.Node):
            return
        handler = getattr(self, "on_" + type(n).__name__, None)
        if handler is not None:
            if handler(n, ctes, top) is not False:
                return
        self.children(n, ctes)

    def children(self, n, ctes, skip=()):
        for name in type(n).__slots__:
            if name in skip:
                continue
            v = getattr(n, name, None)
            if isinstance(v, (ast.Node, list, tuple)):
                self.node(v, ctes)

    def _with(self, n, ctes):
        w = getattr(n, "withClause", None)
        if w is None:
            return ctes
        names = frozenset(c.ctename for c in w.ctes or ())
        ctes = ctes | names
        self.node(w.ctes, ctes)
        return ctes

    # --- statements ------------------------------------------------------
    def on_SelectStmt(self, n, ctes, top):
        ctes = self._with(n, ctes)
        if n.lockingClause:
            # FOR UPDATE/SHARE takes row locks: a write on what it reads.
            for rv in _range_vars(n.fromClause):
                self.rel(rv, ctes, "write")
        if n.intoClause is not None:
            self.add("ddl", self.rel(n.intoClause.rel, frozenset(), "ddl"))
        if top:
            # A star in the outer target list yields columns with an origin.
            for t in n.targetList or ():
                v = t.val
                if isinstance(v, ast.ColumnRef):
                    self.column_ref(v, star_ok=True)
                else:
                    self.node(v, ctes)
            self.children(n, ctes, skip=("withClause", "targetList", "intoClause", "larg", "rarg"))
            self.node(n.larg, ctes)
            self.node(n.rarg, ctes)
            return True
        self.children(n, ctes, skip=("withClause", "intoClause"))
        return True

    def _dml(self, n, ctes):
        ctes = self._with(n, ctes)
        self.rel(n.relation, ctes, "write")
        self.children(n, ctes, skip=("withClause", "relation"))
        return True

    def on_InsertStmt(self, n, ctes, top):
        return self._dml(n, ctes)

    def on_UpdateStmt(self, n, ctes, top):
        return self._dml(n, ctes)

    def on_DeleteStmt(self, n, ctes, top):
        return self._dml(n, ctes)

    def on_MergeStmt(self, n, ctes, top):
        return self._dml(n, ctes)

    def on_RangeVar(self, n, ctes, top):
        self.rel(n, ctes, "read")
        return True

    def on_ExplainStmt(self, n, ctes, top):
        # Judged as what it explains: EXPLAIN ANALYZE runs it; even a plain
        # EXPLAIN of a write asks about a write.
        self.node(n.query, ctes, top=False)
        return True

    def on_CopyStmt(self, n, ctes, top):
        if n.filename is not None or n.is_program:
            self.add("admin")  # server files and programs
        if n.relation is not None:
            self.rel(n.relation, ctes, "write" if n.is_from else "read")
        if n.query is not None:
            self.node(n.query, ctes)
        if not n.is_from and n.filename is None:
            self.copy_out = True
        return True

    def on_PrepareStmt(self, n, ctes, top):
        sub = _Walk()
        sub.node(n.query, ctes, top=True)
        self.merge(sub)
        self.prepares.append((n.name, tuple(sub.units), frozenset(sub.bare_functions | sub.dotted)))
        return True

    def on_ExecuteStmt(self, n, ctes, top):
        self.executes.append(n.name)
        self.node(n.params, ctes)
        return True

    def on_DeclareCursorStmt(self, n, ctes, top):
        self.declares.append(n.portalname)
        self.node(n.query, ctes, top=False)
        if n.options & 0x0020:  # CURSOR_OPT_HOLD survives the transaction: still a read
            pass
        return True

    def on_FetchStmt(self, n, ctes, top):
        self.fetch = True
        self.whole_row = True  # we cannot see what the cursor reads here
        self.add("read")
        return True

    def on_ClosePortalStmt(self, n, ctes, top):
        self.add("read")
        return True

    def on_VariableSetStmt(self, n, ctes, top):
        if n.kind == VariableSetKind.VAR_RESET_ALL:
            self.add("admin")
            self.sets_search_path = True
        else:
            self.setting((n.name or "").lower())
        return True

    def on_VariableShowStmt(self, n, ctes, top):
        self.add("read")
        return True

    def on_TransactionStmt(self, n, ctes, top):
        self.add("read")
        return True

    def on_DeallocateStmt(self, n, ctes, top):
        self.deallocates.append(n.name)
        self.add("read")
        return True

    def on_DiscardStmt(self, n, ctes, top):
        self.add("admin")  # DISCARD ALL resets role and search path
        self.deallocates.append(None)
        self.sets_search_path = True
        return True

    def on_ListenStmt(self, n, ctes, top):
        self.add("read")
        return True

    def on_UnlistenStmt(self, n, ctes, top):
        self.add("read")
        return True

    def on_NotifyStmt(self, n, ctes, top):
        self.add("write")
        return True

    def on_LockStmt(self, n, ctes, top):
        for rv in n.relations or ():
            self.rel(rv, ctes, "write")
        return True

    def on_TruncateStmt(self, n, ctes, top):
        for rv in n.relations or ():
            self.rel(rv, ctes, "write")
        return True

    def on_CallStmt(self, n, ctes, top):
        # A procedure is a function: a write on it, as for a function call.
        self.node(n.funccall, ctes)
        return True

    def on_DoStmt(self, n, ctes, top):
        self.add("admin")
        return True

    def setting(self, name: str):
        """SET name, or set_config('name', ...): admin if the setting is."""
        if name in ADMIN_SETTINGS or name.startswith(("log_", "debug_", "track_")) or "." in name:
            self.add("admin")
            if name == "search_path":
                self.sets_search_path = True
        else:
            self.add("read")

    # --- expressions -----------------------------------------------------
    def on_FuncCall(self, n, ctes, top):
        name = n.funcname[-1].sval.lower() if n.funcname else ""
        if name == "set_config" and (len(n.funcname) == 1 or n.funcname[0].sval == "pg_catalog") \
                and n.args and isinstance(n.args[0], ast.A_Const) and isinstance(n.args[0].val, ast.String):
            # What drivers send (asyncpg turns jit off): the same as SET of that
            # name. The name is a constant, so _shape does not cache these.
            self.setting(n.args[0].val.sval.lower())
            if len(n.funcname) == 1:
                self.bare_functions.add(name)  # a public.set_config would be chosen instead
            return False
        if name in ADMIN_FUNCTIONS or name.startswith(("lo_", "dblink", "pg_ls_", "pg_read_")):
            self.add("admin")
        elif (name in SAFE_FUNCTIONS or name.startswith(SAFE_PREFIXES) or name.endswith("_is_visible")) \
                and (len(n.funcname) == 1 or n.funcname[0].sval == "pg_catalog"):
            if len(n.funcname) == 1:
                # A function of that name outside pg_catalog could be chosen
                # instead: the session checks these against the upstream catalog.
                self.bare_functions.add(name)
        else:
            # nextval, setval and any function we cannot vouch for may write:
            # a write on the function itself, so a rule for one table never covers it.
            schema = n.funcname[0].sval.lower() if len(n.funcname) > 1 else "public"
            self.add("write", f"{schema}.{name}()")
        return False  # and walk the arguments

    def on_Alias(self, n, ctes, top):
        # A join's, a subquery's or a function's alias names a row too ("SELECT j FROM (a JOIN b ...) j").
        self.aliases.add(n.aliasname)
        if n.colnames:
            # "customers AS c(i, n, x)": x is a masked column under a name we
            # cannot tell from the SQL; count it as a whole-row reference.
            self.whole_row = True
        return True

    def on_ColumnRef(self, n, ctes, top):
        self.column_ref(n)
        return True

    def column_ref(self, n, star_ok=False):
        fields = n.fields or ()
        names = [f.sval.lower() for f in fields if isinstance(f, ast.String)]
        if any(isinstance(f, ast.A_Star) for f in fields):
            if not star_ok:
                self.whole_row = True
        elif len(names) == 1:
            # A lone name may be a whole row ("SELECT c FROM customers c").
            self.pending_lone.append(names[0])
        else:
            self.dotted.add(names[-1])
            if names[-1] in ROW_FUNCTIONS:
                self.whole_row = True
        self.columns.update(names)

    def merge(self, other: "_Walk"):
        for u in other.units:
            self.units.setdefault(u, None)
        self.relations |= other.relations
        self.columns |= other.columns
        self.aliases |= other.aliases
        self.whole_row |= other.whole_row
        self.unqualified |= other.unqualified
        self.copy_out |= other.copy_out
        self.pending_lone.extend(other.pending_lone)
        self.bare_functions |= other.bare_functions
        self.dotted |= other.dotted
        # CREATE TABLE AS EXECUTE, EXPLAIN ANALYZE EXECUTE: what it runs counts.
        self.executes.extend(other.executes)
        self.prepares.extend(other.prepares)
        self.deallocates.extend(other.deallocates)
        self.declares.extend(other.declares)
        self.fetch |= other.fetch
        self.sets_search_path |= other.sets_search_path


_STATEMENT_CLASS = {
    # DDL: changes the schema.
    **{k: "ddl" for k in (
        "CreateStmt", "AlterTableStmt", "DropStmt", "IndexStmt", "ViewStmt", "CreateTableAsStmt",
        "RenameStmt", "CommentStmt", "CreateSeqStmt", "AlterSeqStmt", "CreateFunctionStmt",
        "AlterFunctionStmt", "CreateTrigStmt", "RuleStmt", "CreateSchemaStmt", "CompositeTypeStmt",
        "CreateEnumStmt", "AlterEnumStmt", "CreateDomainStmt", "AlterDomainStmt", "DefineStmt",
        "CreateCastStmt", "AlterObjectSchemaStmt", "AlterOwnerStmt", "CreateStatsStmt",
        "RefreshMatViewStmt", "CreatePolicyStmt", "AlterPolicyStmt", "CreateRangeStmt",
        "AlterDefaultPrivilegesStmt", "SecLabelStmt")},
}


# Statements whose object is the relation they name (a RangeVar): the units of
# those relations say what they touch.
_ON_RELATIONS = {"CreateStmt", "AlterTableStmt", "IndexStmt", "ViewStmt", "CreateTableAsStmt", "CreateSeqStmt",
                 "AlterSeqStmt", "CreateTrigStmt", "RuleStmt", "RefreshMatViewStmt", "CreatePolicyStmt",
                 "AlterPolicyStmt", "CreateStatsStmt", "RenameStmt", "AlterObjectSchemaStmt", "GrantStmt",
                 "VacuumStmt", "ClusterStmt", "ReindexStmt"}


def _qualified(names, suffix=""):
    names = [x.sval for x in names if isinstance(x, ast.String)]
    if not names or len(names) > 2:
        return None
    if len(names) == 1:
        names = ["pg_catalog" if names[0].startswith("pg_") and not suffix else "public"] + names
    return ".".join(names) + suffix


_RELATION_OBJECTS = {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_INDEX", "OBJECT_SEQUENCE",
                     "OBJECT_FOREIGN_TABLE"}
_ROUTINE_OBJECTS = {"OBJECT_FUNCTION", "OBJECT_PROCEDURE", "OBJECT_ROUTINE", "OBJECT_AGGREGATE"}


def _named_objects(s):
    """The tables and functions a DROP or CREATE FUNCTION is about, or None if
    the statement is not one of those or names something else."""
    if isinstance(s, ast.DropStmt):
        kind = getattr(s.removeType, "name", str(s.removeType))
        out = []
        for obj in s.objects or ():
            if kind in _RELATION_OBJECTS and isinstance(obj, (list, tuple)):
                q = _qualified(obj)
            elif kind in _ROUTINE_OBJECTS and isinstance(obj, ast.ObjectWithArgs):
                q = _qualified(obj.objname, "()")
            else:
                q = None
            if q is None:
                return None
            out.append(q)
        return out
    if isinstance(s, ast.CreateFunctionStmt):
        q = _qualified(s.funcname, "()")
        return None if q is None else [q]
    return None


def _range_vars(n):
    out = []

    def walk(x):
        if isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif isinstance(x, ast.RangeVar):
            out.append(x)
        elif isinstance(x, ast.JoinExpr):
            walk(x.larg)
            walk(x.rarg)
    walk(n)
    return out


_HANDLED = {"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "ExplainStmt", "CopyStmt",
            "PrepareStmt", "ExecuteStmt", "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt",
            "VariableSetStmt", "VariableShowStmt", "TransactionStmt", "DeallocateStmt", "DiscardStmt",
            "ListenStmt", "UnlistenStmt", "NotifyStmt", "LockStmt", "TruncateStmt", "CallStmt", "DoStmt"}


# Tokens whose value never changes what a statement does to the classifier: it
# reads names and structure, never a constant's value. (U&'...' stays: its
# UESCAPE clause is read by the parser.)
_CONSTANTS = frozenset(("SCONST", "ICONST", "FCONST", "BCONST", "XCONST"))
_COMMENTS = frozenset(("SQL_COMMENT", "C_COMMENT"))
_SHAPES: dict = {}
_SHAPES_MAX = 4096
_SHAPE_MAX_SQL = 16384  # longer SQL is rare, and classified on a thread: not cached


# Functions whose classification reads a constant argument: never cached by shape.
_READS_CONSTANTS = frozenset(("set_config", '"set_config"'))


def _shape(sql: str):
    """The statement with its constants' values left out (``aid = 1`` and
    ``aid = 2`` share one), or None if it does not scan or its class depends
    on a constant."""
    try:
        tokens = scan(sql)
    except ParseError:
        return None
    if any(t.name == "UIDENT" for t in tokens):
        return None  # U&"..." could spell one of them
    key = tuple(t.name if t.name in _CONSTANTS else sql[t.start:t.end + 1]
                for t in tokens if t.name not in _COMMENTS)
    if any(k.lower() in _READS_CONSTANTS for k in key):
        return None
    return key


def classify(sql: str) -> Classified:
    """Classified, cached by shape: statements that differ only in constants
    (what a driver or pgbench sends in a loop) are parsed once. A miss parses
    the statement itself, never a stand-in, so a constant that makes the
    parser fail is still reported."""
    key = _shape(sql) if len(sql) <= _SHAPE_MAX_SQL else None
    if key is None:
        return _classify(sql)
    c = _SHAPES.get(key)
    if c is None:
        c = _classify(sql)
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.pop(next(iter(_SHAPES)))  # oldest first; a dict keeps insertion order
        _SHAPES[key] = c
    return c


def _classify(sql: str) -> Classified:
    try:
        stmts = parse_sql(sql)
    except ParseError as e:
        raise ClassifyError(str(e.args[0]) if e.args else str(e))
    w = _Walk()
    kinds = []
    for raw in stmts:
        s = raw.stmt
        kind = type(s).__name__
        kinds.append(kind)
        if kind in _HANDLED:
            w.node(s, top=True)
        else:
            cls = _STATEMENT_CLASS.get(kind, "admin")
            sub = _Walk()
            sub.children(s, frozenset())
            # Tables named by a DDL statement are DDL on those tables; its
            # embedded queries (CREATE TABLE AS, views) also read.
            units = list(sub.units)
            sub.units = {}
            for u in units:
                sub.add(cls if u.kind == "read" else u.kind, u.subject)
            named = _named_objects(s)
            for subject in named or ():
                sub.add(cls, subject)
            w.merge(sub)
            if named is None and (kind not in _ON_RELATIONS
                                  or not any(u.subject and u.subject != ANY_OBJECT for u in units)):
                w.add(cls)  # about no table we can name: (any object)
            else:
                w.units.setdefault(Unit(cls, None), None)
    if not w.units and kinds:
        w.add("read")  # SELECT 1, SELECT now(): reads nothing, still a read
    whole = w.whole_row or any(name in w.aliases for name in w.pending_lone)
    return Classified(
        units=tuple(w.units), relations=frozenset(w.relations), column_names=frozenset(w.columns),
        whole_row=whole, unqualified=w.unqualified, statements=tuple(kinds), copy_out=w.copy_out,
        fetch=w.fetch, prepares=tuple(w.prepares), executes=tuple(w.executes),
        deallocates=tuple(w.deallocates), declares=tuple(w.declares),
        sets_search_path=w.sets_search_path, bare_functions=frozenset(w.bare_functions),
        dotted=frozenset(w.dotted))


def table_units(units) -> tuple:
    return tuple(units)


__all__ = ["classify", "Classified", "ClassifyError", "pg_table_unit"]
