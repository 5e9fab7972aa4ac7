"""Each statement's record: what the client side (client_side.py, replies.py) appends once a
statement is over. ``done`` makes its ``statement`` event (rows, duration, tag, outcome; ``ms3``
for the duration) and ``redactions`` the ``redaction`` event of what masking changed in its rows.
A mixin of ``UpstreamReplies`` (replies.py), so of ``ClientSide``: one object, its record here.
"""
from __future__ import annotations

import time

from hoopy.postgres import codec
from hoopy.postgres.pipeline import Expected, Kind, Redacted, Trailing

_EXECUTE = Kind.EXECUTE  # (read per statement, as a global: see client_side.py)
_WRITES = ("INSERT", "UPDATE", "DELETE", "MERGE")
_monotonic = time.monotonic


def ms3(y: float) -> float:
    """``round(y, 3)``, the same float, without its decimal conversion where none is needed.
    ``round(y, 3)`` is the double nearest to k/1000 for k the integer nearest to y*1000 (exactly,
    ties to even); ``round(y * 1000)`` finds that k whenever y*1000 (one rounding of the product:
    under a millionth off below 1e9) is not within that of a tie; then k/1000, one correctly
    rounded division, is that same double. Near a tie (or past 1e9), round(y, 3) itself."""
    v = y * 1000.0
    if -1e9 < v < 1e9:  # (not NaN nor infinite either)
        k = round(v)
        if k and -0.4999 < v - k < 0.4999:  # (k = 0: round(y, 3) keeps y's sign, -0.0 for -0.0001)
            return k / 1000
    return round(y, 3)


class StatementRecord:
    # What it shares with the ClientSide it is mixed into (set in ClientSide.__init__).
    commands: list

    def redactions(self, e: Expected) -> None:
        plan = e.plan
        if plan is None:
            return
        s = plan.summary()
        if not s:
            return
        n = sum(s["columns"].values()) + sum(s["patterns"].values())
        plan.columns, plan.patterns = {}, {}
        self.commands.append(Redacted(n, {"sql": (e.sql or "")[:2000], **s}))

    def done(self, e: Expected) -> None:
        """A statement finished: its rows, duration and outcome are recorded."""
        sql = e.sql
        if sql is None:
            return
        if e.plan is not None:
            self.redactions(e)
        data = {"sql": sql[:2000], "duration_ms": ms3((_monotonic() - e.start) * 1000)}
        tag = e.tag
        if e.kind is _EXECUTE:
            data["rows"] = e.rows if tag is None or not tag.startswith(_WRITES) else codec.rows_from_tag(tag)
        else:
            data["rows_returned"] = e.rows
        if tag:
            data["tag"] = tag
        error = e.error
        if error:
            data["sqlstate"] = error
            self.commands.append(Trailing("statement", "error", data))
        else:
            self.commands.append(Trailing("statement", "ok", data))
