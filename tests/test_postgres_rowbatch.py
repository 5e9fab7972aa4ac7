"""Rows masked a run at a time (hoopy/postgres/rowbatch.py) against the per-row code
(``RowPlan.apply_many``, row by row through ``rewrite``, kept as the reference): the same
bytes out and the same redaction counts for every run of rows, however it is cut."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hoopy.policy.masking import BUILTIN
from hoopy.postgres import codec
from hoopy.postgres.rows import MaskRules

from tests.test_postgres_machines import Exchange

EMAIL = (BUILTIN["email"],)
# Pieces a value is made of: addresses plain and spelled otherwise, near-misses, the marks
# the batch looks for in odd places, non-UTF-8 bytes, notations (bytea hex, float exponent).
PIECES = [b"ann@example.com", b"a.b+c@mail.example.org", b"x@y", b"@", b"@@", b"a@b.c", b"-@-.-", b"@example.com",
          b"ann%40example.com", b"ann\\u0040example.com", b"ann&#64;example.com", b"ann&commat;example.com",
          "ann\uff20example.com".encode(), "ann\u200b@example.com".encode(), b"ann\\x40example.com",
          b"\\x616e6e406578616d706c652e636f6d", b"4.111111111111111e+15", b"+", b"%", b"&", b"\\", b"\xff\xfe",
          "é".encode(), b" ", b".", b"-", b"a" * 70, b"D", b"\x00", b"{\"e\": \"bob@example.net\"}", b"1", b"42"]
value = st.one_of(st.none(), st.lists(st.sampled_from(PIECES), max_size=5).map(b"".join),
                  st.binary(max_size=12))
# (type OID, format): text, varchar, json, jsonb, int4, numeric, a text array, uuid, bool; text and binary.
COLUMN = st.sampled_from([(25, 0), (1043, 0), (114, 0), (3802, 0), (23, 0), (1700, 0), (1009, 0), (2950, 0),
                          (16, 0), (25, 1), (3802, 1)])


def _plan(columns, detectors=EMAIL):
    fields = [codec.Field(f"c{i}", 0, 0, t, -1, -1, fmt) for i, (t, fmt) in enumerate(columns)]
    return MaskRules(detectors).plan(fields, None)


def _rows(rows) -> bytes:
    return b"".join(codec.build_data_row(r) for r in rows)


def _read(data: bytes):
    r = codec.MessageReader()
    r.feed(data)
    return list(r)


def _both(columns, rows, detectors=EMAIL):
    """(batch output, its summary), (reference output, its summary); None when no plan."""
    raw = _rows(rows)
    batch, ref = _plan(columns, detectors), _plan(columns, detectors)
    if batch is None or batch.prefilter is None:
        return None
    out, stop, n = batch.mask_rows(raw, 0, len(raw))
    assert (stop, n) == (len(raw), len(rows))
    return (raw if out is None else out, batch.summary()), (ref.apply_many(raw), ref.summary())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(COLUMN, min_size=1, max_size=4).flatmap(
    lambda cols: st.tuples(st.just(cols), st.lists(st.lists(value, min_size=len(cols), max_size=len(cols)),
                                                   min_size=1, max_size=8))))
def test_a_run_masked_at_once_is_the_rows_masked_one_by_one(case):
    columns, rows = case
    got = _both(columns, rows)
    if got is not None:
        assert got[0] == got[1]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(value, min_size=2, max_size=2), min_size=1, max_size=6),
       st.sampled_from([(BUILTIN["email"], BUILTIN["credit_card"]), (BUILTIN["us_ssn"],)]))
def test_other_patterns_take_the_per_row_way_with_the_same_result(rows, detectors):
    got = _both([(25, 0), (25, 0)], rows, detectors)
    assert got is not None and got[0] == got[1]
    assert _plan([(25, 0)], detectors).batch_kinds is None


def test_the_batch_is_used_for_the_email_pattern_and_masks_every_row():
    plan = _plan([(23, 0), (25, 0), (25, 0)])
    assert plan.batch_kinds == [1, 5, 5]
    raw = _rows([[str(g).encode(), b"user%d@example.com" % g, b"c4ca4238a0b923820dcc509a6f75849b"]
                 for g in range(1, 1001)])
    out, stop, n = plan.mask_rows(raw, 0, len(raw))
    assert (stop, n) == (len(raw), 1000)
    assert [codec.parse_data_row(p)[1] for _, p in _read(out)] == [b"[REDACTED]"] * 1000
    assert plan.summary() == {"columns": {}, "patterns": {"email": 1000}}


def test_rows_with_more_values_than_columns_or_no_count_are_read_as_before():
    plan, ref = _plan([(25, 0)]), _plan([(25, 0)])
    extra = codec.build_data_row([b"a@b.example", b"c@d.example"])
    short = codec.msg(b"D", b"@")  # no column count: the per-row code fails it
    assert plan.mask_rows(extra, 0, len(extra))[0] == ref.apply_many(extra)
    with pytest.raises(codec.ProtocolError):
        ref.apply_many(short)
    with pytest.raises(codec.ProtocolError):
        plan.mask_rows(short, 0, len(short))


@pytest.mark.parametrize("body", [
    struct.pack("!hi", 1, 50) + b"a@b.example",  # a value running past its row
    struct.pack("!hi", 2, 11) + b"a@b.example" + b"\xff\xff",  # a length cut short
    struct.pack("!hi", 1, -2) + b"@",  # a negative length other than NULL's
])
def test_a_malformed_row_with_a_candidate_fails_as_before(body):
    raw = codec.msg(b"D", body)
    with pytest.raises(codec.ProtocolError):
        _plan([(25, 0), (25, 0)]).apply_many(raw)
    with pytest.raises(codec.ProtocolError):
        _plan([(25, 0), (25, 0)]).mask_rows(raw, 0, len(raw))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(value, min_size=2, max_size=2), min_size=1, max_size=6), st.data())
def test_through_the_client_side_the_same_however_the_reply_is_cut(rows, data):
    """Rows split across reads: the batch sees partial runs; the client gets what the per-row code gave."""
    reply = (codec.row_description([codec.Field("a", 0, 0, 25, -1, -1, 0), codec.Field("b", 0, 0, 23, -1, -1, 0)])
             + _rows(rows) + codec.command_complete(f"SELECT {len(rows)}") + codec.ready())
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(reply) - 1), max_size=6))))
    x = Exchange(patterns=("email",))
    x.send(codec.query("SELECT a, b FROM t"))
    last = 0
    for c in cuts + [len(reply)]:
        x.reply(reply[last:c])
        last = c
    got = [p for t, p in x.take_client() if t == b"D"]
    ref = _plan([(25, 0), (23, 0)])
    want = [p for t, p in _read(ref.apply_many(_rows(rows)))]
    assert got == want
    redacted = [r for r in x.records if type(r).__name__ == "Redacted"]
    s = ref.summary()
    assert [(r.count, r.data["patterns"]) for r in redacted] == ([(sum(s["patterns"].values()), s["patterns"])] if s else [])


def test_every_length_byte_next_to_an_address_at_either_end_of_a_value():
    """A length byte can be a local-part or domain character ("a" is 97), and the next row starts
    with "D": an address at the very start or end of a value is read within the value, as the
    per-row code reads it."""
    rows = []
    for n in range(1, 300):
        pad = b"x" * max(0, n - 30)
        rows.append([b"ann@example.com" + pad, pad + b"bo@example.org", b"a@b.cd"[:n % 7],
                     b"@" + pad + b"@z.io" if n % 2 else pad + b"zed@z.io"])
    got = _both([(25, 0), (1043, 0), (25, 0), (25, 0)], rows)
    assert got is not None and got[0] == got[1]
    assert got[0][1]["patterns"]["email"] > 600
