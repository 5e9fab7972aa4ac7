"""Session and approval rows as users see them (the admin API and the ``hoopy`` command)."""
from __future__ import annotations

from hoopy.audit.events import iso


def approval_json(row: dict) -> dict:
    out = {k: v for k, v in row.items() if not k.endswith("_us")}
    for k in ("created_us", "expires_us", "decided_us", "used_us"):
        out[k[:-3]] = iso(row.get(k))
    if row.get("mode") == "retry" and row.get("decided_us") and row.get("state") == "approved":
        out["usable_until"] = iso(row["decided_us"] + int(row.get("ttl_s") or 0) * 1_000_000)
    return out


def session_json(row: dict) -> dict:
    out = {k: v for k, v in row.items() if not k.endswith("_us")}
    out["start"] = iso(row.get("started_us"))
    out["end"] = iso(row.get("ended_us"))
    return out
