"""What a client may ask for at startup, and what passes upstream.

The client's startup parameters and ``options`` carry hoopy's attribution
(``-c hoopy.model=...``) and ordinary settings; anything that would change who
the gateway is upstream, or how the server tokenizes SQL, is refused.
"""
from __future__ import annotations

# Client parameters never passed upstream: identity, database choice and
# anything that would change who we are or the protocol we speak.
PRIVATE_PARAMS = {"user", "database", "options", "replication"}
# Settings a client may pass at startup (as parameters or -c options). Any
# other would change who we are upstream (role, session_authorization) or how
# SQL is tokenized (standard_conforming_strings, client_encoding other than
# UTF-8), which would let a statement mean one thing to the gateway's parser
# and another to the server.
CLIENT_SETTINGS = {"application_name", "client_encoding", "datestyle", "timezone", "extra_float_digits",
                   "intervalstyle", "search_path", "statement_timeout", "lock_timeout",
                   "idle_in_transaction_session_timeout", "work_mem", "geqo", "lc_messages",
                   "lc_monetary", "lc_numeric", "lc_time", "jit", "default_transaction_isolation",
                   "default_transaction_read_only", "bytea_output", "fallback_application_name"}
# PostgreSQL matches encoding names ignoring case and anything not a letter or
# digit (utf_8, UTF-8, Unicode are all UTF8).
UTF8_NAMES = {"utf8", "unicode"}


def is_utf8_name(value: str) -> bool:
    return "".join(ch for ch in value.strip().strip("'\"").lower() if ch.isalnum()) in UTF8_NAMES


def ours(key: str) -> bool:
    """A startup parameter for hoopy (asyncpg's server_settings={"hoopy.model": ...})."""
    return key.lower().startswith("hoopy.")


def passes_upstream(key: str) -> bool:
    return key not in PRIVATE_PARAMS and not key.startswith("_pq_.") and not ours(key)


def attribution(params: dict, options: dict) -> dict:
    """hoopy.* values from startup parameters and -c options (options win)."""
    got = {k.lower()[6:]: v for k, v in params.items() if ours(k)}
    got.update(options)
    return got


def settings_problem(params: dict, option_words: list) -> str | None:
    """Why the client's startup settings cannot pass, or None."""
    pairs = [(k, v) for k, v in params.items() if passes_upstream(k)]
    if any(ch.isspace() and not ch.isascii() for ch in params.get("options", "")):
        # The server splits options at whitespace byte by byte, as its locale says: a
        # non-ASCII space escaped here could end a word there.
        return "startup options may not hold non-ASCII whitespace"
    words = list(option_words)
    while words:
        w = words.pop(0)
        if w != "-c" or not words:
            return f"startup option {w!r} is not allowed through hoopy"
        k, _, v = words.pop(0).partition("=")
        pairs.append((k, v))
    for k, v in pairs:
        key = setting_key(k)
        if key not in CLIENT_SETTINGS:
            return f"startup setting {k!r} is not allowed through hoopy"
        if key == "client_encoding" and not is_utf8_name(v):
            return "hoopy accepts only UTF8 as client_encoding"
    return None


def setting_key(name: str) -> str:
    """A setting's name as the server matches it: case-insensitive, '-' as '_'."""
    return name.strip().lower().replace("-", "_")


def lexing_unsafe(name: str, value: str) -> bool:
    """A server setting under which the gateway's parser may read SQL differently."""
    name = name.lower()
    if name == "standard_conforming_strings":
        return value.lower() != "on"
    if name == "client_encoding":
        return not is_utf8_name(value)
    return False


def parse_options(options: str) -> tuple[dict, list]:
    """``-c k=v`` / ``--k=v`` words (backslash escapes a space): hoopy.* for
    us, the rest for upstream."""
    words, cur, esc = [], [], False
    for ch in options:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch.isspace():
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        words.append("".join(cur))
    ours, rest = {}, []
    i = 0
    while i < len(words):
        w = words[i]
        kv = None
        if w == "-c" and i + 1 < len(words):
            kv = words[i + 1]
            i += 2
        elif w.startswith("-c"):
            kv = w[2:]
            i += 1
        elif w.startswith("--"):
            kv = w[2:]
            i += 1
        else:
            rest.append(w)
            i += 1
            continue
        k, _, v = kv.partition("=")
        if k.lower().startswith("hoopy."):
            ours[k.lower()[6:]] = v
        else:
            rest += ["-c", kv]
    return ours, rest


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_option(w: str) -> str:
    """One word of ``options`` as the server reads it back: pg_split_opts splits at
    every C whitespace character (space, tab, newline, CR, VT, FF) and a backslash
    keeps the next character in the word. Every such character is escaped, or a word
    the gateway checked as one setting would reach the server as several."""
    return "".join("\\" + ch if ch == "\\" or ch.isspace() else ch for ch in w)
