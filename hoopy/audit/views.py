"""Session and approval rows as users see them (the admin API and the ``hoopy`` command)."""
from __future__ import annotations

from hoopy.audit.events import iso


def approval_json(row: dict) -> dict:
    out = {k: v for k, v in row.items() if not k.endswith("_us")}
    for k in ("created_us", "expires_us", "decided_us"):
        out[k[:-3]] = iso(row.get(k))
    return out


def session_json(row: dict) -> dict:
    out = {k: v for k, v in row.items() if not k.endswith("_us")}
    out["start"] = iso(row.get("started_us"))
    out["end"] = iso(row.get("ended_us"))
    return out
