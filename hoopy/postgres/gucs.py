"""What SET / RESET / set_config of a setting does, for the policy.

Most settings are a session's own business (``read``). Those that change who
the session is, how the server reads SQL, what it logs or checks, or what code
it loads are ``admin``. ``search_path`` is ``read``: the gateway reads the new
path from the upstream before it judges another name. RESET of anything
returns the session to its start state: ``read``.
"""
from __future__ import annotations

import re

ADMIN_SETTINGS = frozenset("""
role session_authorization session_replication_role standard_conforming_strings backslash_quote lc_messages
zero_damaged_pages ignore_checksum_failure ignore_system_indexes ignore_invalid_pages allow_system_table_mods
allow_in_place_tablespaces session_preload_libraries local_preload_libraries dynamic_library_path
compute_query_id event_triggers allow_alter_system
""".split())
ADMIN_PREFIXES = ("log_", "debug_", "track_")

# Settings PostgreSQL shows only to superusers and members of pg_read_all_settings
# (GUC_SUPERUSER_ONLY: server paths, the replication connection string with its
# password, the SSL passphrase command, what libraries load): server configuration,
# as pg_file_settings is. The upstream user may be a superuser; the caller reads
# them only with a rule covering pg_catalog.pg_settings, whose rows hold them too.
# (PostgreSQL 15, probed as a plain role; later releases' additions by name.)
SUPERUSER_ONLY = frozenset("""
config_file data_directory dynamic_library_path extension_destdir external_pid_file hba_file ident_file
jit_provider krb_server_keyfile log_directory log_filename output_plugin_libraries primary_conninfo
session_preload_libraries shared_preload_libraries ssl_ciphers ssl_dh_params_file ssl_ecdh_curve
ssl_max_protocol_version ssl_min_protocol_version ssl_passphrase_command unix_socket_directories
ssl_groups ssl_tls13_ciphers oauth_validator_libraries extension_control_path
""".split())
SETTINGS_VIEW = ("pg_catalog", "pg_settings")  # what reading one of them is judged as

# Settings after whose change the gateway must read the search path again:
# the path itself, and who "$user" is.
PATH_SETTINGS = frozenset(("search_path", "role", "session_authorization"))


def is_utf8(value) -> bool:
    """An encoding name PostgreSQL takes as UTF8 (it ignores case and punctuation)."""
    return isinstance(value, str) and re.sub(r"[^a-z0-9]", "", value.lower()) in ("utf8", "unicode")


def set_class(name: str, value=None, reset: bool = False) -> str:
    """The class of SET name = value (value: the constant, or None if not one)."""
    if reset:
        return "read"
    if name == "client_encoding":
        return "read" if is_utf8(value) else "admin"
    if name in ADMIN_SETTINGS or name.startswith(ADMIN_PREFIXES) or "." in name:
        return "admin"
    return "read"
