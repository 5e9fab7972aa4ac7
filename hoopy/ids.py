"""Random ids for sessions, approvals and events' references (a leaf: imported from anywhere)."""
from __future__ import annotations

import secrets


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_hex(8)
