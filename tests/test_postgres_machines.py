"""The PostgreSQL state machines in memory, no sockets: scripted exchanges (the
client sends X, the policy answers Y, the upstream sees Z), hypothesis
properties (the same output however the bytes are split; build-then-parse round
trips of every message type) and a fuzzer that reaches the Bind and Execute parsers."""
from __future__ import annotations

import struct
import types

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hoopy.policy.masking import BUILTIN
from hoopy.policy.verdicts import Allow, Deny, Hold
from hoopy.postgres import client_startup as hs, codec, pipeline as cmd, upstream_side as us, wire
from hoopy.postgres.client_side import ABORT_SQL, ClientSide
from hoopy.postgres.scope import Scope
from hoopy.postgres.pipeline import State
from hoopy.postgres.rows import MaskRules
from hoopy.postgres.scram import MECH, ScramClient
from hoopy.identity import ScramVerifier


def read_all(data: bytes) -> list:
    r = codec.MessageReader()
    r.feed(data)
    return list(r)


class Exchange:
    """A ClientSide between a scripted client, a scripted policy and a scripted server."""

    def __init__(self, policy=lambda op: Allow("all"), patterns=(), max_statement=1024 * 1024):
        self.cs = ClientSide(MaskRules(tuple(BUILTIN[p] for p in patterns)), max_statement=max_statement,
                             scope=Scope.default())
        self.policy = policy
        self.upstream = b""  # what the server saw
        self.client = b""  # what the client saw
        self.records: list = []
        self.holds: list = []
        self.checks: list = []

    def _run(self):
        cs = self.cs
        while True:
            self.upstream += b"".join(cs.to_upstream)
            cs.to_upstream.clear()
            self.client += b"".join(cs.to_client)
            cs.to_client.clear()
            if not cs.commands:
                return
            commands, cs.commands = cs.commands, []
            for c in commands:
                if isinstance(c, cmd.Decide):
                    verdict = Deny(c.refusal) if c.refusal else self.policy(c.operation)
                    if isinstance(verdict, Hold):
                        self.holds.append(verdict)
                    cs.decided(verdict)
                elif isinstance(c, cmd.Check):  # a Parse: could it be allowed? (a hold waits at its Bind)
                    verdict = Deny(c.refusal) if c.refusal else self.policy(c.operation)
                    self.checks.append(c)
                    cs.decided(Allow("check") if isinstance(verdict, Hold) else verdict)
                else:
                    self.records.append(c)

    def send(self, data: bytes) -> "Exchange":
        self.cs.receive_data(data)
        self._run()
        return self

    def reply(self, data: bytes) -> "Exchange":
        self.cs.receive_upstream(data)
        self._run()
        return self

    def resolve(self, verdict) -> "Exchange":
        self.cs.decided(verdict)
        self._run()
        return self

    def take_upstream(self) -> list:
        msgs, self.upstream = read_all(self.upstream), b""
        return msgs

    def take_client(self) -> list:
        msgs, self.client = read_all(self.client), b""
        return msgs


def result(*rows, tag="SELECT 1", status=b"I") -> bytes:
    fields = [codec.Field("v", 0, 0, 25, -1, -1, 0)]
    return (codec.row_description(fields) + b"".join(codec.build_data_row([r]) for r in rows)
            + codec.command_complete(tag) + codec.ready(status))


def deny_writes(op):
    return Deny("no grant allows it") if any(u.kind != "read" for u in op.units) else Allow("read")


# --- scripted exchanges ------------------------------------------------------------

def test_an_allowed_query_goes_up_and_its_reply_comes_back_as_it_was():
    x = Exchange()
    x.send(codec.query("SELECT 'a'"))
    assert x.take_upstream() == [(b"Q", b"SELECT 'a'\0")]
    reply = result(b"a")
    x.reply(reply)
    assert x.client == reply
    done = [r for r in x.records if isinstance(r, cmd.Trailing)]
    assert done[0].data["rows_returned"] == 1 and done[0].data["tag"] == "SELECT 1"


def test_a_refused_query_never_goes_up_and_the_session_goes_on():
    x = Exchange(policy=deny_writes)
    x.send(codec.query("DELETE FROM t"))
    assert x.take_upstream() == []
    (t1, e), (t2, z) = x.take_client()
    assert (t1, t2, z) == (b"E", b"Z", b"I") and codec.parse_fields(e)["C"] == "42501"
    x.send(codec.query("SELECT 1"))
    assert x.take_upstream() == [(b"Q", b"SELECT 1\0")]


def test_a_refusal_inside_a_transaction_aborts_it_upstream():
    x = Exchange(policy=deny_writes)
    x.send(codec.query("BEGIN")).reply(codec.command_complete("BEGIN") + codec.ready(b"T"))
    x.take_upstream(), x.take_client()
    x.send(codec.query("DELETE FROM t"))
    assert x.take_upstream() == [(b"Q", codec.cstr(ABORT_SQL))]
    x.reply(codec.error("22012", "division by zero") + codec.ready(b"E"))
    (t1, e), (t2, z) = x.take_client()
    assert codec.parse_fields(e)["C"] == "42501" and (t2, z) == (b"Z", b"E")  # ours, not the stand-in's


def test_a_refused_bind_skips_to_sync_as_the_server_would():
    x = Exchange()
    # Allowed at its Parse; its Bind would store the redaction marker: refused.
    x.send(codec.parse_message("", "UPDATE t SET a = $1") + codec.bind_message("", "", (), (b"[REDACTED]",))
           + codec.execute("") + codec.SYNC)
    assert [t for t, _ in x.take_upstream()] == [b"P", b"S"]  # the Bind and Execute never went up
    x.reply(codec.msg(b"1") + codec.ready())
    assert [t for t, _ in x.take_client()] == [b"1", b"E", b"Z"]


def test_a_parse_the_policy_would_refuse_never_goes_up():
    """The server's parse analysis locks what a statement names: a Parse is judged first."""
    x = Exchange(policy=deny_writes)
    x.send(codec.parse_message("", "DELETE FROM t WHERE id = $1") + codec.describe(b"S", "")
           + codec.bind_message("", "", (), (b"1",)) + codec.execute("") + codec.SYNC)
    assert [t for t, _ in x.take_upstream()] == [b"S"]
    x.reply(codec.ready())
    (t1, e), (t2, _) = x.take_client()
    assert (t1, t2) == (b"E", b"Z") and codec.parse_fields(e)["C"] == "42501"
    assert [c.operation.units for c in x.checks][0][0].kind == "write"
    # Allowed: it goes up as it came, and its Bind is decided as before.
    x.send(codec.parse_message("s", "SELECT 1") + codec.SYNC)
    assert [t for t, _ in x.take_upstream()] == [b"P", b"S"]


def test_a_held_statement_waits_paused_and_runs_once_approved():
    approval = types.SimpleNamespace(id="ap-1", rule="write public.t")
    from twisted.internet.defer import Deferred

    x = Exchange(policy=lambda op: Hold(approval, Deferred()))
    x.send(codec.query("UPDATE t SET a = 1") + codec.query("SELECT 2"))
    assert x.cs.state is State.HELD and x.take_upstream() == []
    (t, n), = x.take_client()
    assert t == b"N" and b"ap-1" in n
    x.policy = lambda op: Allow("all")
    x.resolve(Allow("write public.t", "ap-1"))
    # the pipelined query waited its turn, then went up behind the approved one
    assert x.take_upstream() == [(b"Q", b"UPDATE t SET a = 1\0"), (b"Q", b"SELECT 2\0")]


def test_a_statement_over_max_statement_is_skipped_unbuffered_and_refused_with_54000():
    x = Exchange(max_statement=1024)
    big = codec.query("SELECT '" + "x" * 100_000 + "'")
    for i in range(0, len(big), 4096):
        x.send(big[i:i + 4096])
        assert len(x.cs.reader.buf) < 8192  # never buffered
    assert x.take_upstream() == []
    (t1, e), (t2, _) = x.take_client()
    assert codec.parse_fields(e)["C"] == "54000" and t2 == b"Z"
    rec = [r for r in x.records if isinstance(r, cmd.Record)][0]
    assert "max_statement" in rec.data["reason"] and len(rec.data["sql"]) <= 2000
    x.send(codec.query("SELECT 1"))
    assert x.take_upstream() == [(b"Q", b"SELECT 1\0")]


def test_copy_in_data_holding_the_marker_fails_the_copy_upstream():
    x = Exchange()
    x.send(codec.query("COPY t FROM STDIN"))
    x.take_upstream()
    x.reply(codec.copy_response(wire.COPY_IN_RESPONSE, 0, (0,)))
    x.send(codec.copy_data(b"1\tok\n") + codec.copy_data(b"2\t[REDA") + codec.copy_data(b"CTED]\n")
           + codec.copy_data(b"3\tmore\n") + codec.COPY_DONE)
    got = x.take_upstream()
    # Found across the cut; the COPY fails upstream (CopyFail), so nothing of it is stored,
    # and nothing after it goes up.
    assert [t for t, _ in got] == [b"d", b"d", b"f"], got
    assert b"redaction marker" in got[2][1]


def test_a_write_storing_the_marker_is_refused_before_the_policy():
    x = Exchange()
    x.send(codec.parse_message("", "UPDATE t SET email = $1") + codec.bind_message("", "", (), (b"[REDACTED]",))
           + codec.execute("") + codec.SYNC)
    assert [t for t, _ in x.take_upstream()] == [b"P", b"S"]
    x.reply(codec.msg(b"1") + codec.ready())
    errors = [codec.parse_fields(p) for t, p in x.take_client() if t == b"E"]
    assert "redaction marker" in errors[0]["M"]


def test_rows_are_masked_by_pattern_and_pass_untouched_without_a_match():
    x = Exchange(patterns=("email",))
    x.send(codec.query("SELECT v FROM t"))
    x.reply(result(b"write to ann@example.com", b"nothing here", tag="SELECT 2"))
    rows = [codec.parse_data_row(p)[0] for t, p in x.take_client() if t == b"D"]
    assert rows == [b"write to [REDACTED]", b"nothing here"]


def test_binary_copy_values_with_a_match_become_null():
    x = Exchange(patterns=("email", "credit_card"))
    x.send(codec.query("COPY t TO STDOUT (FORMAT binary)"))
    head = b"PGCOPY\n\xff\r\n\x00" + b"\0" * 8

    def tup(*vals):
        return struct.pack("!h", len(vals)) + b"".join(struct.pack("!i", len(v)) + v for v in vals)

    stream = head + tup(b"ok", b"a@b.example") + tup(struct.pack("!q", 4111111111111111), b"x") + b"\xff\xff"
    x.reply(codec.copy_response(wire.COPY_OUT_RESPONSE, 1, (1, 1)))
    for i in range(0, len(stream), 7):  # any cut of the stream
        x.reply(codec.copy_data(stream[i:i + 7]))
    x.reply(codec.COPY_DONE + codec.command_complete("COPY 2") + codec.ready())
    out = b"".join(p for t, p in x.take_client() if t == b"d")
    null = b"\xff\xff\xff\xff"
    assert out == (head + struct.pack("!hi", 2, 2) + b"ok" + null
                   + struct.pack("!h", 2) + null + struct.pack("!i", 1) + b"x" + b"\xff\xff")


def test_after_an_upstream_error_the_skipped_messages_expect_no_reply():
    x = Exchange(patterns=("email",))
    x.send(codec.parse_message("", "SELECT * FROM nowhere") + codec.FLUSH)
    x.reply(codec.error("42P01", "relation does not exist"))
    x.take_client()
    x.send(codec.parse_message("", "SELECT 1") + codec.bind_message("", "") + codec.execute("") + codec.SYNC)
    # The server ignores everything up to Sync after its error: the gateway does not send it.
    assert [t for t, _ in x.take_upstream()] == [b"P", b"H", b"S"]
    x.reply(codec.ready())  # the server skipped everything up to the Sync
    assert [t for t, _ in x.take_client()] == [b"Z"]
    assert not x.cs.queue


def test_non_utf8_statement_text_is_refused_with_22021():
    x = Exchange()
    x.send(codec.msg(b"Q", b"SELECT '\xff'\0"))
    (t, e), _ = x.take_client()
    assert codec.parse_fields(e)["C"] == "22021" and x.cs.state is State.READY


# --- the upstream side and the handshake -----------------------------------------------

def upstream_script():
    return (codec.auth(wire.AUTH_CLEARTEXT), codec.auth(wire.AUTH_OK) + codec.parameter_status("server_version", "15")
            + codec.parameter_status("application_name", "x") + codec.backend_key(4242, b"\1\2\3\4")
            + codec.ready() + b"TAIL")


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=20))
def test_upstream_side_same_result_however_split(cuts):
    first, second = upstream_script()
    side = us.UpstreamSide("u", "pw", "disable", {"user": "u"})
    sent = [c.data for c in side.start()]
    sent += [c.data for c in side.receive_data(first) if isinstance(c, us.Send)]
    ready = None
    pos = 0
    for n in cuts + [len(second)]:
        out = side.receive_data(second[pos:pos + n])
        pos += n
        ready = next((c for c in out if isinstance(c, us.Ready)), None)
        if ready is not None:
            break
    assert ready.pid == 4242 and ready.key == b"\1\2\3\4"
    assert ready.statuses == {"server_version": "15", "application_name": "x"}
    assert ready.rest + second[pos:] == b"TAIL"  # what followed ReadyForQuery is the client side's
    assert sent[-1] == codec.password(b"pw\0")
    assert side.receive_data(b"more") == []  # once ready, nothing more is the upstream side's


def test_upstream_side_refuses_what_it_cannot_do():
    side = us.UpstreamSide("u", None, "require", {"user": "u"})
    side.start()
    assert side.receive_data(b"N") == [us.Failed("08001", "upstream server does not support TLS")]
    side = us.UpstreamSide("u", None, "disable", {"user": "u"})
    side.start()
    (f,) = side.receive_data(codec.auth(wire.AUTH_MD5, b"salt"))
    assert f.code == "28P01"
    side = us.UpstreamSide("u", "pw", "disable", {"user": "u"})
    side.start()
    (f,) = side.receive_data(codec.auth(7))
    assert isinstance(f, us.Failed) and "unsupported" in f.message
    side = us.UpstreamSide("u", "pw", "disable", {"user": "u"})
    side.start()
    side.receive_data(codec.auth(wire.AUTH_SASL, b"SCRAM-SHA-256\0\0"))
    (f,) = side.receive_data(codec.auth(wire.AUTH_SASL_CONTINUE, b"r=" + side._scram.cnonce.encode() + b"x,i=4096"))
    assert isinstance(f, us.Failed) and "salt" in f.message  # was a KeyError


def handshake(token="tok"):
    verifier = ScramVerifier.make(token, iterations=4096)
    return hs.Handshake(verifier=lambda u: verifier if u == "agent" else None,
                        check_token=lambda u, t: t == token, client_auth="scram-sha-256", tls_offered=False,
                        cbind=None)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=30), max_size=10))
def test_handshake_same_result_however_split(cuts):
    h = handshake()
    client = ScramClient("tok", [MECH], None)
    data = codec.startup_message({"user": "agent", "database": "d"})
    out = []
    pos = 0
    for n in cuts + [len(data)]:
        out += h.receive_data(data[pos:pos + n])
        pos += n
    assert [type(c) for c in out] == [hs.Reply]
    out = h.receive_data(codec.sasl_initial(client.mech, client.first()))
    (reply,) = out
    t, p = read_all(reply.data)[0]
    final = codec.password(client.final(p[4:])) + codec.query("SELECT 1")
    out = []
    for i in range(len(final)):
        out += h.receive_data(final[i:i + 1])
    auth = [c for c in out if isinstance(c, hs.Authenticated)]
    assert auth and auth[0].user == "agent" and h.phase is hs.Phase.DONE
    assert h.scram is None  # no SCRAM keys or nonces kept for the connection's lifetime
    # fed a byte at a time, the query after the last SASL message is handed on whole
    assert auth[0].rest + b"".join(h.receive_data(b"")) in (b"", codec.query("SELECT 1")[:len(auth[0].rest)])


def test_handshake_wrong_token_and_unknown_user_fail_alike():
    for user, token in (("agent", "nope"), ("nobody", "tok")):
        h = handshake()
        h.receive_data(codec.startup_message({"user": user}))
        client = ScramClient(token, [MECH], None)
        (reply,) = h.receive_data(codec.sasl_initial(client.mech, client.first()))
        t, p = read_all(reply.data)[0]
        out = h.receive_data(codec.password(client.final(p[4:])))
        assert [type(c) for c in out] == [hs.AuthFailed, hs.Refuse] and out[1].code == "28P01"


# --- properties ----------------------------------------------------------------

SCRIPT = (codec.query("SELECT 1") + codec.parse_message("s", "SELECT $1::int", (23,))
          + codec.bind_message("", "s", (1,), (struct.pack("!i", 5),), (1,)) + codec.describe(b"P", "")
          + codec.execute("") + codec.SYNC + codec.query("DELETE FROM t") + codec.query("SELECT 2"))
SERVER = (result(b"1") + codec.msg(b"1") + codec.msg(b"2") + result(b"5")  # Describe's T, Execute's D C, Sync's Z
          + result(b"2"))


def run_split(cuts, server_cuts):
    x = Exchange(policy=deny_writes)
    for data, send, splits in ((SCRIPT, x.send, cuts), (SERVER, x.reply, server_cuts)):
        pos = 0
        for n in splits + [len(data)]:
            send(data[pos:pos + n])
            pos += n
    return x.upstream, x.client, [r for r in x.records if not isinstance(r, cmd.Trailing)]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=25), max_size=30),
       st.lists(st.integers(min_value=1, max_value=25), max_size=30))
def test_client_side_same_output_however_the_bytes_are_split(cuts, server_cuts):
    got = run_split(cuts, server_cuts)
    assert got == run_split([], [])
    client = read_all(got[1])
    assert [t for t, _ in client] == [b"T", b"D", b"C", b"Z", b"1", b"2", b"T", b"D", b"C", b"Z", b"E", b"Z",
                                      b"T", b"D", b"C", b"Z"]


class _Built:
    """codec's builders, noting which ones the round trips below use."""

    def __init__(self):
        self.names: set = set()

    def __getattr__(self, name):
        self.names.add(name)
        return getattr(codec, name)


built = _Built()


def _parse_negotiate(p: bytes):
    """NegotiateProtocolVersion: the gateway only ever writes it, so its reader is here."""
    version, n = struct.unpack_from("!ii", p)
    return version, [s.decode() for s in p[8:].split(b"\0")[:n]]


FIELD = codec.Field("email", 16384, 3, 25, -1, -1, 0)
ROUND_TRIPS = [
    (built.query("SELECT 1"), codec.parse_query, "SELECT 1"),
    (built.parse_message("n", "SELECT $1", (23, 25)), codec.parse_parse, codec.Parse("n", "SELECT $1", (23, 25))),
    (built.bind_message("p", "s", (0, 1), (b"x", None), (1,)), codec.parse_bind,
     codec.Bind("p", "s", (0, 1), (b"x", None), (1,))),
    (built.describe(b"S", "n"), codec.parse_describe, (b"S", "n")),
    (built.close(b"P", "p"), codec.parse_describe, (b"P", "p")),
    (built.execute("p", 10), codec.parse_execute, ("p", 10)),
    (built.sasl_initial("SCRAM-SHA-256", b"n,,n=,r=x"), codec.parse_sasl_initial, ("SCRAM-SHA-256", b"n,,n=,r=x")),
    (built.row_description([FIELD]), codec.parse_row_description, [FIELD]),
    (built.build_data_row([b"a", None, b""]), codec.parse_data_row, [b"a", None, b""]),
    (built.error("42501", "no", "ERROR", "d", "h"), codec.parse_fields,
     {"S": "ERROR", "V": "ERROR", "C": "42501", "M": "no", "D": "d", "H": "h"}),
    (built.command_complete("SELECT 3"), codec.parse_command_tag, "SELECT 3"),
    (built.notification(7, "ch", "hi"), codec.parse_notification, (7, "ch", "hi")),
    (built.copy_response(b"H", 1, (1, 1)), codec.parse_copy_response, (1, (1, 1))),
    (built.parameter_description((23, 25)), codec.parse_parameter_description, (23, 25)),
    (built.parameter_status("a", "b"), codec.parse_parameter_status, ("a", "b")),
    (built.backend_key(9, b"\0\1\2\3"), codec.parse_backend_key, (9, b"\0\1\2\3")),
    (built.auth(10, b"SCRAM-SHA-256\0\0"), codec.parse_auth, (10, b"SCRAM-SHA-256\0\0")),
    (built.ready(b"T"), codec.parse_ready, b"T"),
    (built.copy_fail("why"), codec.parse_query, "why"),
    (built.notice("careful", "01000", "d"), codec.parse_fields,
     {"S": "NOTICE", "V": "NOTICE", "C": "01000", "M": "careful", "D": "d"}),
    (built.password(b"tok\0"), bytes, b"tok\0"),
    (built.copy_data(b"1\t\\N\n"), bytes, b"1\t\\N\n"),
    (built.negotiate_protocol(0, ["_pq_.x", "_pq_.y"]), _parse_negotiate, (codec.PROTOCOL_30, ["_pq_.x", "_pq_.y"])),
]


@pytest.mark.parametrize("raw, parse, expected", ROUND_TRIPS, ids=[chr(r[0][0]) + str(i) for i, r in
                                                                   enumerate(ROUND_TRIPS)])
def test_build_then_parse_round_trip(raw, parse, expected):
    (t, p), = read_all(raw)
    assert t == raw[:1] and parse(p) == expected


# Builders whose messages have no type byte: their round trips are the properties below.
STARTUP_BUILDERS = {"startup_message", "ssl_request", "cancel_request"}
NOT_BUILDERS = {"msg", "cstr", "rows_from_tag"}  # the pieces builders are made of, and a tag's reader


def test_every_message_builder_has_a_round_trip():
    import inspect

    builders = {n for n, f in inspect.getmembers(codec, inspect.isfunction)
                if f.__module__ == codec.__name__ and not n.startswith(("parse_", "_"))} - NOT_BUILDERS
    assert builders - built.names - STARTUP_BUILDERS == set(), "a builder without a build-then-parse round trip"


_NAMES = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12)


@given(st.dictionaries(_NAMES.filter(bool), _NAMES, max_size=5), st.sampled_from([codec.PROTOCOL_30, codec.PROTOCOL_32]))
def test_startup_round_trip_property(params, code):
    raw = codec.startup_message(params, code)
    assert struct.unpack_from("!i", raw)[0] == len(raw)
    assert codec.parse_startup(raw[4:]) == codec.Startup(code, params)


@given(st.integers(-2**31, 2**31 - 1), st.binary(min_size=4, max_size=256))
def test_cancel_and_ssl_request_round_trip_property(pid, key):
    assert codec.parse_startup(codec.cancel_request(pid, key)[4:]) == codec.Startup(codec.CANCEL_REQUEST, pid=pid,
                                                                                     key=key)
    assert codec.parse_startup(codec.ssl_request()[4:]) == codec.Startup(codec.SSL_REQUEST)


@given(st.text(max_size=30), st.text(max_size=60), st.lists(st.integers(0, 2**31 - 1), max_size=5))
def test_parse_round_trip_property(name, sql, types_):
    name, sql = name.replace("\0", ""), sql.replace("\0", "")
    (t, p), = read_all(codec.parse_message(name, sql, tuple(types_)))
    assert codec.parse_parse(p) == codec.Parse(name, sql, tuple(types_))


@given(st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=6), st.sampled_from([(), (0,), (1,)]),
       st.lists(st.sampled_from([0, 1]), max_size=4))
def test_bind_round_trip_property(params, fmts, results):
    (t, p), = read_all(codec.bind_message("p", "s", fmts, tuple(params), tuple(results)))
    assert codec.parse_bind(p) == codec.Bind("p", "s", fmts, tuple(params), tuple(results))


# --- the fuzzer -------------------------------------------------------------------

def near_bind():
    """Bind payloads: valid ones, then cut, lengths and counts corrupted."""
    valid = st.builds(lambda params, fmts, res: codec.bind_message("", "", fmts, tuple(params), tuple(res))[5:],
                      st.lists(st.one_of(st.none(), st.binary(max_size=8)), max_size=4),
                      st.sampled_from([(), (0,), (1,), (0, 1)]), st.lists(st.integers(-2, 3), max_size=3))
    return st.one_of(valid, valid.flatmap(lambda p: st.integers(0, len(p)).map(lambda n: p[:n])),
                     valid.flatmap(lambda p: st.tuples(st.integers(0, max(0, len(p) - 1)), st.binary(min_size=1,
                               max_size=4)).map(lambda c: p[:c[0]] + c[1] + p[c[0] + len(c[1]):])))


def messages():
    execute = st.one_of(st.builds(lambda n, k: codec.execute(n, k)[5:], st.sampled_from(["", "p", "nope"]),
                                  st.integers(-5, 5)), st.binary(max_size=12))
    other = st.tuples(st.sampled_from(list(b"QPDCSHdcfFX")), st.binary(max_size=30))
    return st.lists(st.one_of(near_bind().map(lambda p: (ord("B"), p)), execute.map(lambda p: (ord("E"), p)),
                              other), min_size=1, max_size=8)


def test_fuzz_messages_reach_bind_and_execute_and_never_crash():
    reached = {"bind": 0, "execute": 0}
    real_bind, real_execute = codec.parse_bind, codec.parse_execute

    def bind(p):
        reached["bind"] += 1
        return real_bind(p)

    def execute(p):
        reached["execute"] += 1
        return real_execute(p)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(messages())
    def fuzz(msgs):
        x = Exchange(policy=lambda op: Allow("all"))
        for t, p in msgs:
            x.send(codec.msg(bytes([t]), p))
            if x.cs.state in (State.CLOSED, State.ERROR):
                break
        if x.cs.state is State.ERROR:
            fatal = [codec.parse_fields(p) for t, p in x.take_client() if t == b"E"][-1]
            assert fatal["S"] == "FATAL" and fatal["C"] == "08P01"

    codec.parse_bind, codec.parse_execute = bind, execute
    try:
        fuzz()
    finally:
        codec.parse_bind, codec.parse_execute = real_bind, real_execute
    assert reached["bind"] > 50 and reached["execute"] > 50, reached


# --- the search path ------------------------------------------------------------------

def _scope_reply(path=("pg_catalog", "shadow", "public"), rels=(("shadow", "t"),), status=b"I") -> bytes:
    """What the server answers to SCOPE_QUERY: three result sets, then ReadyForQuery."""
    import json

    def rs(rows, n):
        fields = [codec.Field(f"c{i}", 0, 0, 25, -1, -1, 0) for i in range(n)]
        return (codec.row_description(fields) + b"".join(codec.build_data_row(r) for r in rows)
                + codec.command_complete(f"SELECT {len(rows)}"))
    head = [json.dumps(list(path)).encode(), json.dumps([s for s in path if s != "pg_catalog"]).encode(),
            b"agent", None]
    return (rs([head], 4) + rs([[a.encode(), b.encode()] for a, b in rels], 2) + rs([], 2)
            + codec.ready(status))


def _units(x):
    return [r for r in x.records if isinstance(r, cmd.Record)]


def test_after_set_search_path_the_path_is_read_and_the_next_statement_waits_for_it():
    from hoopy.postgres.scope import SCOPE_QUERY

    seen = []
    x = Exchange(policy=lambda op: (seen.append(sorted(map(str, op.units))), Allow("all"))[1])
    x.send(codec.query("SET search_path = shadow, public"))
    # The statement, then at once the gateway's own query for the path (not the client's).
    assert x.take_upstream() == [(b"Q", b"SET search_path = shadow, public\0"), (b"Q", SCOPE_QUERY.encode() + b"\0")]
    x.send(codec.query("SELECT * FROM t"))
    assert x.take_upstream() == [] and x.cs.state is State.READING_PATH  # waits for the path
    x.reply(codec.command_complete("SET") + codec.ready(b"I"))
    assert x.take_client() == [(b"C", b"SET\0"), (b"Z", b"I")]
    x.reply(_scope_reply())
    assert x.take_client() == []  # the path's rows are the gateway's own
    assert x.take_upstream() == [(b"Q", b"SELECT * FROM t\0")]
    assert seen[-1] == ["read shadow.t"]


def test_a_pipelined_batch_after_a_path_change_refuses_unqualified_names():
    x = Exchange()
    x.send(codec.parse_message("", "SET search_path = shadow") + codec.bind_message("", "")
           + codec.execute("") + codec.parse_message("s2", "SELECT * FROM t") + codec.bind_message("", "s2"))
    x.reply(codec.msg(b"1") + codec.msg(b"2") + codec.command_complete("SET") + codec.msg(b"1"))
    refused = [m for m in x.take_client() if m[0] == b"E"]
    assert refused and b"search path may have changed" in refused[0][1]
    x.send(codec.SYNC)
    up = x.take_upstream()
    assert up[-1][0] == b"Q" and up[-2] == (b"S", b"")  # the path is read right after the Sync


def test_the_path_is_not_read_in_the_middle_of_copy_from_stdin():
    from hoopy.postgres.scope import SCOPE_QUERY

    x = Exchange()
    x.send(codec.query("SET search_path = shadow, public; COPY public.t FROM STDIN"))
    assert x.take_upstream() == [(b"Q", b"SET search_path = shadow, public; COPY public.t FROM STDIN\0")]
    x.send(codec.msg(b"d", b"1\n") + codec.msg(b"c", b""))
    assert [t for t, _ in x.take_upstream()] == [b"d", b"c"]
    x.reply(codec.command_complete("SET") + codec.msg(b"G", b"\0\0\1\0\0")
            + codec.command_complete("COPY 1") + codec.ready(b"I"))
    x.send(codec.query("SELECT * FROM t"))
    # Only now, before the next statement: the gateway's query first, the statement once it is known.
    assert x.take_upstream() == [(b"Q", SCOPE_QUERY.encode() + b"\0")]
    x.reply(_scope_reply())
    assert x.take_upstream() == [(b"Q", b"SELECT * FROM t\0")]


def test_the_end_of_a_transaction_that_changed_the_path_reads_it_again():
    from hoopy.postgres.scope import SCOPE_QUERY

    x = Exchange()
    x.send(codec.query("BEGIN")).reply(codec.command_complete("BEGIN") + codec.ready(b"T"))
    x.take_upstream()
    x.send(codec.query("SET LOCAL search_path = shadow, public"))
    x.reply(codec.command_complete("SET") + codec.ready(b"T")).reply(_scope_reply(status=b"T"))
    x.take_upstream()
    x.send(codec.query("COMMIT"))
    assert x.take_upstream() == [(b"Q", b"COMMIT\0"), (b"Q", SCOPE_QUERY.encode() + b"\0")]
    x.reply(codec.command_complete("COMMIT") + codec.ready(b"I"))
    x.reply(_scope_reply(path=("pg_catalog", "public"), rels=()))
    x.send(codec.query("SELECT 1"))
    assert x.take_upstream() == [(b"Q", b"SELECT 1\0")]  # no further read: the path is known, outside a transaction


# --- what an idle connection keeps ---------------------------------------------------------

def test_upstream_side_hands_the_catalog_over_and_keeps_no_rows():
    """The catalog read at connect (hundreds of rows: pg_catalog's relations) goes to the
    client side once; the upstream side keeps none of it for the connection's lifetime."""
    side = us.UpstreamSide("u", "pw", "disable", {"user": "u"}, catalog_sql="SELECT 1")
    side.start()
    side.receive_data(codec.auth(wire.AUTH_OK) + codec.backend_key(7, b"\1\2\3\4") + codec.ready())
    out = side.receive_data(_scope_reply(rels=[("shadow", f"t{i}") for i in range(300)]) + b"TAIL")
    ready = next(c for c in out if isinstance(c, us.Ready))
    assert len(ready.catalog) == 3 and len(ready.catalog[1]) == 300 and ready.rest == b"TAIL"
    assert side.catalog == [] and side._rows is None and not side.reader.buf


def test_equal_scopes_share_their_name_sets_and_unequal_ones_do_not(monkeypatch):
    import hoopy.postgres.scope as scope_mod

    def read(rels, funcs=()):
        # Fresh lists and strings each time, as each connection decodes its own rows.
        head = [['["pg_catalog", "public"]', '["public"]', "agent", None]]
        return Scope.from_results([head, [["pg_catalog", "".join(r)] for r in rels],
                                   [["public", "".join(f)] for f in funcs], []])
    a = read([f"pg_class{i}" for i in range(50)], ["f"])
    b = read([f"pg_class{i}" for i in range(50)], ["f"])
    c = read([f"pg_class{i}" for i in range(51)], ["g"])
    assert a.relations["pg_catalog"] is b.relations["pg_catalog"]
    assert a.functions["public"] is b.functions["public"]
    assert c.relations["pg_catalog"] == a.relations["pg_catalog"] | {"pg_class50"}
    assert c.functions["public"] == {"g"} and a.functions["public"] == {"f"}
    # Bounded: past the limit the table starts again, and every scope still says what it read.
    monkeypatch.setattr(scope_mod, "SHARED_NAMES_MAX", 60)
    d = read([f"x{i}" for i in range(40)])
    e = read([f"y{i}" for i in range(40)])
    assert sum(len(s) for s in scope_mod._SHARED) <= 60
    assert d.relations["pg_catalog"] == {f"x{i}" for i in range(40)}
    assert e.relations["pg_catalog"] == {f"y{i}" for i in range(40)}
    assert a.relations["pg_catalog"] == {f"pg_class{i}" for i in range(50)}
