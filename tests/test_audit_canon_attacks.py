"""Attacks on the C encodings of audit events (hoopy/audit/_canon.c) and on what the events branch
changed around them (StoredEvent a named tuple, the writer's one-call link, the signature column
NULL in SQL): every input where the C path's bytes or hash could differ from the Python reference
(hoopy/audit/chain.py, HOOPY_CANON=python), where C could crash or read freed memory, or where a
store written by the C path would not be byte for byte the store the Python path writes."""
from __future__ import annotations

import datetime
import enum
import hashlib
import json
import math
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import attrs
import pytest

from hoopy.audit import chain, writer
from hoopy.audit.events import Event, StoredEvent

C_DUMPS, C_LINK, C_ASCII = chain._C_DUMPS, chain._C_LINK, chain._C_ASCII
needs_c = pytest.mark.skipif(C_DUMPS is None, reason="hoopy/audit/_canon.c is not built")
ROOT = Path(__file__).resolve().parent.parent


def _reference(obj) -> str:
    """What canonical_json has always written: the standard library (the frozen vectors)."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def _same(obj):
    """C writes obj exactly as the Python path and the standard library, or leaves it to them."""
    got = C_DUMPS(obj)
    try:
        want = chain._canonical_python(obj)
    except (TypeError, ValueError) as e:  # refused: the same way by canonical_json, C wrote nothing
        assert got is None
        with pytest.raises(type(e)):
            _reference(obj)
        with pytest.raises(type(e)):
            chain.canonical_json(obj)
        return None
    assert want == _reference(obj)
    assert got is None or got == want
    assert chain.canonical_json(obj) == want
    return got


def _nest(n, leaf, kind):
    v = leaf
    for _ in range(n):
        v = [v] if kind == "list" else {"k": v}
    return v


class Color(enum.IntEnum):
    RED = 1


class S(str):
    def __str__(self):  # a side effect the C path must never run
        raise AssertionError("C called __str__")


class Boom:
    def __repr__(self):
        return "boom"


# --- values: every JSON type, its edges, and what is not JSON -----------------------------------

FLOATS = [0.0, -0.0, 1e16, 1e15, 1e22, 1e-4, 9.999e-5, 1e-5, 5e-324, -5e-324, 2.2250738585072014e-308,
          1.7976931348623157e308, 0.1 + 0.2, 1 / 3, 2 ** 53 + 0.0, float(2 ** 63), 123456789.125, -1e-7,
          math.nan, math.inf, -math.inf]
INTS = [0, -1, 2 ** 31, 2 ** 53 + 1, 2 ** 63 - 1, -2 ** 63, 2 ** 63, -2 ** 63 - 1, 2 ** 64 - 1, 2 ** 64,
        -2 ** 64, 10 ** 40, -10 ** 40, 10 ** 4299]
TEXTS = ["", "\x00", "a\x00b", "\x01\x1f\x7f\x80\x9f", "\u2028\u2029", "\ufeff\uffff\U0010ffff", "\"\\/",
         "\b\f\n\r\t\v", "e\u0301", "\u00e9", "😀" * 3, "x" * 5000, '"' * 3000, "\x00" * 2000,
         "\udc80", "\ud800", "a\ud83d", "\ud83d\ude00", "\udfff\ud800"]


@needs_c
@pytest.mark.parametrize("v", FLOATS + INTS + TEXTS + [True, False, None, [], {}, (), [[]], {"": {}}],
                         ids=repr)
def test_every_leaf_as_the_python_path(v):
    for obj in (v, [v], {"v": v}, {"a": [v, (v,)], "b": {"c": v}}):
        got = _same(obj)
        if type(v) is str and v and not _utf8(v):
            assert got is None  # a lone surrogate: the Python path writes it \\u-escaped


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@needs_c
@pytest.mark.parametrize("obj", [
    {"s": S("x")}, {S("k"): 1}, {"e": Color.RED}, {"b": True, "i": 1, "f": 1.0},  # bool vs int vs float
    {"b": b"bytes"}, {"ba": bytearray(b"x")}, {"d": OrderedDict(b=1, a=2)}, {"dt": datetime.datetime(2026, 1, 1)},
    {"set": {1}}, {"obj": Boom()}, {1: "a", 2: "b"}, {True: 1}, {None: 1}, {1.5: 0}, {(1, 2): 0},
    {"é": 1, "e\u0301": 2, "e": 3},  # equal after normalisation, distinct keys
    {"\uffff": 1, "\U00010000": 2, "\ue000": 3},  # code point order, not UTF-16 order
    {"\ud800": 1}, {"a": {"\udc80": [1]}},
], ids=repr)
def test_odd_values_are_the_python_paths(obj):
    """Subclasses, non-str keys, bytes, objects with a __str__ side effect: C never runs their code
    (None: the Python path decides, default=str as always)."""
    _same(obj)
    assert C_DUMPS(obj) is None or all(type(k) is str for k in obj)


@needs_c
@pytest.mark.parametrize("depth", [31, 32, 33, 63, 64, 65, 66, 200])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_nesting_at_and_past_c_s_limit(depth, kind):
    obj = _nest(depth, [1.5, "x", None], kind)
    got = _same(obj)
    assert (got is None) == (depth + 1 > 64)


@needs_c
def test_nesting_the_standard_library_cannot_write_fails_the_same_both_ways():
    """Far past any limit: C declines at 64 levels (no C stack overflow), and the standard library
    raises RecursionError, as it always did (a RuntimeError: append lets it through, as before)."""
    obj = _nest(200_000, 1, "list")
    assert C_DUMPS(obj) is None
    with pytest.raises(RecursionError):
        chain._canonical_python(obj)
    with pytest.raises(RecursionError):
        chain.canonical_json(obj)


@needs_c
def test_cycles_and_shared_values():
    loop: list = []
    loop.append(loop)
    assert C_DUMPS(loop) is None
    with pytest.raises(ValueError):
        chain.canonical_json(loop)
    shared = {"x": [1, 2]}
    _same({"a": shared, "b": shared, "c": [shared, shared]})  # not a cycle: written twice


@needs_c
def test_an_int_past_the_digit_limit_is_refused_the_same_way():
    big = 10 ** 5000
    with pytest.raises(ValueError):
        C_DUMPS({"n": big})
    with pytest.raises(ValueError):
        chain._canonical_python({"n": big})
    with pytest.raises(ValueError):
        C_LINK(b"", chain.GENESIS, [big])
    with pytest.raises(ValueError):
        chain._link_v2_python(chain.GENESIS, [big])


@needs_c
def test_a_float_subclass_and_int_subclass_are_left_to_python():
    class F(float):
        def __repr__(self):
            return "EVIL"

    class I(int):
        def __repr__(self):
            return "EVIL"

    for obj in ({"f": F(1.5)}, {"i": I(3)}, [F(2.0), I(1)]):
        assert C_DUMPS(obj) is None
        assert chain.canonical_json(obj) == _reference(obj)


# --- finalizers: Python code running inside the C encoder ----------------------------------------

_GC_ATTACK = textwrap.dedent("""
    import gc, json, sys
    from hoopy.audit import chain
    dumps = chain._C_DUMPS
    assert dumps is not None
    for k in range(1, 8):
        L = [{"a%d" % i: "x" * 50, "n": [i, {"m": i}]} for i in range(50)]
        class Trap:
            def __del__(self, L=L):
                L.clear()  # frees every dict the encoder is walking
        gc.disable()
        gc.collect()
        t = Trap(); t.self = t; del t  # garbage only the collector frees
        gc.set_threshold(gc.get_count()[0] + k)
        gc.enable()
        out = dumps(L)  # a collection starts at put_dict's PyDict_Keys
        gc.set_threshold(700)
        gc.collect()
        assert out is None or isinstance(json.loads(out), list), out
    print("survived")
""")


@needs_c
def test_a_finalizer_emptying_the_list_being_written_does_not_crash():
    """HOLE (fixed): Python 3.11 collects garbage inside an allocation, so put_dict's PyDict_Keys can
    run a __del__ that empties the list put_seq walks; put_seq kept the list's old length and
    borrowed items: a read of freed memory, and a segfault (rc -11). It now reads the length at
    each item and holds the item, as the json module does."""
    r = subprocess.run([sys.executable, "-c", _GC_ATTACK], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-2000:])


# --- the chain link -----------------------------------------------------------------------------

def _py_link(prefix: bytes, prev: str, values) -> str:
    return hashlib.sha256(prefix + prev.encode() + b"\n" + chain._array_bytes(list(values))).hexdigest()


@needs_c
@pytest.mark.parametrize("v", INTS[:-1] + TEXTS + [None], ids=repr)
@pytest.mark.parametrize("prefix", [b"", chain._V2_PREFIX_BYTES])
def test_link_of_every_leaf(v, prefix):
    values = [1, 2, "gw", v, None, "c", "pg", "127.0.0.1", "operation", "allowed", "{}", v]
    got = C_LINK(prefix, chain.GENESIS, values)
    try:
        want = _py_link(prefix, chain.GENESIS, values)
    except UnicodeEncodeError:
        assert got is None  # a lone surrogate: the Python path refuses it
        return
    assert got == want
    assert chain.chain_array(values).encode() == chain._array_bytes(values)  # the frozen encoding A


@needs_c
@pytest.mark.parametrize("odd", [True, False, 1.0, -0.0, math.nan, b"x", Color.RED, S("s"), ["x"], ("x",), {"a": 1}])
def test_link_refuses_or_defers_what_is_not_int_str_or_null(odd):
    values = [1, 2, "gw", odd]
    assert C_LINK(b"", chain.GENESIS, values) is None
    try:
        chain._array_bytes(values)
    except TypeError:
        pass  # refused by the Python path, as always (verify: "what the gateway never writes")
    else:
        assert type(odd) in (Color, S)  # subclasses: written as they always were


@needs_c
def test_link_s_arguments():
    with pytest.raises(TypeError):
        C_LINK("not bytes", chain.GENESIS, [])
    with pytest.raises(TypeError):
        C_LINK(b"", chain.GENESIS)
    assert C_LINK(b"", S(chain.GENESIS), [1]) is None  # a str subclass prev: the Python path
    assert C_LINK(b"", "\u00e9", [1]) is None
    assert C_LINK(b"", chain.GENESIS, iter([1])) is None
    assert C_LINK(b"", chain.GENESIS, []) == hashlib.sha256(chain.GENESIS.encode() + b"\n[]").hexdigest()


@needs_c
def test_a_row_from_an_edited_store_fails_verify_the_same_way():
    """An attacker edits a column to a float, a blob or a bool: the C link declines, the Python
    link refuses, verify reports an edit, not a crash and not a pass."""
    base = {"seq": 1, "time_us": 5, "gateway": "g", "session": None, "identity": None, "connection": None,
            "protocol": None, "peer": None, "kind": "k", "outcome": None, "data": "{}", "writes": "{}"}
    h = chain.link(chain.GENESIS, base)
    assert h == chain._link_v2_python(chain.GENESIS, [base[f] for f in chain.FIELDS_V2])
    for col, bad in (("seq", 1.0), ("time_us", True), ("data", b"{}"), ("kind", 1.5)):
        row = dict(base, **{col: bad}, prev=chain.GENESIS, hash=h)
        with pytest.raises(chain.Break):
            chain.verify_rows([row])


# --- the text fields' ASCII check ----------------------------------------------------------------

@needs_c
@pytest.mark.parametrize("texts", [(), (None,), ("",), ("\x00\x7f",), ("\x80",), (S("a"),), (1,), (b"a",),
                                   ("a", "\udc80"), ("ok",) * 7 + ("\u00e9",), (True,)], ids=repr)
def test_ascii_check(texts):
    assert C_ASCII(*texts) == all(t is None or (type(t) is str and t.isascii()) for t in texts)


@needs_c
def test_clean_event_turns_a_surrogate_into_text_the_store_takes():
    ev = Event(kind="k", peer="p\udc80", identity="\u00e9")
    out = writer._clean_event(ev)
    assert out.peer == "p\\udc80" and out.identity == "\u00e9"
    ev2 = Event(kind=S("k"))  # a subclass: C says look; nothing to change
    assert writer._clean_event(ev2) is ev2


# --- StoredEvent: the named tuple where an attrs class was ---------------------------------------

def test_stored_event_behaves_as_the_attrs_class_did_where_it_is_read():
    ev = Event(kind="k", data={"a": 1}, time_us=1)
    made = writer._stored(StoredEvent, (3, "h" * 64, ev))
    assert type(made) is StoredEvent
    assert made == StoredEvent(3, "h" * 64, ev) == StoredEvent(seq=3, hash="h" * 64, event=ev)
    assert (made.seq, made.hash, made.event) == (3, "h" * 64, ev)
    assert made != StoredEvent(4, "h" * 64, ev)
    assert pickle.loads(pickle.dumps(made)) == made
    with pytest.raises(AttributeError):
        made.seq = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(made)  # its event holds a dict: unhashable, as the attrs class was
    from hoopy.notify import messages  # the one reader of its fields outside the store

    assert messages is not None


def test_event_is_still_frozen_with_a_dict():
    ev = Event(kind="k")
    import attrs

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ev.kind = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(ev)) == ev


# --- end to end: a store written by the C path is byte for byte the Python path's ----------------

_SEED = bytes(range(32))


def _events():
    odd = {"floats": FLOATS, "ints": INTS[:-1], "texts": TEXTS, "sub": S("s"), "enum": Color.RED, "b": b"x",
           "dt": datetime.datetime(2026, 1, 1), "od": OrderedDict(z=1, a=2), "deep": _nest(70, 1, "list"),
           "t": (1, (2,)), "bool": [True, False, None], "keys": {"\uffff": 1, "\U00010000": 2, "e\u0301": 3}}
    evs = [Event(kind="operation", outcome="allowed", session=f"s{i}", identity="alice", connection="pg",
                 protocol="postgres", peer="127.0.0.1", data={"sql": f"select {i}", "i": i}, time_us=1_000 + i)
           for i in range(70)]
    evs += [Event(kind="operation", outcome="refused", session="s\udc80", identity="b\u00e9", peer="p\x00",
                  data=odd, time_us=2_000),
            Event(kind=S("weird"), data={"k": v for k, v in odd.items() if k != "deep"}, time_us=2_001),
            # what C writes and links itself: every leaf but the lone surrogates
            Event(kind="operation", outcome="ok", session="s\x7f", peer="p\x01\u2028", identity="\u00e9",
                  data={"texts": [t for t in TEXTS if _utf8(t)], "floats": FLOATS, "ints": INTS, "deep": _nest(60, {}, "dict"),
                        "t": (1, ("x",)), "e": [], "keys": {"\uffff": 1, "\U00010000": 2, "e\u0301": 3, "\u00e9": 4}},
                  time_us=2_002)]
    return evs


def _taken(store) -> list:
    """What waits in the store, taken off as its writer thread takes a batch (a batch's items are
    no longer waiting: the postgresql:// writer takes what came since while it awaits the lock)."""
    batch: list = []
    store._take(batch)
    return batch


def _write_store(where, monkeypatch, c: bool, pg: bool = False):
    """Three batches through the store's own append and _write (the writer thread's code, run
    here, in order): the rows of every table, the StoredEvents, the signer."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from hoopy.audit.signing import Signer

    # (the writer reaches dumps and link through chain's functions; _C_ASCII it holds itself)
    for mod, names in ((chain, ("_C_DUMPS", "_C_LINK", "_C_ASCII")), (writer, ("_C_ASCII",))):
        for n in names:
            monkeypatch.setattr(mod, n, getattr(chain, n) if c else None)
    if pg:
        from hoopy.audit.pgstore import PostgresEventStore, ensure_schema

        s = PostgresEventStore(where, "gw")
        s._conn = s._connect()
        ensure_schema(s._conn)
    else:
        from hoopy.audit.store import SQLiteEventStore

        s = SQLiteEventStore(where, "gw")
        s._db = s._connect()
    s._thread = object()  # appends accepted; batches written here, in order, by _write
    out: list = []
    s._to_reactor = lambda f, *a: out.append(a)
    s.signer = Signer(Ed25519PrivateKey.from_private_bytes(_SEED))
    evs = _events()
    if pg:  # PostgreSQL's text has no NUL (the same refusal on both paths): not this test's business
        evs[70] = attrs.evolve(evs[70], peer="p")
    # 1: the common items only, past one INSERT's rows (64), the last signed
    for e in evs[:70]:
        s.append(e)
    s._write(_taken(s), True)
    # 2: session and approval rows, a conditional approval, odd data, trailing events
    s.append(evs[70], session={"id": "s1", "identity": "alice\udc80", "started_us": 1})
    s.append(evs[71], approval={"id": "a1", "state": "pending", "operation": "x", "requester": "alice",
                                "created_us": 1})
    s.append(Event(kind="approval.decided", outcome="approved", data={"id": "a1"}, time_us=3_000),
             approval={"id": "a1", "state": "approved"}, expect_state="pending")
    s.append(Event(kind="approval.decided", outcome="denied", data={}, time_us=3_001),
             approval={"id": "a1", "state": "denied"}, expect_state="pending")  # a conflict: not written
    s.append_trailing(Event(kind="t", data={"x": [1.5, -0.0]}, time_us=3_002))
    s.append_trailing(evs[72])
    s._write(_taken(s), False)
    # 3: exactly one INSERT's worth of rows (64), signed
    for i in range(64):
        s.append(Event(kind="operation", data={"i": i, "f": i / 7}, time_us=4_000 + i))
    s._write(_taken(s), True)
    s._close()
    failed = [a for a in out if len(a) == 2]
    assert not failed, failed
    stored = [r for batch in out for r in batch[0]]
    tables = {}
    for t in ("events", "sessions", "approvals"):
        if pg:
            import psycopg

            with psycopg.connect(where) as conn:
                tables[t] = conn.execute(f"SELECT * FROM hoopy.{t} ORDER BY 1").fetchall()
        else:
            db = sqlite3.connect(where)
            tables[t] = db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            db.close()
    return tables, stored, s.signer


def _same_store(c_side, py_side, reader, tmp_path):
    (c_tables, c_stored, signer), (py_tables, py_stored, _) = c_side, py_side
    assert len(c_tables["events"]) == 70 + 5 + 64
    for t in c_tables:
        assert [tuple(map(repr, r)) for r in c_tables[t]] == [tuple(map(repr, r)) for r in py_tables[t]], t
    c_res = [(type(r).__name__, getattr(r, "seq", None), getattr(r, "hash", None)) for _, r in c_stored]
    py_res = [(type(r).__name__, getattr(r, "seq", None), getattr(r, "hash", None)) for _, r in py_stored]
    assert c_res == py_res
    assert sum(1 for n, *_ in c_res if n == "StateConflict") == 1
    # Signed where the Python path signed: each batch's last row (1, 3: asked; 2: approval.decided).
    sigs = [r[0] for r in c_tables["events"] if r[-1] is not None]
    assert sigs == [70, 75, 139]
    # hoopy verify (the code the CLI runs), with the key
    from hoopy.audit.signing import Keyring
    from hoopy.audit.verify import verify

    rec = tmp_path / "rec"
    rec.mkdir(exist_ok=True)
    res = verify(reader, rec, Keyring([signer.public]))
    assert res.ok, res
    assert res.events == 139 and res.signatures == 3


def test_a_store_written_by_c_is_the_python_paths_byte_for_byte(tmp_path, monkeypatch):
    if C_DUMPS is None:
        pytest.skip("hoopy/audit/_canon.c is not built")
    from hoopy.audit.store import SQLiteReader

    c_side = _write_store(tmp_path / "c.db", monkeypatch, True)
    monkeypatch.undo()
    py_side = _write_store(tmp_path / "py.db", monkeypatch, False)
    monkeypatch.undo()
    _same_store(c_side, py_side, SQLiteReader(tmp_path / "c.db"), tmp_path)
    _same_store(py_side, c_side, SQLiteReader(tmp_path / "py.db"), tmp_path)


PG = os.environ.get("HOOPY_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def test_a_postgresql_store_written_by_c_is_the_python_paths(tmp_path, monkeypatch):
    """The same on the postgresql:// store (hoopy/audit/pgstore.py): its rows come back as psycopg
    types, the signature column NULL in the SQL, verify with the key."""
    if C_DUMPS is None:
        pytest.skip("hoopy/audit/_canon.c is not built")
    psycopg = pytest.importorskip("psycopg")
    import secrets

    from hoopy.audit.pgstore import PostgresReader

    try:
        admin = psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL at {PG}: {e}")
    names = [f"hoopy_attackev_{secrets.token_hex(4)}" for _ in range(2)]
    try:
        for n in names:
            admin.execute(f'CREATE DATABASE "{n}"')
        c_side = _write_store(f"{PG}/{names[0]}", monkeypatch, True, pg=True)
        monkeypatch.undo()
        py_side = _write_store(f"{PG}/{names[1]}", monkeypatch, False, pg=True)
        monkeypatch.undo()
        for n, (a, b) in zip(names, ((c_side, py_side), (py_side, c_side))):
            reader = PostgresReader(f"{PG}/{n}")
            try:
                _same_store(a, b, reader, tmp_path)
            finally:
                reader.close()
    finally:
        for n in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
        admin.close()


def test_the_signature_column_and_chunks_line_up():
    """The rows of one INSERT: every row one column short (NULL in SQL) but a signed last row;
    a row of the full width anywhere else would shift every parameter after it."""
    d = writer.Dialect("?")
    cols = len(writer.EVENT_COLUMNS)
    sql = d._insert_sql(3, True)
    assert sql.count("?") == 3 * (cols - 1) + 1 and sql.count("NULL") == 2
    assert d._insert_sql(3, False).count("?") == 3 * (cols - 1)
    db = sqlite3.connect(":memory:")
    from hoopy.audit.store import SCHEMA

    db.executescript(SCHEMA)
    unsigned = [list(range(cols - 1)) for _ in range(65)]
    for i, r in enumerate(unsigned):
        r[0] = i + 1
    signed = unsigned[-1] + ["sig"]
    d.insert_events(db.cursor(), unsigned[:-1] + [signed])
    got = db.execute("SELECT seq, signature FROM events WHERE signature IS NOT NULL").fetchall()
    assert got == [(65, "sig")]
    # Rows of several batches (the event log's, indexed together): a signed row in the middle
    # ends its INSERT, so its signature lands on it and no parameter after it shifts.
    mixed = [[200 + i] + [f"v{i}"] * (cols - 2) for i in range(5)]
    mixed[1] = mixed[1] + ["sig-201"]
    mixed[3] = mixed[3] + ["sig-203"]
    d.insert_events(db.cursor(), mixed)
    got = db.execute("SELECT seq, time_us, hash, signature FROM events WHERE seq >= 200 ORDER BY seq").fetchall()
    assert got == [(200 + i, f"v{i}", f"v{i}", f"sig-20{i}" if i in (1, 3) else None) for i in range(5)]
