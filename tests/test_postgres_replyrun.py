"""The upstream reply path's shortcut (hoopy/postgres/replyrun.py and its use in
replies.receive_upstream): the C scanner against the Python one, and a session's whole
reply stream -- several statements in one Query, an error mid-result, NoticeResponse and
ParameterStatus between rows, COPY out, an empty query, a suspended portal, masking on and
off -- giving the same client bytes and the same records however the server's bytes are
split, with the shortcut and without it (HOOPY_PGREPLY=python's reading, message by message).
A scanner broken on purpose is caught (the last tests)."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hoopy.postgres import codec, pipeline as cmd, replies, replyrun
from hoopy.postgres.pipeline import State
from tests.test_postgres_machines import Exchange, read_all

F_TEXT = [codec.Field("v", 0, 0, 25, -1, -1, 0)]
F_TWO = [codec.Field("id", 16390, 1, 23, 4, -1, 0), codec.Field("email", 16390, 2, 25, -1, -1, 0)]


def rows(fields, *values) -> bytes:
    return codec.row_description(fields) + b"".join(codec.build_data_row(v) for v in values)


def row(*v) -> bytes:
    return codec.build_data_row(list(v))


CLIENT = (
    codec.query("SELECT v FROM a; SELECT id, email FROM b")
    + codec.query("SELECT 1")
    + codec.query("SELECT broken")
    + codec.query("")
    + codec.query("COPY a TO STDOUT")
    + codec.parse_message("", "SELECT id, email FROM b") + codec.bind_message("", "") + codec.execute("", 1)
    + codec.SYNC
    + codec.parse_message("", "SELECT v FROM a") + codec.bind_message("", "") + codec.describe(b"P", "")
    + codec.execute("") + codec.SYNC
    + codec.query("SELECT 2; SELECT 3; SELECT 4")
    + codec.query("SELECT v FROM a"))
SERVER = (
    # two statements, one Query; an address to mask in the second
    rows(F_TEXT, [b"x"], [None]) + codec.command_complete("SELECT 2")
    + rows(F_TWO, [b"1", b"ann@example.com"], [b"2", b"plain"], [b"3", None]) + codec.command_complete("SELECT 3")
    + codec.ready(b"I")
    # a notice before, a parameter status amid the rows
    + codec.notice("hello ann@example.com") + rows(F_TEXT, [b"1"]) + codec.parameter_status("application_name", "x")
    + row(b"2") + codec.command_complete("SELECT 2") + codec.ready(b"I")
    # an error mid-result
    + rows(F_TEXT, [b"a"], [b"b"]) + codec.error("22012", "division by zero") + codec.ready(b"I")
    # the empty query
    + codec.msg(b"I") + codec.ready(b"I")
    # COPY out
    + codec.copy_response(b"H", 0, (0,)) + codec.copy_data(b"bob@example.org\t1\n") + codec.copy_data(b"x\t2\n")
    + codec.msg(b"c") + codec.command_complete("COPY 2") + codec.ready(b"I")
    # Parse, Bind, Execute of one row: suspended
    + codec.msg(b"1") + codec.msg(b"2") + row(b"7", b"eve@example.net") + codec.msg(b"s") + codec.ready(b"T")
    # Parse, Bind, Describe, Execute
    + codec.msg(b"1") + codec.msg(b"2") + codec.row_description(F_TEXT) + row(b"q") + row(b"r")
    + codec.command_complete("SELECT 2") + codec.ready(b"T")
    # three statements, the last one fails
    + rows(F_TEXT, [b"2"]) + codec.command_complete("SELECT 1") + rows(F_TEXT, [b"3"])
    + codec.notification(7, "ch", "x") + codec.command_complete("SELECT 1")
    + codec.error("42P01", "no such table") + codec.ready(b"E")
    + rows(F_TEXT, *[[b"r%d" % i] for i in range(40)]) + codec.command_complete("SELECT 40") + codec.ready(b"E"))
TYPES = [b"T", b"D", b"D", b"C", b"T", b"D", b"D", b"D", b"C", b"Z"]


def exchange(cuts, patterns, fast=True, scan=None, monkeypatch=None):
    if monkeypatch is not None:
        monkeypatch.setattr(replies, "_FAST", fast)
        if scan is not None:
            monkeypatch.setattr(replies, "scan", scan)
    x = Exchange(patterns=patterns)
    x.send(CLIENT)
    pos = 0
    for n in cuts + [len(SERVER)]:
        x.reply(SERVER[pos:pos + n])
        pos += n
    records = []
    for r in x.records:
        if isinstance(r, cmd.Trailing):  # the duration is the clock's
            r = cmd.Trailing(r.kind, r.outcome, {k: v for k, v in r.data.items() if k != "duration_ms"})
        records.append(r)
    return x.client, records, x.cs.tx_status, x.cs.state


@pytest.fixture(scope="module")
def reference():
    """Each masking setting's result read message by message, the server's bytes whole."""
    mp = pytest.MonkeyPatch()
    try:
        return {p: exchange([], p, fast=False, monkeypatch=mp) for p in ((), ("email",))}
    finally:
        mp.undo()


def test_the_reference_reads_as_the_server_wrote(reference):
    client, records, tx, _ = reference[()]
    types = [t for t, _ in read_all(client)]
    assert types[:len(TYPES)] == TYPES
    assert types.count(b"D") == 54 and b"s" in types and b"I" in types
    trailing = [r for r in records if isinstance(r, cmd.Trailing)]
    assert [r.data.get("rows_returned", r.data.get("rows")) for r in trailing] == [5, 2, 2, 0, 0, 1, 2, 2, 40]
    assert [r.outcome for r in trailing] == ["ok", "ok", "error", "ok", "ok", "ok", "ok", "error", "ok"]
    assert trailing[0].data["tag"] == "SELECT 2; SELECT 3"
    assert b"ann@example.com" in client
    masked = reference[("email",)][0]
    assert b"ann@example.com" not in masked and b"eve@example.net" not in masked and b"bob@example.org" not in masked
    assert any(isinstance(r, cmd.Redacted) for r in reference[("email",)][1])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=60), st.sampled_from([(), ("email",)]),
       st.booleans())
def test_same_bytes_and_records_however_split_with_and_without_the_shortcut(reference, monkeypatch, cuts,
                                                                              patterns, fast):
    assert exchange(cuts, patterns, fast=fast, monkeypatch=monkeypatch) == reference[patterns]


@pytest.mark.parametrize("patterns", [(), ("email",)])
def test_the_python_scanner_gives_the_same(reference, monkeypatch, patterns):
    got = exchange([], patterns, scan=replyrun.scan_py, monkeypatch=monkeypatch)
    assert got == reference[patterns]
    assert exchange([7] * 400, patterns, scan=replyrun.scan_py, monkeypatch=monkeypatch) == reference[patterns]


# --- the C scanner against the Python one ------------------------------------------------
_message = st.one_of(
    st.tuples(st.sampled_from(b"DTCZEINSs1d"), st.binary(max_size=12)).map(lambda m: codec.msg(bytes([m[0]]), m[1])),
    # a length under 4, or past any buffer
    st.tuples(st.sampled_from(b"DTC"),
              st.integers(min_value=-3, max_value=3) | st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1))
    .map(lambda m: bytes([m[0]]) + struct.pack("!i", m[1])))


@pytest.mark.skipif(replyrun.scan_c is None, reason="the C module is not built")
@settings(max_examples=400, deadline=None)
@given(st.lists(_message, max_size=12).map(b"".join), st.data(), st.booleans(), st.booleans())
def test_c_and_python_scanners_agree(buf, data, also_t, as_bytearray):
    pos = data.draw(st.integers(min_value=0, max_value=len(buf)))
    b = bytearray(buf) if as_bytearray else buf
    for end in range(pos, len(buf) + 1):  # every place a read may end, a message's last byte missing too
        assert replyrun.scan_c(b, pos, end, also_t) == replyrun.scan_py(b, pos, end, also_t)


@pytest.mark.skipif(replyrun.scan_c is None, reason="the C module is not built")
def test_the_c_scanner_refuses_what_it_cannot_read():
    with pytest.raises(ValueError):
        replyrun.scan_c(b"D\0\0\0\x04", 0, 6, False)  # end past the buffer
    with pytest.raises(ValueError):
        replyrun.scan_c(b"D\0\0\0\x04", 3, 2, False)
    with pytest.raises(ValueError):
        replyrun.scan_c(b"D\0\0\0\x04", -1, 5, False)
    with pytest.raises(TypeError):
        replyrun.scan_c(memoryview(b"D\0\0\0\x04"), 0, 5, False)
    assert replyrun.scan_c(b"D\0\0\0\x04" * 3, 0, 15, False) == (15, 3, -1, 15)


# --- the properties have teeth -------------------------------------------------------------
def _one_row_short(buf, pos, end, also_t):
    p, n, t, nxt = replyrun.scan_py(buf, pos, end, also_t)
    return p, max(n - 1, 0), t, nxt


def _skips_every_description(buf, pos, end, also_t):
    return replyrun.scan_py(buf, pos, end, True)


@pytest.mark.parametrize("broken, patterns", [(_one_row_short, ()), (_skips_every_description, ("email",))])
def test_a_scanner_broken_on_purpose_is_caught(reference, monkeypatch, broken, patterns):
    assert exchange([], patterns, scan=broken, monkeypatch=monkeypatch) != reference[patterns]


# --- the plans cached a session (MaskRules.plan_for) ----------------------------------------
def test_a_cached_plan_is_the_plan_made_anew_with_its_own_counts():
    from hoopy.policy.masking import BUILTIN
    from hoopy.postgres.classify import classify
    from hoopy.postgres.rows import PLAN_CACHE, MaskRules

    rules = MaskRules((BUILTIN["email"],), configured=("public.customers.ssn",))
    rules.load(([("16384", "3", "public", "customers", "ssn")], [("16384", "r", "public", "customers")]))
    fields = [codec.Field("x", 16384, 3, 25, -1, -1, 0), codec.Field("e", 0, 0, 25, -1, -1, 0),
              codec.Field("ssn", 0, 0, 25, -1, -1, 0)]
    desc = codec.row_description(fields)[5:]
    row = codec.build_data_row([b"123-45-6789", b"ann@example.com", b"999"])[5:]
    tainted, clean = classify("SELECT ssn AS x, e, ssn FROM customers"), classify("SELECT 1 AS x, 'a' AS e, 3 AS ssn")
    for c, formats in ((tainted, None), (clean, None), (tainted, (0,)), (clean, (0, 0, 0))):
        made = rules.plan(fields, c)
        if formats:
            made.with_formats(formats)
        first, second = rules.plan_for(desc, c, formats), rules.plan_for(desc, c, formats)
        assert first is not second and first.columns is not second.columns
        assert first.apply(row) == made.apply(row) == second.apply(row)
        assert first.summary() == made.summary() == second.summary()
        assert rules.plan_for(desc, c, formats).summary() is None  # a copy counts from nothing
    assert rules.plan_for(desc, tainted).apply(row) != rules.plan_for(desc, clean).apply(row)
    for i in range(PLAN_CACHE * 2):  # many shapes: the cache stays bounded
        rules.plan_for(codec.row_description([codec.Field(f"c{i}", 0, 0, 25, -1, -1, 0)])[5:], None)
    assert len(rules._plans) <= PLAN_CACHE
    assert MaskRules(()).plan_for(desc, tainted) is None


# --- any server stream: the shortcut answers as the general code does ----------------------
_server_message = st.sampled_from([
    codec.row_description(F_TEXT), codec.row_description(F_TWO), row(b"x"), row(b"1", b"ann@example.com"),
    codec.build_data_row([]), codec.command_complete("SELECT 1"), codec.command_complete("DELETE 3"),
    codec.ready(b"I"), codec.ready(b"T"), codec.ready(b"E"), codec.msg(b"Z", b"X"), codec.msg(b"Z", b"II"),
    codec.error("22012", "x"), codec.error("57P01", "bye", "FATAL"), codec.notice("n"), codec.msg(b"I"),
    codec.parameter_status("application_name", "a"), codec.msg(b"s"), codec.msg(b"1"), codec.msg(b"2"),
    codec.msg(b"n"), codec.copy_response(b"H", 0, (0,)), codec.copy_data(b"a\n"), codec.msg(b"c"),
    b"D\0\0\0\x02", b"C\0\0\0\x03x", b"D\x7f\xff\xff\xff", b"Q\0\0\0\x04"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_server_message, max_size=25).map(b"".join), st.lists(st.integers(1, 30), max_size=8),
       st.sampled_from([(), ("email",)]))
def test_any_server_stream_reads_alike_with_and_without_the_shortcut(monkeypatch, server, cuts, patterns):
    check_alike(monkeypatch, server, cuts, patterns)


def test_a_framing_error_after_passable_messages(monkeypatch):
    # T T D(length 2): the message-by-message code passes the first T before the FATAL, the shortcut none.
    desc = codec.row_description(F_TEXT)
    assert check_alike(monkeypatch, desc + desc + b"D\0\0\0\x02", [], ()) == desc


def check_alike(monkeypatch, server, cuts, patterns):
    def run(fast):
        monkeypatch.setattr(replies, "_FAST", fast)
        x = Exchange(patterns=patterns)
        x.send(CLIENT)
        pos = 0
        for n in cuts + [len(server)]:
            x.reply(server[pos:pos + n])
            pos += n
        records = [cmd.Trailing(r.kind, r.outcome, {k: v for k, v in r.data.items() if k != "duration_ms"})
                   if isinstance(r, cmd.Trailing) else r for r in x.records]
        return x.client, records, x.cs.tx_status, x.cs.state, [e.kind for e in x.cs.queue], bytes(x.cs.ubuf)

    fast, reference = run(True), run(False)
    assert fast[1:] == reference[1:]
    if fast[0] == reference[0]:
        return b""
    # One difference is allowed, and only before the FATAL error that answers a framing error from
    # the server: the message-by-message code had passed the whole messages before the bad one up to
    # the last one it handled; the shortcut holds such a run back (less, never other, bytes).
    assert fast[3] is State.ERROR
    mark = b"SFATAL\0VFATAL\0C08006\0Mupstream protocol error"
    cut_f, cut_r = fast[0].rindex(mark) - 5, reference[0].rindex(mark) - 5  # E, its length, then the fields
    assert fast[0][cut_f:] == reference[0][cut_r:]
    before_f, before_r = fast[0][:cut_f], reference[0][:cut_r]
    assert before_r.startswith(before_f)
    held = before_r[len(before_f):]
    assert b"".join(codec.msg(t, p) for t, p in read_all(held)) == held  # whole messages
    assert all(t != b"E" for t, _ in read_all(held))
    return held
