"""The statement path's shortcuts beside what they stand for (pgcpu): ``Session.decide_then``
(PolicyService.decide_then: the answer as a call, the event's data made once) against
``Session.decide``; ``Session.record``/``record_trailing`` against ``event``/``trailing_event``;
``Session.byte_counts`` against ``count_bytes``. Each gives the same verdict, the same event
(its data key for key, in the same order, the same canonical bytes) and the same counts."""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail

from hoopy.audit.chain import canonical_json
from hoopy.audit.store import StoreError
from hoopy.policy.rules import Operation, Unit
from hoopy.policy.service import STORE_DOWN, Allow, Deny
from hoopy.session import IN, OUT
from tests.gateway_fixtures import request, start_gateway


def _capture(gw):
    """Every event appended (waited for or trailing), as (kind, outcome, data, its canonical JSON)."""
    seen = []
    append, trailing = gw.store.append, gw.store.append_trailing

    def on_append(event, *a, **kw):
        seen.append((event.kind, event.outcome, list(event.data.items()), canonical_json(event.data)))
        return append(event, *a, **kw)

    def on_trailing(event):
        seen.append((event.kind, event.outcome, list(event.data.items()), canonical_json(event.data)))
        return trailing(event)

    gw.store.append, gw.store.append_trailing = on_append, on_trailing
    return seen


def _then(session, op) -> Deferred:
    d: Deferred = Deferred()
    session.decide_then(op, d.callback, d.errback)
    return d


def _counts(gw):
    text = gw.metrics.registry_text() if hasattr(gw.metrics, "registry_text") else None
    if text is not None:
        return text
    from prometheus_client import generate_latest

    return generate_latest(gw.metrics.registry).decode()


OPS = [
    request("GET", "/v1/a"),  # allowed
    request("GET", "/v1/a", query="x=1"),  # allowed, more detail
    request("DELETE", "/v1/a"),  # refused (no grant)
    # two units: the event lists its parts
    Operation("http", "request", "GET /v1/b + GET /v1/c", (Unit("GET", "/v1/b"), Unit("GET", "/v1/c")),
              {"method": "GET", "path": "/v1/b"}),
    Operation("http", "request", "GET /v1/b + DELETE /v1/c", (Unit("GET", "/v1/b"), Unit("DELETE", "/v1/c")),
              {"method": "GET", "path": "/v1/b"}),
]


@pytest_twisted.ensureDeferred
async def test_decide_then_answers_and_records_as_decide(tmp_path):
    gw = start_gateway(tmp_path)
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40001")
        await s.start()
        seen = _capture(gw)
        for op in OPS:
            before = _counts(gw)
            v1 = await s.decide(op)
            mid = _counts(gw)
            v2 = await _then(s, op)
            after = _counts(gw)
            assert type(v2) is type(v1) and v2 == v1, op
            (k1, o1, d1, j1), (k2, o2, d2, j2) = seen[-2:]
            assert (k1, o1) == (k2, o2) and d1 == d2 and j1 == j2, op  # key for key, in order
            # the same counter moved by the same amount
            assert _diff(before, mid) and _diff(before, mid) == _diff(mid, after), op
        assert len(seen) == 2 * len(OPS)
        # A detail naming "rule" fails as the keyword call does (nothing recorded).
        bad = request("GET", "/v1/a", rule="mine")
        with pytest.raises(TypeError):
            await s.decide(bad)
        with pytest.raises(TypeError):
            s.decide_then(bad, lambda v: None, lambda f: None)
        assert len(seen) == 2 * len(OPS)
        await s.end()
    finally:
        await gw.stopService()


def _diff(a: str, b: str) -> dict:
    """The sample lines that changed from ``a`` to ``b``, by how much."""
    def samples(text):
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "hoopy_operations" in line:
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out
    x, y = samples(a), samples(b)
    return {k: y.get(k, 0) - x.get(k, 0) for k in set(x) | set(y) if y.get(k, 0) != x.get(k, 0)}


@pytest_twisted.ensureDeferred
async def test_decide_then_fails_closed_as_decide(tmp_path):
    gw = start_gateway(tmp_path)
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40002")
        await s.start()
        real = gw.store.append
        # A store that cannot write: refused (STORE_DOWN), both ways.
        gw.store.append = lambda *a, **kw: fail(StoreError("disk full"))
        assert await s.decide(request("GET", "/v1/a")) == Deny(STORE_DOWN)
        assert await _then(s, request("GET", "/v1/a")) == Deny(STORE_DOWN)
        # Any other failure: no verdict, the failure goes to the caller (which fails closed).
        gw.store.append = lambda *a, **kw: fail(RuntimeError("a bug"))
        with pytest.raises(RuntimeError):
            await s.decide(request("GET", "/v1/a"))
        got = []
        s.decide_then(request("GET", "/v1/a"), lambda v: got.append(("verdict", v)),
                      lambda f: got.append(("failed", f.value)))
        assert len(got) == 1 and got[0][0] == "failed" and isinstance(got[0][1], RuntimeError)
        gw.store.append = real
        assert isinstance(await _then(s, request("GET", "/v1/a")), Allow)
        await s.end()
    finally:
        await gw.stopService()


@pytest_twisted.ensureDeferred
async def test_record_is_event_and_record_trailing_is_trailing_event(tmp_path):
    gw = start_gateway(tmp_path)
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40003")
        await s.start()
        seen = _capture(gw)
        data = {"sql": "SELECT 1", "duration_ms": 1.5, "rows_returned": 1, "tag": "SELECT 1"}
        await s.event("operation", "allowed", **data)
        await s.record("operation", "allowed", dict(data))
        s.trailing_event("statement", "ok", **data)
        s.record_trailing("statement", "ok", dict(data))
        assert seen[0][1:] == seen[1][1:] and seen[2][1:] == seen[3][1:]
        await s.end()
    finally:
        await gw.stopService()


def test_byte_counts_move_the_counter_count_bytes_moves(tmp_path):
    gw = start_gateway(tmp_path)
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40004")
        count_in, count_out = s.byte_counts()

        def value(direction):
            return gw.byte_counter(s, direction).value

        s.count_bytes(IN, 5)
        count_in(7)
        s.count_bytes(OUT, 11)
        count_out(13)
        assert (value(IN), value(OUT)) == (12, 24)
        # and a host without byte_counter: through count_bytes
        calls = []

        class Host:
            def count_bytes(self, session, direction, n):
                calls.append((direction, n))

        s.gateway = Host()
        count_in, count_out = s.byte_counts()
        count_in(3)
        count_out(4)
        assert calls == [(IN, 3), (OUT, 4)]
    finally:
        gw.stopService()
