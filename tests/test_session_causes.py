"""Session reads InFlight.by_actor before asking InFlight.causes (hoopy/session.py: no call at all
when no MCP tool call is in flight, the common case). What an operation event records as
``caused_by`` and the callers ``decide`` hands the policy must be exactly what InFlight.causes
says, over any sequence of calls begun and ended, for sessions of any identity, credential and
protocol."""
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.causal import InFlight, ToolCall
from hoopy.session import Session


class _Metrics:
    operation_duration = None

    def child(self, *a):
        return self

    def observe(self, *a):
        pass


class _Policy:
    def __init__(self):
        self.also = None

    def decide(self, session, operation, approvals, also=()):
        self.also = also


class _Gateway:
    def __init__(self):
        self.metrics = _Metrics()
        self.in_flight = InFlight()
        self.policy = _Policy()


calls = st.tuples(st.sampled_from(["svc", "other"]), st.sampled_from([None, "cr-1", "cr-2"]),
                  st.sampled_from(["alice", "bob"]), st.booleans())
steps = st.lists(st.tuples(st.booleans(), st.integers(0, 5), calls), max_size=12)


@settings(max_examples=200, deadline=None)
@given(steps, st.sampled_from(["svc", "other", "x"]), st.sampled_from([None, "cr-1", "cr-9"]),
       st.sampled_from(["ssh", "postgres", "mcp"]), st.booleans())
def test_caused_by_and_callers_are_what_inflight_says(steps, identity, credential, protocol, given_cause):
    gw = _Gateway()
    flight = gw.in_flight
    live = {}
    for begin, n, (actor, child, caller, grant) in steps:
        if begin:
            call = ToolCall(id=f"tc-{n}", session="m", request=n, tool="t", connection="mcp", caller=caller,
                            acts_as=actor, child=child, client=None, model=None, require_caller_grant=grant)
            if f"tc-{n}" in live:
                flight.end(live.pop(f"tc-{n}"))
            live[call.id] = call
            flight.begin(call)
        elif f"tc-{n}" in live:
            flight.end(live.pop(f"tc-{n}"))
    s = Session(gw, identity, "c", protocol, "p", credential=credential)
    causes = flight.causes(s)
    data = {"caused_by": ["given"]} if given_cause else {"sql": "x"}
    ev = s._event("operation", "allowed", data)
    if given_cause:
        assert ev.data["caused_by"] == ["given"]
    elif causes:
        assert ev.data["caused_by"] == [c.record() for c in causes]
    else:
        assert "caused_by" not in ev.data
    assert "caused_by" not in s._event("statement", "ok", {}).data  # only operations carry it
    s.decide(object())
    assert list(gw.policy.also) == sorted({c.caller for c in causes if c.require_caller_grant})
    if not live:
        assert flight.by_actor == {}  # (what the shortcut relies on: emptied as calls end)


def test_no_in_flight_registry():
    gw = _Gateway()
    gw.in_flight = None
    s = Session(gw, "svc", "c", "ssh", "p")
    assert "caused_by" not in s._event("operation", "allowed", {}).data
    s.decide(object())
    assert list(gw.policy.also) == []
