"""Attacks on the pgcpu round: sqltext.key's two memos (exact text, digit shape), statement_record.ms3,
Operation with slots=False, decide_then on the statement path, byte counts kept per session.

In memory: texts of one digit shape whose digits fall in names, $n, strings, integers, next to
dots, letters and quotes, with 9 and 10 digits, leading zeros, non-ASCII digits; each asked of the
memoized key in random order (and after the memo is emptied) and compared with the computed key;
the classification of the same texts through the caches and with no cache at all. ms3 against
round(y, 3) bit for bit (the sign of zero included). Through a real gateway and PostgreSQL: a grant
on t1 and s1.t0 only, statements on t2, t10, t01, s1.t1, s0.t0 after the allowed ones warmed every
memo, simple, extended and pipelined; the audit trail's events in order.
"""
from __future__ import annotations

import math
import secrets
import struct

import attrs
import pytest
from hypothesis import given, settings, strategies as st

from hoopy.policy.rules import Operation, Unit
from hoopy.postgres import classify as classify_mod, sqltext
from hoopy.postgres.statement_record import ms3


# --- sqltext.key: the memoized answer is the computed one --------------------------------------

_PIECES = st.sampled_from([
    "SELECT", "a", "t", "s", "x_", "FROM", "WHERE", "AND", "=", "<>", "+", "-", ",", "(", ")", ".", ";",
    "'", "''", "'a", "$", "E", "e", "_", " ", "\n", "\t", "'0'", "0", "00", "9", "123456789", "1234567890",
    "٣", "a٣", "'٣'", "1e5", "0x1", "1.5", ".5", "1_0", "LIMIT", "OFFSET", "$1", "$12345", "$123456",
])
_DIGITS = "0123456789"


def _digit_variants(text: str, draws) -> list[str]:
    """``text`` with its ASCII digits rewritten: the same digit shape, other digits."""
    out = []
    for d in draws:
        it = iter(d)
        out.append("".join(next(it, c) if c in _DIGITS else c for c in text))
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=14), st.lists(st.sampled_from([" ", ""]), min_size=14, max_size=14),
       st.lists(st.text(_DIGITS, min_size=40, max_size=40), min_size=1, max_size=5), st.booleans())
def test_the_key_memos_answer_as_the_computed_key(pieces, gaps, draws, clear):
    text = "".join(p + g for p, g in zip(pieces, gaps))
    if clear:
        sqltext._SHAPES.clear()
        sqltext._MEMO.clear()
    for t in [text] + _digit_variants(text, draws):
        assert sqltext.key(t) == sqltext._key(t), t
        assert sqltext.key(t) == sqltext._key(t), t  # (the second time from the memo)


@pytest.mark.parametrize("texts", [
    ["SELECT a FROM t1 WHERE b = 1", "SELECT a FROM t2 WHERE b = 1", "SELECT a FROM t1 WHERE b = 2"],
    ["SELECT a FROM s1.t0 WHERE b = 10", "SELECT a FROM s0.t1 WHERE b = 10", "SELECT a FROM s1.t1 WHERE b = 99"],
    ["SELECT a FROM t10", "SELECT a FROM t01", "SELECT a FROM t11", "SELECT a FROM t00"],
    ["SELECT $1 + 1", "SELECT $2 + 1", "SELECT $1 + 2"],
    ["SELECT 123456789", "SELECT 1234567890", "SELECT 0000000000"],
    ["SELECT 'a1' FROM t1", "SELECT 'a2' FROM t2"],
    ["SELECT 1e5", "SELECT 2e5", "SELECT 1e6"],
    ["SELECT t1.a FROM t1", "SELECT t2.a FROM t1"],
    ["SELECT a FROM t٣", "SELECT a FROM t3"],
])
def test_texts_of_one_shape_keep_apart_what_differs(texts):
    for order in (texts, texts[::-1]):
        sqltext._SHAPES.clear()
        sqltext._MEMO.clear()
        for t in order:
            assert sqltext.key(t) == sqltext._key(t), t


def _uncached(sql, scope):
    saved = dict(classify_mod._TEXTS), dict(classify_mod._SHAPES)
    classify_mod._TEXTS.clear()
    classify_mod._SHAPES.clear()
    real = sqltext.key
    try:
        sqltext.key = lambda s: None
        return classify_mod.resolve(classify_mod._parse_shape(sql, False), scope, len(sql))
    finally:
        sqltext.key = real
        classify_mod._TEXTS.update(saved[0])
        classify_mod._SHAPES.update(saved[1])


@pytest.mark.parametrize("texts", [
    ["SELECT a FROM t1 WHERE b = 1", "SELECT a FROM t2 WHERE b = 1", "SELECT a FROM t1 WHERE b = 7",
     "SELECT a FROM t10 WHERE b = 1", "SELECT a FROM t01 WHERE b = 1"],
    ["SELECT a FROM s1.t0", "SELECT a FROM s0.t1", "SELECT a FROM s1.t1", "SELECT a FROM s0.t0"],
    ["SELECT a, 'x1' FROM t1 WHERE b IN (1, 2)", "SELECT a, 'x2' FROM t2 WHERE b IN (1, 2)"],
    ["DELETE FROM t1 WHERE b = 1", "DELETE FROM t2 WHERE b = 1", "UPDATE t1 SET a = 1", "UPDATE t2 SET a = 2"],
])
def test_classify_through_the_caches_is_classify_without_them(texts):
    from hoopy.postgres.scope import Scope

    scope = Scope.default() if hasattr(Scope, "default") else classify_mod.DEFAULT
    for rounds in range(2):
        for t in texts:
            fast = classify_mod.classify(t, scope)
            slow = _uncached(t, scope)
            assert (fast.units, fast.relations, fast.statements) == (slow.units, slow.relations, slow.statements), t


# --- statement_record.ms3: round(y, 3), bit for bit ---------------------------------------------

def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.floats(allow_nan=False), st.floats(-2e6, 2e6), st.floats(-1, 1),
                 st.integers(-10**7, 10**7).map(lambda k: k / 1000 + 0.0005),
                 st.integers(-10**7, 10**7).map(lambda k: (2 * k + 1) / 2000)))
def test_ms3_is_round_bit_for_bit(y):
    assert _bits(ms3(y)) == _bits(round(y, 3)), y


@pytest.mark.parametrize("y", [-0.0, -0.0001, -0.0004999, -1e-300, 0.0, 1e-300, 5e-324, -5e-324,
                               0.0005, -0.0005, 0.0015, 2.675, 1e6 + 0.0005, 999999.9995, 1e9, -1e9,
                               math.inf, -math.inf])
def test_ms3_at_the_edges(y):
    assert _bits(ms3(y)) == _bits(round(y, 3)), y


def test_ms3_nan():
    assert math.isnan(ms3(math.nan))


# --- Operation: frozen, hashed and compared as before, every protocol ---------------------------

@pytest.mark.parametrize("protocol,kind", [("postgres", "statement"), ("ssh", "exec"), ("ssh", "shell"),
                                           ("ssh", "sftp"), ("ssh", "forward"), ("http", "request"),
                                           ("mcp", "tool")])
def test_operation_is_still_frozen(protocol, kind):
    op = Operation(protocol, kind, "x", (Unit("read", "public.t1"),), {})
    for name in ("protocol", "kind", "text", "units", "detail"):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(op, name, "y")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            delattr(op, name)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        op.extra = 1  # no new attribute either (a __dict__ now, but still frozen)
    same = Operation(protocol, kind, "x", (Unit("read", "public.t1"),), {})
    other = Operation(protocol, kind, "x", (Unit("read", "public.t2"),), {})
    assert op == same and op != other and not (op != same)
    assert attrs.evolve(op, text="z").text == "z" and op.text == "x"
    # detail and canonical are outside eq and hash, as before
    noted = Operation(protocol, kind, "x", (Unit("read", "public.t1"),), {"sql": "other"}, canonical="c")
    assert op == noted and hash(op) == hash(same) == hash(noted) and hash(op) != hash(other)


# --- through a real gateway and PostgreSQL ---------------------------------------------------
psycopg = pytest.importorskip("psycopg")

TABLES = ["public.t1", "public.t2", "public.t10", "public.t11", "public.t01", "s1.t0", "s1.t1", "s0.t0"]
ALLOWED = {"public.t1", "public.t10", "public.t11", "s1.t0"}
MASKED_COLS = {"public.t11", "s1.t0"}


def _name(qualified: str) -> str:
    return qualified.split(".", 1)[1] if qualified.startswith("public.") else qualified


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    from tests.support import HoopyProcess, admin_sql, free_port, ident, pg_connection

    db = f"hoopy_attackpgcpu_{secrets.token_hex(4)}"
    admin_sql(f"CREATE DATABASE {db}")
    admin_sql("CREATE SCHEMA s1; CREATE SCHEMA s0; " + "".join(
        f"CREATE TABLE {t} (id int, ssn text); INSERT INTO {t} VALUES (1, 'secret-{t}'), (2, 'two-{t}'); "
        for t in TABLES), db)
    port = free_port()
    reader = ident("reader")
    body = reader.toml() + f"""
{pg_connection(port, db)}

[[grants]]
identity = "reader"
connection = "pg"
allow = ["read public.t1", "read public.t10", "read public.t11", "read s1.t0", "read pg_catalog.*"]

[[masking]]
connection = "pg"
columns = ["public.t11.ssn", "s1.t0.ssn"]
"""
    proc = HoopyProcess(tmp_path_factory.mktemp("attackpgcpu"), body).start()
    proc.port, proc.database, proc.reader = port, db, reader
    yield proc
    proc.stop()
    admin_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def connect(g, **kw):
    i = g.reader
    return psycopg.connect(f"host=127.0.0.1 port={g.port} user={i.name} password={i.token} dbname=x "
                           "sslmode=disable", autocommit=True, **kw)


def _expect(table: str, row_id: int):
    if table not in ALLOWED:
        return "refused"
    if table in MASKED_COLS:
        return [("[REDACTED]",)]
    return [((f"secret-{table}" if row_id == 1 else f"two-{table}"),)]


def _run(c, sql, prepare):
    try:
        return c.execute(sql, prepare=prepare).fetchall()
    except psycopg.Error as e:
        assert e.sqlstate == "42501", (sql, e.sqlstate, str(e))
        return "refused"


@pytest.mark.parametrize("prepare", [False, True])
def test_names_with_digits_are_judged_each_as_itself(g, prepare):
    """Every table asked with the same digit shape, the allowed ones first (every memo warm), then
    the others; literal digits varied; each answer as its own table's grant and masking say."""
    with connect(g) as c:
        for rnd in range(3):
            order = sorted(TABLES, key=lambda t: (t not in ALLOWED, t)) if rnd == 0 else TABLES[::(-1) ** rnd]
            for t in order:
                for row_id in (1, 2):
                    for sql in (f"SELECT ssn FROM {_name(t)} WHERE id = {row_id}",
                                f"SELECT ssn FROM {_name(t)} WHERE id = {row_id} AND 'x{rnd}' = 'x{rnd}'"):
                        assert _run(c, sql, prepare) == _expect(t, row_id), sql
            # parameters: $1 kept in the key, the value bound
            for t in order:
                try:
                    got = c.execute(f"SELECT ssn FROM {_name(t)} WHERE id = %s", (1,), prepare=prepare).fetchall()
                except psycopg.Error as e:
                    assert e.sqlstate == "42501"
                    got = "refused"
                assert got == _expect(t, 1), t


def test_pipelined_allowed_and_refused_keep_their_order(g):
    with connect(g) as c:
        for _ in range(2):
            with c.pipeline():
                a = c.execute("SELECT ssn FROM t10 WHERE id = 1")
                b = c.execute("SELECT ssn FROM t11 WHERE id = 1")
                d = c.execute("SELECT ssn FROM t1 WHERE id = 2")
            assert a.fetchall() == _expect("public.t10", 1)
            assert b.fetchall() == _expect("public.t11", 1)
            assert d.fetchall() == _expect("public.t1", 2)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with c.pipeline():
                    c.execute("SELECT ssn FROM t10 WHERE id = 1")
                    c.execute("SELECT ssn FROM t01 WHERE id = 1")
                    c.execute("SELECT ssn FROM t11 WHERE id = 1")
            assert c.execute("SELECT ssn FROM t11 WHERE id = 2").fetchall() == _expect("public.t11", 2)


def test_the_trail_says_what_each_statement_was(g):
    import time

    marker = secrets.token_hex(4)
    sent = []
    with connect(g) as c:
        for t in TABLES:
            sql = f"SELECT ssn FROM {_name(t)} WHERE id = 1 AND '{marker}' = '{marker}'"
            sent.append((sql, t))
            _run(c, sql, False)
    deadline = time.monotonic() + 10
    while True:
        ops = [e for e in g.events("operation") if marker in (e.get("data") or {}).get("text", "")]
        stmts = [e for e in g.events("statement") if marker in (e.get("data") or {}).get("sql", "")]
        if len(ops) == len(TABLES) and len(stmts) == len(ALLOWED) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [e["data"]["text"] for e in ops] == [s for s, _ in sent]
    for e, (sql, t) in zip(ops, sent):
        assert e["outcome"] == ("allowed" if t in ALLOWED else "refused"), (sql, e)
        assert e["data"]["units"] == [f"read {t}"], e
        assert e["data"].get("rule") == (f"read {t}" if t in ALLOWED else None) or t not in ALLOWED, e
    assert [e["data"]["sql"] for e in stmts] == [s for s, t in sent if t in ALLOWED]
    for e in stmts:
        d = e["data"]["duration_ms"]
        assert isinstance(d, float) and d >= 0 and d == round(d, 3), e


# --- decide_then against decide: holds, store failures late, exactly one answer ---------------
import pytest_twisted  # noqa: E402
from twisted.internet.defer import Deferred, fail  # noqa: E402

from hoopy.audit.store import StoreError  # noqa: E402
from hoopy.policy.service import STORE_DOWN, Allow, Deny, Hold  # noqa: E402


def _answers(session, op):
    got: list = []
    session.decide_then(op, lambda v: got.append(("verdict", v)), lambda f: got.append(("failed", f)))
    return got


@pytest_twisted.ensureDeferred
async def test_decide_then_holds_as_decide(tmp_path):
    from tests.gateway_fixtures import request, start_gateway

    gw = start_gateway(tmp_path)
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40011")
        await s.start()
        v1 = await s.decide(request("POST", "/v1/refunds"))
        d: Deferred = Deferred()
        s.decide_then(request("POST", "/v1/refunds"), d.callback, d.errback)
        v2 = await d
        assert isinstance(v1, Hold) and isinstance(v2, Hold) and v1.reason == v2.reason
        assert v1.approval.operation == v2.approval.operation and v1.approval.rule == v2.approval.rule
        # the caller leaves: both holds end refused, as the protocol's Hold callbacks expect
        for c in s.cancel_holds("left"):
            await c
        r1, r2 = await v1.resolution, await v2.resolution
        assert isinstance(r1, Deny) and isinstance(r2, Deny) and r1.reason.split()[2:] == r2.reason.split()[2:]
        # a store that cannot write while a hold is asked for: refused, both ways
        real = gw.store.append
        gw.store.append = lambda *a, **kw: fail(StoreError("disk full"))
        assert await s.decide(request("POST", "/v1/refunds")) == Deny(STORE_DOWN)
        d = Deferred()
        s.decide_then(request("POST", "/v1/refunds"), d.callback, d.errback)
        assert await d == Deny(STORE_DOWN)
        gw.store.append = real
        await s.end()
    finally:
        await gw.stopService()


@pytest_twisted.ensureDeferred
async def test_decide_then_answers_once_and_only_when_the_store_has(tmp_path):
    """The store answers late (the event not yet durable): no verdict before; then exactly one,
    whatever the store says (written, StoreError, another failure), for an allow and a deny."""
    from tests.gateway_fixtures import request, start_gateway

    gw = start_gateway(tmp_path)
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40012")
        await s.start()
        real = gw.store.append
        for op, ends in [(request("GET", "/v1/a"), [None, StoreError("late"), RuntimeError("bug")]),
                         (request("DELETE", "/v1/a"), [None, StoreError("late"), RuntimeError("bug")])]:
            for end in ends:
                pending: list = []

                def later(*a, **kw):
                    d = Deferred()
                    pending.append(d)
                    return d

                gw.store.append = later
                got = _answers(s, op)
                assert got == [] and len(pending) == 1, (op, end)  # nothing before the store answers
                if end is None:
                    pending[0].callback(None)
                else:
                    pending[0].errback(end)
                assert len(got) == 1, (op, end, got)
                kind, v = got[0]
                if op.text.startswith("DELETE"):
                    assert kind == "verdict" and isinstance(v, Deny) and v.reason != STORE_DOWN  # refused anyway
                elif end is None:
                    assert kind == "verdict" and isinstance(v, Allow)
                elif isinstance(end, StoreError):
                    assert kind == "verdict" and v == Deny(STORE_DOWN)  # never Allow without its event
                else:
                    assert kind == "failed" and v.check(RuntimeError)
        gw.store.append = real
        await s.end()
    finally:
        await gw.stopService()


def _metric(g, direction: str) -> float:
    text = g.get("/metrics")[1].decode()
    for ln in text.splitlines():
        if ln.startswith("hoopy_proxied_bytes_total{") and f'direction="{direction}"' in ln and 'protocol="postgres"' in ln:
            return float(ln.rpartition(" ")[2])
    return 0.0


def test_bytes_counted_are_the_bytes_on_the_wire(g):
    """A counting relay between psycopg and the gateway: the gateway's in/out byte counters move by
    exactly what crossed the wire, allowed, refused, pipelined, and a connection dropped mid-reply."""
    import socket
    import threading
    import time

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    counts = {"in": 0, "out": 0}
    lock = threading.Lock()
    threads = []

    def pump(a, b, direction):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                with lock:
                    counts[direction] += len(data)
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept():
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", g.port))
            for a, b, d in ((c, u, "in"), (u, c, "out")):
                t = threading.Thread(target=pump, args=(a, b, d), daemon=True)
                t.start()
                threads.append(t)

    threading.Thread(target=accept, daemon=True).start()
    i = g.reader
    dsn = (f"host=127.0.0.1 port={lsock.getsockname()[1]} user={i.name} password={i.token} dbname=x "
           "sslmode=disable")

    def settled():
        """(wire in, wire out, counted in, counted out) once the relay and the counters agree to move no more."""
        last = None
        for _ in range(50):
            time.sleep(0.1)
            with lock:
                now = (counts["in"], counts["out"], _metric(g, "in"), _metric(g, "out"))
            if now == last:
                return now
            last = now
        return last

    # (the startup and authentication are outside this round: measured from a connection's first statement)
    c = psycopg.connect(dsn, autocommit=True)
    a = settled()
    for t in TABLES:
        _run(c, f"SELECT ssn FROM {_name(t)} WHERE id = 1", False)
        _run(c, f"SELECT ssn FROM {_name(t)} WHERE id = 2", True)
    with c.pipeline():
        c.execute("SELECT ssn FROM t10 WHERE id = 1")
        c.execute("SELECT generate_series(1, 3)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with c.pipeline():
            c.execute("SELECT ssn FROM t2 WHERE id = 1")
            c.execute("SELECT ssn FROM t1 WHERE id = 1")
    b = settled()
    assert b[2] - a[2] == b[0] - a[0] and b[3] - a[3] == b[1] - a[1], (a, b)
    c.close()
    c2 = psycopg.connect(dsn, autocommit=True)
    a = settled()
    c2.pgconn.send_query(b"SELECT ssn FROM t1 WHERE id = 1; SELECT ssn FROM t10 WHERE id = 1")
    c2.pgconn.flush()
    time.sleep(0.3)
    b = settled()
    c2.pgconn.finish()  # gone without reading its reply
    assert b[2] - a[2] == b[0] - a[0] and b[3] - a[3] == b[1] - a[1], (a, b)
    lsock.close()


_NAME = st.sampled_from(["t", "s", "a", "b_", "x"]).flatmap(lambda p: st.text(_DIGITS, max_size=3).map(lambda d: p + d))
_LIT = st.one_of(st.text(_DIGITS, min_size=1, max_size=10), st.text(_DIGITS + "ab ", max_size=4).map(lambda v: f"'{v}'"),
                 st.integers(1, 99999).map(lambda n: f"${n}"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAME, _NAME, _NAME, _LIT, _LIT, st.booleans()), min_size=1, max_size=6))
def test_classify_of_digit_named_texts_through_the_caches(parts):
    """Statements naming digit-bearing tables, schemas and columns, with integer, string and $n
    literals; asked in order, each twice: classify through every cache as without any."""
    from hoopy.postgres.scope import Scope

    scope = classify_mod.DEFAULT if not hasattr(Scope, "default") else Scope.default()
    for col, schema, table, lit1, lit2, qualified in parts * 2:
        rel = f"{schema}.{table}" if qualified else table
        sql = f"SELECT {col} FROM {rel} WHERE {col} = {lit1} AND {table}.{col} <> {lit2}"
        assert sqltext.key(sql) == sqltext._key(sql), sql
        try:
            slow = _uncached(sql, scope)
        except Exception as e:  # noqa: BLE001 (the cached path must fail the same way)
            with pytest.raises(type(e)):
                classify_mod.classify(sql, scope)
            continue
        fast = classify_mod.classify(sql, scope)
        assert (fast.units, fast.relations, fast.column_names, fast.statements) == \
            (slow.units, slow.relations, slow.column_names, slow.statements), sql


def test_a_store_that_refuses_writes_refuses_statements_and_forwards_none(tmp_path):
    """A PostgreSQL state store whose events table rejects every insert (a trigger) once every
    memo is warm: each statement (simple, prepared, pipelined) is refused, nothing reaches the
    server; once the store writes again, statements run."""
    from tests.support import HoopyProcess, admin_sql, free_port, ident, pg_connection

    tag = secrets.token_hex(4)
    up, st_db = f"hoopy_attackpgcpu_up_{tag}", f"hoopy_attackpgcpu_st_{tag}"
    admin_sql(f"CREATE DATABASE {up}")
    admin_sql(f"CREATE DATABASE {st_db}")
    admin_sql("CREATE TABLE w1 (id int)", up)
    port = free_port()
    writer = ident("writer")
    body = writer.toml() + f"""
{pg_connection(port, up)}

[[grants]]
identity = "writer"
connection = "pg"
allow = ["read public.w1", "write public.w1", "read pg_catalog.*"]
"""
    proc = HoopyProcess(tmp_path, body)
    proc.config.write_text(proc.config.read_text().replace(
        'state = "hoopy.db"', f'state = "postgresql://postgres@127.0.0.1:5432/{st_db}"\nname = "n1"', 1))
    proc.start()
    try:
        with psycopg.connect(f"host=127.0.0.1 port={port} user={writer.name} password={writer.token} dbname=x "
                             "sslmode=disable", autocommit=True) as c:
            for n in range(6):
                c.execute(f"INSERT INTO w1 VALUES ({n})", prepare=False)
                c.execute("INSERT INTO w1 VALUES (%s)", (n,), prepare=True)
            admin_sql("CREATE FUNCTION hoopy.no_events() RETURNS trigger LANGUAGE plpgsql AS "
                      "$$BEGIN RAISE EXCEPTION 'no events'; END$$; "
                      "CREATE TRIGGER no_events BEFORE INSERT ON hoopy.events FOR EACH ROW "
                      "EXECUTE FUNCTION hoopy.no_events()", st_db)
            for sql, args, prepare in [("INSERT INTO w1 VALUES (100)", None, False),
                                       ("INSERT INTO w1 VALUES (%s)", (101,), True),
                                       ("INSERT INTO w1 VALUES (102)", None, None)]:
                with pytest.raises(psycopg.Error) as e:
                    c.execute(sql, args, prepare=prepare)
                assert "audit store" in str(e.value) or "store" in str(e.value), str(e.value)
            with pytest.raises(psycopg.Error):
                with c.pipeline():
                    c.execute("INSERT INTO w1 VALUES (103)")
                    c.execute("INSERT INTO w1 VALUES (%s)", (104,))
        assert admin_sql("SELECT count(*) FROM w1 WHERE id >= 100", up) == "0"
        admin_sql("DROP TRIGGER no_events ON hoopy.events", st_db)
        with psycopg.connect(f"host=127.0.0.1 port={port} user={writer.name} password={writer.token} dbname=x "
                             "sslmode=disable", autocommit=True) as c:
            for _ in range(50):  # (the store may take a moment to be healthy again)
                try:
                    c.execute("INSERT INTO w1 VALUES (200)")
                    break
                except psycopg.Error:
                    import time
                    time.sleep(0.2)
        assert admin_sql("SELECT count(*) FROM w1 WHERE id = 200", up) == "1"
        assert admin_sql("SELECT count(*) FROM w1 WHERE id >= 100 AND id < 200", up) == "0"
        # A store slow to write (a second an event): the caller leaves while its decision is in the
        # store; the statement, allowed once its event is durable, is not run for nobody.
        admin_sql("CREATE FUNCTION hoopy.slow_events() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$BEGIN PERFORM pg_sleep(1); RETURN NEW; END$$; "
                  "CREATE TRIGGER slow_events BEFORE INSERT ON hoopy.events FOR EACH ROW "
                  "EXECUTE FUNCTION hoopy.slow_events()", st_db)
        import time
        c = psycopg.connect(f"host=127.0.0.1 port={port} user={writer.name} password={writer.token} dbname=x "
                            "sslmode=disable", autocommit=True)
        c.pgconn.send_query(b"INSERT INTO w1 VALUES (300); INSERT INTO w1 VALUES (301)")
        c.pgconn.flush()
        time.sleep(0.2)
        c.pgconn.finish()
        time.sleep(4)
        assert admin_sql("SELECT count(*) FROM w1 WHERE id >= 300", up) == "0"
        admin_sql("DROP TRIGGER slow_events ON hoopy.events", st_db)
    finally:
        proc.stop()
        admin_sql(f"DROP DATABASE IF EXISTS {up} WITH (FORCE)")
        admin_sql(f"DROP DATABASE IF EXISTS {st_db} WITH (FORCE)")


@pytest_twisted.ensureDeferred
async def test_decide_then_with_callers_judges_as_decide(tmp_path):
    """``also`` (an MCP caller's identity whose grants must cover the operation too): the same
    verdict and the same event both ways, for a caller that denies, one that asks for approval, and
    one that covers it."""
    from hoopy.audit.chain import canonical_json
    from tests.gateway_fixtures import request, start_gateway

    gw = start_gateway(tmp_path)
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40013")
        await s.start()
        seen = []
        append = gw.store.append

        def on_append(event, *a, **kw):
            seen.append((event.kind, event.outcome, canonical_json(event.data)))
            return append(event, *a, **kw)

        gw.store.append = on_append
        for op, also in [(request("GET", "/v1/a"), ["bob"]), (request("GET", "/v1/a"), ["agent"]),
                         (request("POST", "/v1/refunds"), ["bob"]), (request("DELETE", "/v1/a"), ["agent"])]:
            v1 = await gw.policy.decide(s, op, also=also)
            n = len(seen)
            d: Deferred = Deferred()
            gw.policy.decide_then(s, op, d.callback, d.errback, also=also)
            v2 = await d
            assert type(v1) is type(v2), (op, also)
            if isinstance(v1, Hold):
                assert v1.reason == v2.reason
            else:
                assert v1 == v2, (op, also)
            assert [(k, o) for k, o, _ in seen[:n]][-1:] == [(k, o) for k, o, _ in seen[n:]][-1:], (op, also)
            if not isinstance(v1, Hold):
                assert seen[n - 1][2] == seen[-1][2], (op, also)
        for c in s.cancel_holds("done"):
            await c
        gw.store.append = append
        await s.end()
    finally:
        await gw.stopService()
