"""The ``http.request`` event of an exchange: what it will say (``Record``), and its writing.

An exchange (exchange.py) fills its ``Record`` as it goes (status, outcome, rule, approval, the
response's headers, the kept prefix of each body: ``prefix``) and ``write_record`` makes the one
trailing event of it once the exchange is over, with the request's headers as the record shows them
(credentials redacted) and the bytes each way counted on the session.
"""
from __future__ import annotations

import time

import orjson

from hoopy.http import headers as H
from hoopy.session import IN, OUT


class Record:
    """What the ``http.request`` event of an exchange will say."""

    __slots__ = ("limit", "status", "outcome", "error", "rule", "approval", "response_headers", "request_body",
                 "response_body", "response_bytes")

    def __init__(self, limit: int):
        self.limit = limit
        self.status: int | None = None
        self.outcome: str | None = None
        self.error: str | None = None
        self.rule: str | None = None
        self.approval: str | None = None
        self.response_headers: dict | None = None
        # a body's kept prefix: its text, or {"head": text, "total_bytes": n} when longer (see prefix)
        self.request_body: str | dict | None = None
        self.response_body: str | dict | None = None
        self.response_bytes = 0

    def keep(self, which: str, data: bytes, total: int | None = None):
        """The first ``record_body_limit`` bytes of a (masked) body, or its size past that."""
        setattr(self, which, prefix(data, self.limit, len(data) if total is None else total))


def prefix(data: bytes, limit: int, total: int) -> str | dict | None:
    if limit <= 0:
        return None
    text = data[:limit].decode("utf-8", "replace")
    return text if total <= limit else {"head": text, "total_bytes": total}


def _record_headers(ex) -> dict:
    checked = ex.checked
    if checked is None:
        return H.for_record(ex.pairs)
    if checked.record is None:
        checked.record = H.for_record(ex.pairs)
    return dict(checked.record)


def write_record(ex):
    """The exchange's ``http.request`` event (a trailing one), once it is over: none before the caller
    is authenticated (no session)."""
    session, rec = ex.session, ex.record
    if session is None:
        return
    pipe = ex.pipe
    req_bytes = 0
    if pipe is not None:
        req_bytes = pipe.received
        kind = ex.body.kind
        if rec.request_body is None and kind not in (None, "other") and not ex.site.masker.applies(kind):
            # (a body that had to be masked and was not, refused or too large, is not kept unmasked)
            rec.request_body = prefix(bytes(pipe.head), ex.settings.record_body_limit, pipe.received)
    session.count_bytes(IN, req_bytes)
    session.count_bytes(OUT, rec.response_bytes)
    data = {
        "method": ex.method, "path": ex.path, "query": ex.query, "status": rec.status,
        "request_bytes": req_bytes, "response_bytes": rec.response_bytes,
        # (whole microseconds in ms, as round(..., 3) gave, without its decimal rounding: a tenth
        # of the record's cost)
        "duration_ms": (time.monotonic_ns() - ex.started) // 1000 / 1000,
        "request_headers": _record_headers(ex),
    }
    if ex.path is None:
        data["target"] = ex.uri.decode("latin-1")[:2048]
    for k in ("rule", "approval", "error", "response_headers", "request_body", "response_body"):
        v = getattr(rec, k)
        if v is not None:
            data[k] = v
    if ex.token:  # a caller that put its token somewhere else too (refused): not into the record
        text, tok = orjson.dumps(data).decode(), orjson.dumps(ex.token).decode()[1:-1]
        if tok in text:
            data = orjson.loads(text.replace(tok, H.REDACTED))
    session.trailing_event("http.request", rec.outcome or "ok", **data)
