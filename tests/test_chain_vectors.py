"""The chain's canonical bytes, frozen: a store written by any hoopy must verify with every
later one, whatever JSON library it uses. These hashes were computed once and are written
here by hand; a change that moves any of them breaks every existing store.

v1: the format of hoopy 0.1 (computed with its json-module code, before the encoder was
written out by hand). v2: the format with chained row writes. The signed-head message too."""
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.audit import chain
from hoopy.audit.chain import GENESIS, chain_array, link, link_bytes
from hoopy.audit.signing import head_message

V1 = [
    (dict(seq=1, time_us=1767225600000000, gateway="gw-1", session="0123456789abcdef", identity="billing-agent",
          connection="billing-db", protocol="postgres", peer="127.0.0.1:40000", kind="session.start",
          outcome="ok", data="{}"),
     "1b82ba8f8056f88ab49c041736dba00fb2bc616675b09e16f8c026cc8d67b0b2"),
    (dict(seq=2, time_us=1767225600123456, gateway="gw-1", session="0123456789abcdef", identity="billing-agent",
          connection="billing-db", protocol="postgres", peer="[::1]:40000", kind="operation", outcome="refused",
          data='{"b":true,"f":null,"l":[1,"x"],"n":12345678901234567890,"text":"SELECT \'\u00e9\u2028'
               '\\u001b[2J\\"\\\\\\n\\t\\r\\b\\f\\u0000\x7f\x9f\u202e\U0001F600\'"}'),
     "91aba246a6ab118aca47f8b8278b506b4a444625fcaea387bf4a45e80fe8fd88"),
    (dict(seq=3, time_us=0, gateway="g", session=None, identity=None, connection=None, protocol=None, peer=None,
          kind="auth.failed", outcome=None, data='{"user":"\\u0000"}'),
     "078406d7c5f54cd45423d43d05006e85c479fa592e751ee9172b33a314d08e55"),
    (dict(seq=4, time_us=-1, gateway="gw\u00e9\u4e2d", session="s\x01\x1f", identity="id\"\\/",
          connection="c\u2029\ufeff", protocol="p\U0001F600", peer="\x7f\x80", kind="k\n\r\t\b\f",
          outcome="o\u0085", data="d"),
     "20b0cafb86d3a4a31c9b1f9ae2ad6c60b23858482577b5081832f6fc39079867"),
]

V2 = [
    (dict(seq=1, time_us=1767225600000000, gateway="gw-1", session="0123456789abcdef", identity="billing-agent",
          connection="billing-db", protocol="postgres", peer="127.0.0.1:40000", kind="session.start",
          outcome="ok", data="{}",
          writes='{"sessions":{"gateway":"gw-1","id":"0123456789abcdef","started_us":1767225600000000}}'),
     b'hoopy-chain-v2\n0000000000000000000000000000000000000000000000000000000000000000\n[1,1767225600000000,'
     b'"gw-1","0123456789abcdef","billing-agent","billing-db","postgres","127.0.0.1:40000","session.start","ok",'
     b'"{}","{\\"sessions\\":{\\"gateway\\":\\"gw-1\\",\\"id\\":\\"0123456789abcdef\\",\\"started_us\\":'
     b'1767225600000000}}"]',
     "1f4bd2e4f855e02bc8104c862953ace3f642ad451ac8816ad6e8db5cdf7a9781"),
    (dict(seq=2, time_us=5, gateway="gw\u00e9", session=None, identity='id"\\', connection=None, protocol=None,
          peer="\x7f\x80\u2028", kind="k\n\x01", outcome=None, data='{"a":1}', writes="{}"),
     b'hoopy-chain-v2\n1f4bd2e4f855e02bc8104c862953ace3f642ad451ac8816ad6e8db5cdf7a9781\n[2,5,"gw\xc3\xa9",null,'
     b'"id\\"\\\\",null,null,"\x7f\xc2\x80\xe2\x80\xa8","k\\n\\u0001",null,"{\\"a\\":1}","{}"]',
     "c3e079ea0722c1f422d9d2380bb559220fe43beaaf509fe482c364ca192a8f2a"),
]


def test_v1_links_are_what_hoopy_0_1_wrote():
    prev = GENESIS
    for row, expected in V1:
        assert link(prev, row) == expected, row["seq"]
        prev = expected
    # A v1 row read from a store whose events table gained the column later: writes is NULL.
    row, expected = V1[0]
    assert link(GENESIS, dict(row, writes=None, signature="x")) == expected


def test_v2_links_and_their_exact_bytes():
    prev = GENESIS
    for row, body, expected in V2:
        assert link_bytes(prev, row) == body
        assert hashlib.sha256(body).hexdigest() == expected
        assert link(prev, row) == expected
        prev = expected


def test_v1_and_v2_never_collide():
    row, _ = V1[0]
    assert link(GENESIS, dict(row, writes="{}")) != link(GENESIS, row)


def test_signed_head_message_is_frozen():
    assert head_message(42, "ab" * 32) == b"hoopy-chain-head-v1\n42\n" + b"ab" * 32 + b"\n"


def test_the_data_column_is_hashed_as_stored_whatever_encoded_it():
    """Another JSON library (orjson) writes other bytes for the same object; the hash covers
    the string stored, so both verify, and neither can be turned into the other unnoticed."""
    orjson = pytest.importorskip("orjson")
    obj = {"text": "SELECT 'é'", "n": 1.5, "z": [1, 2], "a": None}
    stdlib = chain.canonical_json(obj)
    other = orjson.dumps(obj).decode()  # key order as given, other spacing rules
    assert stdlib != other
    base = dict(V1[0][0], writes="{}")
    h1, h2 = link(GENESIS, dict(base, data=stdlib)), link(GENESIS, dict(base, data=other))
    assert h1 != h2
    for data, h in ((stdlib, h1), (other, h2)):
        row = dict(base, data=data, prev=GENESIS, hash=h)
        assert chain.verify_rows([row]) == (1, 1, h)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(min_value=-2**70, max_value=2**70),
                          st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)),
                max_size=12))
def test_the_hand_written_encoder_is_the_json_module_of_hoopy_0_1(values):
    """The bytes v1 hashed were json.dumps(..., separators=(",", ":"), ensure_ascii=False): the
    hand-written encoder must agree with it on every list of integers, strings and NULLs."""
    assert chain_array(values) == json.dumps(values, separators=(",", ":"), ensure_ascii=False)
    assert chain._array(values) == chain_array(values)  # the fast path links use


def test_values_the_gateway_never_writes_are_refused():
    for bad in (True, 1.5, b"x", ["x"]):
        with pytest.raises(TypeError):
            chain_array([bad])


def test_a_lone_surrogate_cannot_make_a_batch_unwritable():
    """Bytes decoded with surrogateescape reach event data: stored \\u-escaped, never an
    error that refuses every operation in the same batch."""
    text = chain.canonical_json({"t": "bad\udc80"})
    text.encode("utf-8")
    assert json.loads(text) == {"t": "bad\udc80"}
