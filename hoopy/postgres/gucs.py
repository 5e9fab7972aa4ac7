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
