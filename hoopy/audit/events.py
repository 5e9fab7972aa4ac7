"""Audit events: what happened, when, where, who, and the outcome (NIST AU-3)."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import NamedTuple

import attrs


# slots=False: attrs then fills a frozen instance's __dict__ directly, where a slotted frozen
# class calls object.__setattr__ once a field (one event a statement, two with its outcome).
@attrs.frozen(slots=False)
class Event:
    kind: str  # session.start, operation, approval.decided, redaction, recording.sealed, ...
    outcome: str | None = None  # allowed, refused, held, approved, denied, expired, ok, error, ...
    session: str | None = None
    identity: str | None = None
    connection: str | None = None
    protocol: str | None = None
    peer: str | None = None
    data: dict = attrs.field(factory=dict)
    time_us: int = attrs.field(factory=lambda: time.time_ns() // 1000)


class StoredEvent(NamedTuple):
    """An event as the store linked it (what ``append`` fires with). Immutable, as before; a named
    tuple so the writer makes one per event with ``tuple.__new__`` (one C call), not an
    attrs ``__init__``."""
    seq: int
    hash: str
    event: Event


def iso(time_us: int | None) -> str | None:
    if time_us is None:
        return None
    return datetime.fromtimestamp(time_us / 1e6, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> int:
    """RFC 3339 (or a date) to microseconds since the epoch."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1_000_000)
