"""What calling a function does: hoopy's reviewed catalogue of PostgreSQL's functions.

A function is judged by what it is, never by a prefix of its name:

- ``PURE``: built-ins that compute from their arguments, read the catalog or
  this session's own state. A call of one is part of a read (no unit of its own).
- ``EXPOSING``: built-ins (and a few well-known extension functions, in any
  schema) that show other sessions' activity, server files or statistics
  samples, or read tables or run SQL they are given as text. ``admin`` on the
  function itself (``admin pg_catalog.pg_stat_get_activity()``): only a rule that
  names it (or a rule without tables: ``admin``, ``all``) allows it.
- ``ADMIN_ACTIONS``: built-ins that act on the server or on other sessions
  (terminate a backend, reload the configuration, replication, large objects).
  ``admin`` on the function, as above.
- ``ADVISORY_LOCKS``: take an advisory lock: ``lock`` (no table). Releasing one's
  own advisory locks (``ADVISORY_UNLOCKS``) needs no rule: it is a read.
- ``WRITES``: ``nextval``/``setval`` change a sequence: ``write`` on the function.
- Anything else (a user function, a built-in added by a later release and not
  yet reviewed) is ``write`` on the function: a rule for a table never covers it.
"""
from __future__ import annotations

from hoopy.policy.rules import Unit
from hoopy.postgres.names import object_name
from hoopy.postgres.builtin_names import NAMES as _STABLE_BUILTINS

CATALOG = "pg_catalog"

# Other sessions' activity: what they run, wait for, lock; their prepared
# transactions and commit times; server memory.
_ACTIVITY = """
pg_stat_get_activity pg_stat_get_backend_activity pg_stat_get_backend_activity_start
pg_stat_get_backend_client_addr pg_stat_get_backend_client_port pg_stat_get_backend_dbid
pg_stat_get_backend_idset pg_stat_get_backend_pid pg_stat_get_backend_start pg_stat_get_backend_subxact
pg_stat_get_backend_userid pg_stat_get_backend_wait_event pg_stat_get_backend_wait_event_type
pg_stat_get_backend_xact_start pg_stat_get_backend_io pg_stat_get_backend_wal pg_stat_get_progress_info
pg_stat_get_wal_senders pg_stat_get_wal_receiver pg_stat_get_subscription pg_lock_status pg_blocking_pids
pg_safe_snapshot_blocking_pids pg_isolation_test_session_is_blocked pg_prepared_xact pg_get_multixact_members
pg_last_committed_xact pg_xact_commit_timestamp pg_xact_commit_timestamp_origin pg_get_backend_memory_contexts
pg_get_shmem_allocations pg_get_shmem_allocations_numa pg_stat_statements pg_stat_statements_info
"""
# Server files: read, list, stat; the configuration files; the control file; build paths.
_FILES = """
pg_read_file pg_read_file_old pg_read_binary_file pg_stat_file pg_ls_dir pg_ls_logdir pg_ls_waldir pg_ls_tmpdir
pg_ls_archive_statusdir pg_ls_logicalsnapdir pg_ls_logicalmapdir pg_ls_replslotdir pg_ls_summariesdir
pg_current_logfile pg_hba_file_rules pg_ident_file_mappings pg_show_all_file_settings pg_config
pg_control_checkpoint pg_control_system pg_control_init pg_control_recovery pg_get_loaded_modules
pg_file_write pg_file_rename pg_file_unlink pg_file_sync pg_logdir_ls
get_raw_page heap_page_items heap_page_item_attrs bt_page_items page_header
"""
# Statistics samples: the most common values of a column.
_SAMPLES = """
pg_mcv_list_items
"""
# Read a table, a schema or the database given by name or OID, or run SQL given as text.
_EXECUTES = """
query_to_xml query_to_xmlschema query_to_xml_and_xmlschema cursor_to_xml cursor_to_xmlschema
table_to_xml table_to_xmlschema table_to_xml_and_xmlschema schema_to_xml schema_to_xmlschema
schema_to_xml_and_xmlschema database_to_xml database_to_xmlschema database_to_xml_and_xmlschema
ts_stat ts_rewrite currtid2 dblink dblink_exec dblink_open dblink_fetch dblink_send_query dblink_get_result
dblink_connect dblink_connect_u dblink_disconnect dblink_close dblink_build_sql_insert dblink_build_sql_update
dblink_build_sql_delete dblink_get_connections dblink_is_busy dblink_cancel_query dblink_error_message
dblink_get_notify dblink_get_pkey
"""
# Load code into the server (a validator looks up a C symbol: dlopen).
_LOADS = """
fmgr_c_validator fmgr_internal_validator fmgr_sql_validator plpgsql_validator postgresql_fdw_validator
"""

EXPOSING = frozenset((_ACTIVITY + _FILES + _SAMPLES + _EXECUTES + _LOADS).split())

# Act on the server, on other sessions, on replication; large objects (data no
# table grant covers).
ADMIN_ACTIONS = frozenset("""
pg_terminate_backend pg_cancel_backend pg_reload_conf pg_rotate_logfile pg_rotate_logfile_old pg_switch_wal
pg_create_restore_point pg_start_backup pg_stop_backup pg_backup_start pg_backup_stop pg_promote
pg_wal_replay_pause pg_wal_replay_resume pg_create_logical_replication_slot pg_create_physical_replication_slot
pg_copy_logical_replication_slot pg_copy_physical_replication_slot pg_drop_replication_slot
pg_replication_slot_advance pg_logical_slot_get_changes pg_logical_slot_get_binary_changes
pg_logical_slot_peek_changes pg_logical_slot_peek_binary_changes pg_logical_emit_message
pg_sync_replication_slots pg_replication_origin_advance pg_replication_origin_create
pg_replication_origin_drop pg_replication_origin_progress pg_replication_origin_session_reset
pg_replication_origin_session_setup pg_replication_origin_xact_reset pg_replication_origin_xact_setup
pg_show_replication_origin_status pg_import_system_collations pg_stat_reset pg_stat_reset_shared
pg_stat_reset_single_table_counters pg_stat_reset_single_function_counters pg_stat_reset_slru
pg_stat_reset_replication_slot pg_stat_reset_subscription_stats pg_stat_reset_backend_stats
pg_log_backend_memory_contexts pg_nextoid pg_stop_making_pinned_objects pg_extension_config_dump
brin_summarize_new_values brin_summarize_range brin_desummarize_range gin_clean_pending_list
pg_restore_relation_stats pg_restore_attribute_stats pg_clear_relation_stats pg_clear_attribute_stats
lo_import lo_export lo_creat lo_create lo_open lo_close loread lowrite lo_lseek lo_lseek64 lo_tell lo_tell64
lo_truncate lo_truncate64 lo_unlink lo_get lo_put lo_from_bytea
binary_upgrade_create_empty_extension binary_upgrade_set_missing_value binary_upgrade_set_record_init_privs
""".split())

ADVISORY_LOCKS = frozenset("""
pg_advisory_lock pg_advisory_lock_shared pg_advisory_xact_lock pg_advisory_xact_lock_shared
pg_try_advisory_lock pg_try_advisory_lock_shared pg_try_advisory_xact_lock pg_try_advisory_xact_lock_shared
""".split())
# A session can release only its own advisory locks: back to its start state.
ADVISORY_UNLOCKS = frozenset("pg_advisory_unlock pg_advisory_unlock_shared pg_advisory_unlock_all".split())

WRITES = frozenset("nextval setval".split())
# Functions behind a catalog view, judged as a read of that view.
VIEW_FUNCTIONS = {"pg_show_all_settings": "pg_settings"}
NOTIFY = frozenset(("pg_notify",))  # as NOTIFY: write (no table)
SETTINGS = frozenset(("set_config",))  # judged as SET of the name (hoopy.postgres.gucs)

# VOLATILE built-ins reviewed one by one as reads: time, randomness, sleeping, this
# session's sequences and snapshot, sizes, the server's recovery and WAL position.
_VOLATILE_READS = frozenset("""
clock_timestamp timeofday random random_normal setseed gen_random_uuid uuidv4 uuidv7 pg_sleep pg_sleep_for
pg_sleep_until currval lastval current_query txid_current txid_status pg_xact_status pg_export_snapshot
pg_jit_available pg_is_in_recovery pg_is_wal_replay_paused pg_get_wal_replay_pause_state
pg_last_wal_receive_lsn pg_last_wal_replay_lsn pg_last_xact_replay_timestamp pg_current_wal_lsn
pg_current_wal_insert_lsn pg_current_wal_flush_lsn pg_relation_size pg_table_size pg_indexes_size
pg_total_relation_size pg_database_size pg_tablespace_size pg_partition_tree pg_partition_ancestors
pg_collation_actual_version pg_database_collation_actual_version pg_notification_queue_usage
pg_stat_get_xact_blocks_fetched pg_stat_get_xact_blocks_hit pg_stat_get_xact_function_calls
pg_stat_get_xact_function_self_time pg_stat_get_xact_function_total_time pg_stat_get_xact_numscans
pg_stat_get_xact_tuples_deleted pg_stat_get_xact_tuples_fetched pg_stat_get_xact_tuples_hot_updated
pg_stat_get_xact_tuples_inserted pg_stat_get_xact_tuples_returned pg_stat_get_xact_tuples_updated
pg_stat_have_stats pg_stat_clear_snapshot pg_stat_force_next_flush pg_sequence_last_value
pg_get_wal_resource_managers pg_replication_origin_session_is_setup
""".split())

# Built-ins of later releases, reviewed as reads (computation or catalog reads).
_NEWER_READS = frozenset("""
any_value system_user array_sample array_shuffle pg_input_is_valid pg_input_error_info erf erfc gamma lgamma
to_bin to_oct trim_array unistr bit_count date_add date_subtract pg_basetype uuid_extract_timestamp
uuid_extract_version crc32 crc32c casefold array_reverse array_sort pg_get_acl has_largeobject_privilege
json_scalar json_serialize pg_column_toast_chunk_id extract similar_to_escape
""".split())

# information_schema's helper functions (IMMUTABLE SQL functions): what JDBC's
# metadata queries call.
INFORMATION_SCHEMA_PURE = frozenset("""
_pg_char_max_length _pg_char_octet_length _pg_datetime_precision _pg_expandarray _pg_index_position
_pg_interval_type _pg_numeric_precision _pg_numeric_precision_radix _pg_numeric_scale _pg_truetypid
_pg_truetypmod
""".split())

PURE = (_STABLE_BUILTINS | _VOLATILE_READS | _NEWER_READS) - EXPOSING - ADMIN_ACTIONS - ADVISORY_LOCKS \
    - WRITES - NOTIFY - SETTINGS - set(VIEW_FUNCTIONS)

# Built-ins callable with one row argument: "c.to_jsonb" is to_jsonb(c), a whole row
# (functional notation, which reads like a column reference).
ROW_FUNCTIONS = frozenset("""
any_out anycompatible_out anycompatiblenonarray_out anyelement_out anynonarray_out array_agg concat count
cume_dist dense_rank first_value hash_record json_agg json_build_array json_build_object jsonb_agg
jsonb_build_array jsonb_build_object lag last_value lead mode num_nonnulls num_nulls percent_rank
pg_collation_for pg_column_compression pg_column_size pg_typeof quote_literal quote_nullable rank
record_out record_send row_to_json to_json to_jsonb hstore to_tsvector json_populate_record
""".split())


# pg_catalog's operator names (PostgreSQL 15): an operator of any other name is
# user-defined.
BUILTIN_OPERATORS = frozenset("""
!! !~ !~* !~~ !~~* # ## #- #> #>> % & && &< &<| &> * *< *<= *<> *= *> *>= + - -> ->> -|- / < <-> << <<= <<|
<= <> <@ <^ = > >= >> >>= >^ ? ?# ?& ?- ?-| ?| ?|| @ @-@ @> @? @@ @@@ ^ ^@ | |&> |/ |>> || ||/ ~ ~* ~<=~ ~<~
~= ~>=~ ~>~ ~~ ~~* != ^@
""".split())


def subject(schema: str, name: str) -> str:
    return object_name(schema, name) + "()"


# Extension functions named above (they live in whatever schema they were installed in).
EXTENSIONS = frozenset("""
pg_stat_statements pg_stat_statements_info pg_file_write pg_file_rename pg_file_unlink pg_file_sync
pg_logdir_ls get_raw_page heap_page_items heap_page_item_attrs bt_page_items page_header
""".split()) | frozenset(n for n in EXPOSING if n.startswith("dblink"))
KNOWN = (PURE | EXPOSING | ADMIN_ACTIONS | ADVISORY_LOCKS | ADVISORY_UNLOCKS | WRITES | NOTIFY | SETTINGS
         | set(VIEW_FUNCTIONS)) \
    - EXTENSIONS


def is_builtin(name: str) -> bool:
    """A name hoopy knows as one of pg_catalog's functions."""
    return name in KNOWN


def call_unit(schema: str, name: str) -> Unit | None:
    """The unit a call of schema.name() adds, or None when it is part of a read."""
    if schema == CATALOG:
        if name in PURE or name in ADVISORY_UNLOCKS or name in SETTINGS:
            return None
        if name in EXPOSING or name in ADMIN_ACTIONS:
            return Unit("admin", subject(schema, name))
        if name in ADVISORY_LOCKS:
            return Unit("lock")
        if name in VIEW_FUNCTIONS:
            return Unit("read", f"{CATALOG}.{VIEW_FUNCTIONS[name]}")
        if name in NOTIFY:
            return Unit("write")
        return Unit("write", subject(schema, name))
    if schema == "information_schema" and name in INFORMATION_SCHEMA_PURE:
        return None
    if name in EXPOSING:
        # dblink, adminpack, pageinspect, pg_stat_statements: whatever schema they are in.
        return Unit("admin", subject(schema, name))
    return Unit("write", subject(schema, name))


# Catalog views showing what EXPOSING's functions show: other sessions' activity
# and locks, server files and configuration, memory, statistics samples, password
# hashes, large object data. Like those functions, covered only by a rule that
# names them.
SENSITIVE_CATALOG_VIEWS = frozenset("""
pg_stat_activity pg_locks pg_prepared_xacts pg_stat_replication pg_stat_wal_receiver pg_stat_subscription
pg_stat_ssl pg_stat_gssapi pg_stat_progress_analyze pg_stat_progress_basebackup pg_stat_progress_cluster
pg_stat_progress_copy pg_stat_progress_create_index pg_stat_progress_vacuum pg_hba_file_rules
pg_ident_file_mappings pg_file_settings pg_config pg_backend_memory_contexts pg_shmem_allocations
pg_shmem_allocations_numa pg_stats pg_stats_ext pg_stats_ext_exprs pg_statistic pg_statistic_ext_data
pg_authid pg_shadow pg_user_mapping pg_user_mappings pg_largeobject pg_replication_origin_status
pg_aios
""".split())
# Extension views of the same kind, in whatever schema they are installed.
SENSITIVE_ANY_SCHEMA_VIEWS = frozenset("pg_stat_statements pg_stat_statements_info".split())


def named_only_subject(subject: str) -> bool:
    """A unit's subject that only a rule naming it (no glob) covers."""
    import re

    func = subject.endswith("()")
    parts = re.findall(r'"(?:[^"]|"")+"|[^."]+', subject[:-2] if func else subject)
    if len(parts) != 2:
        return False
    schema, name = (p[1:-1].replace('""', '"') if p.startswith('"') else p for p in parts)
    if func:
        return name in EXPOSING or (schema == CATALOG and name in ADMIN_ACTIONS)
    return (schema == CATALOG and name in SENSITIVE_CATALOG_VIEWS) or name in SENSITIVE_ANY_SCHEMA_VIEWS
