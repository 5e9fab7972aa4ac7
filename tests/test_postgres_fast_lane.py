"""The steady state's fast lane held to the slow path it bypasses (the pgfast round).

The fast lane: ``classify.resolve`` answers from a memo kept on the ``Scope`` (by the cached
Parsed's identity), and ``ClientSide.judge`` answers the text it judged last in this scope at
once, else asks ``classify.known`` (text cache hit and memo hit in one call). The slow path:
every statement parsed afresh (no text or shape cache) and resolved afresh (no memo, no last
answer). Sessions of different identities share the module's caches, as
a gateway's connections do; between statements the search path changes (SET search_path, SET
ROLE, a temporary schema appearing), grants expire and are replaced. Both lanes must give the
same judgement of every statement and the same decision record, in the same order.

``test_a_broken_fast_lane_is_caught`` breaks the lane on purpose (a memo that forgets the scope,
and one kept across a path change) and shows the differential finds it.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hoopy.config import Grant
from hoopy.policy.approvals import _describe
from hoopy.policy.service import PolicyService
from hoopy.policy.verdicts import Allow, Deny
from hoopy.postgres import classify as classify_mod, client_side as client_side_mod, codec, wire
from hoopy.postgres.client_side import ClientSide
from hoopy.postgres.pipeline import Check, Decide, State
from hoopy.postgres.rows import MaskRules
from hoopy.postgres.scope import Scope
from hoopy.protocols import parse_rule

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)

# What the upstream says the path is, by (search_path setting, role, temp schema made): each read
# builds a new Scope, as scope_read does.
_RELS = {"pg_catalog": frozenset({"pg_class"}), "alice": frozenset({"t", "pgbench_accounts"}),
         "pg_temp_3": frozenset({"t"}), "public": frozenset({"t", "pgbench_accounts"})}


def _scope(path: str, role: str, temp: bool) -> Scope:
    schemas = {"public": ["public"], "alice,public": ["alice", "public"], "$user,public": [role, "public"]
               if role == "alice" else ["public"]}[path]
    full = (["pg_temp_3"] if temp else []) + ["pg_catalog"] + schemas
    rels = {s: _RELS.get(s, frozenset()) for s in full[:-1]}
    funcs = {s: frozenset({"f"}) for s in schemas if s == "alice"}
    return Scope(tuple(full), tuple(schemas), role, "pg_temp_3" if temp else None, rels, funcs)


STATEMENTS = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = {n}",
    "SELECT x FROM t WHERE a = '{s}'",
    "SELECT x FROM public.t WHERE a = {n}",
    "SELECT f({n})",
    "UPDATE t SET x = {n} WHERE a = 1",
    "SELECT * FROM pg_class WHERE oid = {n}",
    "SET search_path TO public",
    "SET search_path TO alice, public",
    "SET search_path TO \"$user\", public",
    "SET ROLE alice",
    "RESET ROLE",
    "CREATE TEMP TABLE t (x int)",
    "BEGIN",
    "COMMIT",
]


def _grants(generation: int):
    """The grants in force: they change (a reload) with the generation, and some expire."""
    def g(who, allow=(), approve=(), deny=(), expires=None):
        return Grant(who, "db", tuple(parse_rule("postgres", r) for r in allow),
                     tuple(parse_rule("postgres", r) for r in approve),
                     tuple(parse_rule("postgres", r, deny=True) for r in deny), expires, 0)
    if generation % 2 == 0:
        return (g("agent", allow=["read public.*", "read pg_catalog.*", "admin", "ddl", "read"],
                  deny=["write alice.*"]),
                g("agent", allow=["read alice.*", "write *.*", "write"], expires=T0 + timedelta(seconds=30)),
                g("other", allow=["read alice.*", "admin", "read"], approve=["read public.*"]))
    return (g("agent", allow=["read", "read public.*", "admin", "ddl"], deny=["read pg_catalog.*"]),
            g("other", allow=["read public.*", "read pg_catalog.*", "admin", "write *.*", "read", "ddl"],
              expires=T0 + timedelta(seconds=20)))


def _policy(generation, clock):
    class Cfg:
        connections: dict = {}
        grants = _grants(generation)

        class gateway:
            approval_timeout = 60
    return PolicyService(Cfg, None, None, now=lambda: clock[0])


class _Server:
    """What the upstream's search path is, as the statements allowed so far made it."""

    def __init__(self):
        self.path, self.role, self.temp = "public", "", False

    def ran(self, sql: str):
        s = sql.lower()
        if s.startswith("set search_path to "):
            self.path = s[len("set search_path to "):].replace(" ", "").replace('"', "")
        elif s == "set role alice":
            self.role = "alice"
        elif s == "reset role":
            self.role = ""
        elif s.startswith("create temp table"):
            self.temp = True

    def scope(self):
        return _scope(self.path, self.role, self.temp)


def _run(program, identity="agent"):
    """Drive a ClientSide through ``program`` (steps: ("sql", text), ("tick", seconds),
    ("reload",)); every Decide judged by the policy in force. What happened, in order."""
    clock = [T0]
    generation = [0]
    policy = [_policy(0, clock)]
    server = _Server()
    cs = ClientSide(MaskRules(), max_statement=1 << 20, scope=server.scope())
    log = []

    def settle():
        for _ in range(100):
            if cs.scope_reading is not None:
                e = cs.scope_reading  # SCOPE_QUERY's answer: the path as the server has it now
                cs.scope_reading = None
                cs.scope = server.scope()
                if cs.state is State.READING_PATH:
                    cs.state = State.READY
                    j, cs.pending = cs.pending, None
                    cs.judge(j)
                del e
                continue
            commands, cs.commands = cs.commands, []
            if not commands:
                return
            for c in commands:
                if isinstance(c, (Decide, Check)):
                    op = c.operation
                    if c.refusal:
                        verdict = Deny(c.refusal)
                        log.append(("refused", c.refusal, _describe(op)))
                    else:
                        j = policy[0].judge(identity, "db", op)
                        log.append((j.outcome, j.rule, j.reason, j.parts, _describe(op)))
                        verdict = Allow(j.rule) if j.outcome == "allow" else Deny(j.reason, j.rule)
                    if isinstance(verdict, Allow) and isinstance(c, Decide):
                        server.ran(op.detail["sql"])
                    cs.decided(verdict)
                else:
                    log.append((type(c).__name__, getattr(c, "kind", None), getattr(c, "data", None)))
        raise AssertionError("no end")

    for step in program:
        if step[0] == "sql":
            cs.receive_data(codec.msg(wire.QUERY, codec.cstr(step[1])))
        elif step[0] == "ext":  # the extended protocol: judged at Parse (Check) and at Bind (Decide)
            sql, params = step[1], step[2]
            cs.receive_data(codec.parse_message("", sql) + codec.bind_message("", "", (), params)
                            + codec.execute("") + codec.msg(wire.SYNC))
        elif step[0] == "tick":
            clock[0] += timedelta(seconds=step[1])
        else:
            generation[0] += 1
            policy[0] = _policy(generation[0], clock)
        settle()
        cs.to_upstream.clear()
        cs.to_client.clear()
        log.append(("state", cs.state.name, cs.scope.path))
    return log


def _slow(monkeypatch):
    """The slow path: no text cache, no shape cache, no resolve memo, no ``known``."""
    monkeypatch.setattr(classify_mod, "parse_statement", lambda sql, inline=False: classify_mod._parse(sql))
    monkeypatch.setattr(classify_mod, "resolve", lambda p, scope, size=None: classify_mod._resolve(p, scope))
    monkeypatch.setattr(client_side_mod, "known", lambda sql, scope: None)
    # Nor the connection's last answer (a Bind of the statement just Parsed, the same text again).
    monkeypatch.setattr(ClientSide, "last_classified", property(lambda self: None, lambda self, v: None),
                        raising=False)


_step = st.one_of(
    st.tuples(st.just("sql"), st.builds(lambda t, n, s: t.format(n=n, s=s), st.sampled_from(STATEMENTS),
                                        st.integers(0, 99999), st.sampled_from(["a", "b", "it''s"]))),
    st.tuples(st.just("tick"), st.sampled_from([1, 10, 25])),
    st.builds(lambda t, n: ("ext", t.format(n="$1", s="a"), [str(n).encode()] if "{n}" in t else []),
              st.sampled_from(STATEMENTS), st.integers(0, 99999)),
    st.just(("reload",)),
)


def _both(program, identity):
    fast = _run(program, identity)
    with pytest.MonkeyPatch.context() as mp:
        _slow(mp)
        slow = _run(program, identity)
    return fast, slow


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_step, min_size=1, max_size=25), st.sampled_from(["agent", "other"]))
def test_the_fast_lane_judges_and_records_as_the_slow_path(program, identity):
    fast, slow = _both(program, identity)
    assert fast == slow


# A program that repeats statements across every change the lane must notice.
FIXED = [("sql", "SELECT x FROM t WHERE a = 'a'"), ("sql", "SELECT abalance FROM pgbench_accounts WHERE aid = 1"),
         ("sql", "SET search_path TO alice, public"), ("sql", "SELECT x FROM t WHERE a = 'b'"),
         ("sql", "SELECT abalance FROM pgbench_accounts WHERE aid = 2"), ("tick", 31),
         ("sql", "SELECT x FROM t WHERE a = 'c'"), ("sql", "SET search_path TO \"$user\", public"),
         ("sql", "SELECT x FROM t WHERE a = 'd'"), ("sql", "SET ROLE alice"),
         ("sql", "SELECT x FROM t WHERE a = 'e'"), ("sql", "RESET ROLE"), ("sql", "SELECT x FROM t WHERE a = 'e'"),
         ("sql", "CREATE TEMP TABLE t (x int)"), ("sql", "SELECT x FROM t WHERE a = 'f'"), ("reload",),
         ("sql", "SELECT x FROM t WHERE a = 'g'"), ("sql", "SELECT f(3)"), ("sql", "SELECT f(4)")]
# The extended protocol first (Parse checked, Bind decided), across a path change of its own.
FIXED = [("ext", "SELECT x FROM t WHERE a = $1", [b"1"]), ("ext", "SET search_path TO alice, public", []),
         ("ext", "SELECT x FROM t WHERE a = $1", [b"2"]), ("sql", "SET search_path TO public")] + FIXED


def test_the_fixed_program_exercises_what_it_should():
    fast, slow = _both(FIXED, "agent")
    assert fast == slow
    decided = [e for e in fast if e[0] in ("allow", "deny", "approve", "refused")]
    units = [tuple(e[-1]["units"]) for e in decided]
    # The same text's units follow the path: public.t, then alice.t, then pg_temp.t.
    assert ("read public.t",) in units and ("read alice.t",) in units and ("read pg_temp.t",) in units
    assert units[:2] == [("read public.t",)] * 2 and units[4:6] == [("read alice.t",)] * 2  # (Parse, Bind)
    assert {e[0] for e in decided} >= {"allow", "deny"}


def _memo_without_scope(monkeypatch):
    """Broken: one memo for every scope (answers follow the Parsed, not the path)."""
    shared: dict = {}

    def resolve(p, scope, size=None):
        hit = shared.get(id(p))
        if hit is None:
            hit = shared[id(p)] = (p, classify_mod._resolve(p, scope))
        return hit[1]

    monkeypatch.setattr(classify_mod, "resolve", resolve)
    monkeypatch.setattr(client_side_mod, "known", lambda sql, scope: None)


def _known_kept_across_a_path_change(monkeypatch):
    """Broken: ``known`` remembers the first scope's answer per text key for the connection."""
    real = classify_mod.known
    kept: dict = {}

    def known(sql, scope):
        from hoopy.postgres import sqltext
        k = sqltext.key(sql)
        if k in kept:
            return kept[k]
        c = real(sql, scope)
        if c is not None:
            kept[k] = c
        return c

    monkeypatch.setattr(client_side_mod, "known", known)


@pytest.mark.parametrize("breakage", [_memo_without_scope, _known_kept_across_a_path_change])
def test_a_broken_fast_lane_is_caught(breakage):
    good = _run(FIXED, "agent")
    with pytest.MonkeyPatch.context() as mp:
        breakage(mp)
        bad = _run(FIXED, "agent")
    assert bad != good


# --- the policy's memo: looked up before the units are vetted --------------------------------------

from hoopy.mcp.rules import ToolUnit  # noqa: E402
from hoopy.policy import service as service_mod  # noqa: E402
from hoopy.policy.rules import Operation, Unit  # noqa: E402

_LONG = "public." + "x" * (service_mod.MEMO_TEXT + 1)
_UNITS = [Unit("read", "public.t"), Unit("read", "alice.t"), Unit("write", "public.t"), Unit("read", _LONG),
          Unit("admin", "(any object)"), ToolUnit("tool", "read_file", args={"path": "/srv/public/a"}),
          ToolUnit("tool", "read_file", args={"path": "/etc/shadow"})]


def _memo_policy(clock):
    def g(who, proto, allow=(), deny=(), expires=None):
        return Grant(who, "db", tuple(parse_rule(proto, r) for r in allow), (),
                     tuple(parse_rule(proto, r, deny=True) for r in deny), expires, 0)

    class Cfg:
        connections: dict = {}
        grants = (g("agent", "postgres", allow=["read public.*", "admin"], deny=["write alice.*"]),
                  g("agent", "postgres", allow=["read alice.*", "write *.*"], expires=T0 + timedelta(seconds=30)),
                  g("agent", "mcp", allow=["tool read_file path=/srv/public/*"], deny=["tool read_file path=*shadow*"]),
                  g("other", "postgres", allow=["read *.*"]))

        class gateway:
            approval_timeout = 60
    return PolicyService(Cfg, None, None, now=lambda: clock[0])


_memo_step = st.one_of(st.tuples(st.just("op"), st.lists(st.integers(0, len(_UNITS) - 1), min_size=1, max_size=3),
                                 st.sampled_from(["agent", "other"])),
                       st.tuples(st.just("tick"), st.sampled_from([1, 29, 31, -40])))


def _memo_differs(program) -> bool:
    clock = [T0]
    p = _memo_policy(clock)
    for step in program:
        if step[0] == "tick":
            clock[0] += timedelta(seconds=step[1])
            continue
        units = tuple(_UNITS[i] for i in step[1])
        op = Operation("postgres", "statement", "x", units)
        got = p.judge(step[2], "db", op)
        want = p._judge(step[2], "db", op, clock[0])
        if (got.outcome, got.rule, got.reason, got.parts) != (want.outcome, want.rule, want.reason, want.parts):
            return True
    return False


@settings(max_examples=200, deadline=None)
@given(st.lists(_memo_step, min_size=1, max_size=30))
def test_the_memo_answers_as_a_fresh_judgement(program):
    assert not _memo_differs(program)


def test_a_memo_that_stores_unvetted_units_is_caught(monkeypatch):
    monkeypatch.setattr(service_mod, "_memo_units", lambda units: True)
    tool = [("op", [5], "agent"), ("op", [6], "agent")]  # the same tool, other arguments
    assert _memo_differs(tool)


def test_decide_counts_every_outcome_with_its_kept_counter():
    """policy.decide keeps the operations counter's child per (protocol, connection, outcome):
    every decision still counts once, under its own labels."""
    from prometheus_client import generate_latest
    from twisted.internet.defer import succeed

    from hoopy.metrics import Metrics

    class _Session:
        identity, connection, protocol, id = "agent", "db", "postgres", "s1"

        def event(self, kind, outcome=None, **data):
            return succeed(None)

        def record(self, kind, outcome, data):
            return succeed(None)

    clock = [T0]
    p = _memo_policy(clock)
    p.metrics = Metrics()
    verdicts = []
    for units in [(_UNITS[0],), (_UNITS[0],), (_UNITS[2],), (_UNITS[0],)]:
        p.decide(_Session(), Operation("postgres", "statement", "x", units)).addCallback(verdicts.append)
    assert [type(v).__name__ for v in verdicts] == ["Allow", "Allow", "Allow", "Allow"]
    clock[0] += timedelta(seconds=31)  # the grant allowing writes expired
    p.decide(_Session(), Operation("postgres", "statement", "x", (_UNITS[2],))).addCallback(verdicts.append)
    assert type(verdicts[-1]).__name__ == "Deny"
    text = generate_latest(p.metrics.registry).decode()
    assert 'hoopy_operations_total{connection="db",outcome="allowed",protocol="postgres"} 4.0' in text
    assert 'hoopy_operations_total{connection="db",outcome="refused",protocol="postgres"} 1.0' in text
