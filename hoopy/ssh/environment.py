"""Which environment variables may reach the upstream: for SSH ``env`` requests and for the
``NAME=VALUE`` assignments of a command line alike.

The command line is the operation judged, so nothing else may change what the host runs: an
upstream that accepts PATH, BASH_ENV, ENV, LD_PRELOAD, SHELLOPTS, PROMPT_COMMAND, BASH_FUNC_*,
PAGER, GIT_* ... (`AcceptEnv *`), or a command line that sets them (`env LD_PRELOAD=x ls`,
`BASH_ENV=x sh -c ...`), would run another program than the one granted. So only locale, time
zone and HOOPY_* names pass, with plain values.
"""
from __future__ import annotations

import re

LOCALE_NAMES = frozenset({"LANG", "LANGUAGE", "TZ", "COLORTERM"} | {f"LC_{n}" for n in (
    "ALL", "CTYPE", "COLLATE", "MESSAGES", "MONETARY", "NUMERIC", "TIME", "ADDRESS",
    "IDENTIFICATION", "MEASUREMENT", "NAME", "PAPER", "TELEPHONE")})
_PLAIN_NAME = re.compile(r"HOOPY_[A-Z0-9_]+")
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.,:@%+=/ -]*")
MAX_VALUE = 256


def passes(name: str, value: str) -> bool:
    """May NAME=VALUE go upstream?"""
    return ((name in LOCALE_NAMES or _PLAIN_NAME.fullmatch(name) is not None)
            and len(value) <= MAX_VALUE and _PLAIN_VALUE.fullmatch(value) is not None)


def upstream_env(env: dict) -> tuple[dict, list]:
    """(what may go upstream, the names dropped)."""
    passed, dropped = {}, []
    for name, value in env.items():
        if passes(name, value):
            passed[name] = value
        else:
            dropped.append(name)
    return passed, sorted(dropped)
