"""The hash chain: each event's SHA-256 covers its content and the hash before it.

Editing an event changes its hash; removing, inserting or reordering one
breaks the next event's link; both are found by ``verify``.
"""
from __future__ import annotations

import hashlib
import json

GENESIS = "0" * 64

# The columns, in this order, that each link covers.
FIELDS = ("seq", "time_us", "gateway", "session", "identity", "connection",
          "protocol", "peer", "kind", "outcome", "data")


# One encoder, made once: json.dumps with options builds a new one per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def canonical_json(obj) -> str:
    return _CANONICAL.encode(obj)


def link(prev_hash: str, row: dict) -> str:
    body = canonical_json([row[f] for f in FIELDS])
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


class Break(Exception):
    def __init__(self, seq, message):
        self.seq = seq
        self.message = message
        super().__init__(f"event {seq}: {message}")


def verify_rows(rows):
    """Walk rows in seq order; return (count, last seq, head hash) or raise Break."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    last = 0
    for row in rows:
        seq = row["seq"]
        if seq != expected_seq:
            if seq > expected_seq:
                raise Break(expected_seq, f"missing: the chain jumps from event {expected_seq - 1} to {seq} (removed)")
            raise Break(seq, "out of order")
        if row["prev"] != prev:
            raise Break(seq, "its link to the event before does not match (an event was removed, inserted or reordered)")
        if link(prev, row) != row["hash"]:
            raise Break(seq, "its content does not match its hash (edited)")
        prev = row["hash"]
        expected_seq += 1
        count += 1
        last = seq
    return count, last, prev
