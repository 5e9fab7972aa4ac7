"""The chain's canonical bytes, frozen: a store written by any hoopy must verify with every
later one, whatever JSON library it uses. These hashes were computed once and are written
here by hand; a change that moves any of them breaks every existing store.

v1: the format of hoopy 0.1 (computed with its json-module code, before the encoder was
written out by hand). v2: the format with chained row writes. The signed-head message too."""
import datetime
import enum
import hashlib
import json
import uuid

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
    # (written by the hoopy of 2026-12-01 before hoopy/audit/_canon.c)
    (dict(seq=3, time_us=18446744073709551621, gateway='', session='', identity='😀́éé', connection='中文', protocol='ssh', peer='\ufeff\uffff\x85', kind='operation', outcome='allowed', data='{"nan":NaN,"params":[1.5,-0.0,1e-05,1e+16,1180591620717411303424,-9223372036854775809,null,true,{"a":{},"z":[]}],"text":"UPDATE t SET x = \'é😀\\\\n\' WHERE y = \\"\\u0000\\u001f\x7f\\""}', writes='{"sessions":{"gateway":"","id":"","model":"m\u2028"}}'),
     b'hoopy-chain-v2\nc3e079ea0722c1f422d9d2380bb559220fe43beaaf509fe482c364ca192a8f2a\n[3,18446744073709551621,"","","\xf0\x9f\x98\x80\xcc\x81e\xcc\x81\xc3\xa9","\xe4\xb8\xad\xe6\x96\x87","ssh","\xef\xbb\xbf\xef\xbf\xbf\xc2\x85","operation","allowed","{\\"nan\\":NaN,\\"params\\":[1.5,-0.0,1e-05,1e+16,1180591620717411303424,-9223372036854775809,null,true,{\\"a\\":{},\\"z\\":[]}],\\"text\\":\\"UPDATE t SET x = \'\xc3\xa9\xf0\x9f\x98\x80\\\\\\\\n\' WHERE y = \\\\\\"\\\\u0000\\\\u001f\x7f\\\\\\"\\"}","{\\"sessions\\":{\\"gateway\\":\\"\\",\\"id\\":\\"\\",\\"model\\":\\"m\xe2\x80\xa8\\"}}"]',
     '8a875933f4b49bd698eae528da89de647a344677d18af69d37c0c285665843d5'),
    # (written by the hoopy of 2026-12-01 before hoopy/audit/_canon.c)
    (dict(seq=-9223372036854775808, time_us=-1180591620717411303424, gateway='g', session=None, identity=None, connection=None, protocol=None, peer=None, kind='', outcome='', data='', writes=''),
     b'hoopy-chain-v2\n8a875933f4b49bd698eae528da89de647a344677d18af69d37c0c285665843d5\n[-9223372036854775808,-1180591620717411303424,"g",null,null,null,null,null,"","","",""]',
     '039c6cceff504fffda3dd678583103820b1a8631f78c5904f977d358bfb9f4c4'),
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
    assert chain._array(values) == chain_array(values)
    assert chain._array_bytes(values) == chain_array(values).encode()  # the fast path links use


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


# What ``canonical_json`` (the ``data`` and ``writes`` columns) wrote before it used orjson, frozen
# here: the hash covers the stored string, so these bytes are not the chain's format, but a faster
# encoder must not change what an event's data reads as (nor a row's ``writes``, which verify
# compares with the tables).
class Color(enum.Enum):
    RED = 1


class _S(str):
    pass


class _I(int):
    pass


CANONICAL = [
    ('{"params": [1.5, -0.0, 1e-05, 1e16, 2**70, -2**63 - 1, None, True, {"z": [], "a": {}}], "text": "UPDATE t SET x = \'\\u00e9\\U0001F600\\\\n\' WHERE y = \\"\\x00\\x1f\\x7f\\"", "nan": float("nan")}',
     '{"nan":NaN,"params":[1.5,-0.0,1e-05,1e+16,1180591620717411303424,-9223372036854775809,null,true,{"a":{},"z":[]}],"text":"UPDATE t SET x = \'é😀\\\\n\' WHERE y = \\"\\u0000\\u001f\x7f\\""}'),
    ('{}',
     '{}'),
    ('{"text": "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;", "rule": "read", "statement": "SelectStmt", "tables": ["public.pgbench_accounts"], "parts": [["read", "public.pgbench_accounts"]]}',
     '{"parts":[["read","public.pgbench_accounts"]],"rule":"read","statement":"SelectStmt","tables":["public.pgbench_accounts"],"text":"SELECT abalance FROM pgbench_accounts WHERE aid = 4711;"}'),
    ('{"z": 1, "a": {"y": [True, False, None], "b": -9223372036854775808, "c": 18446744073709551615}}',
     '{"a":{"b":-9223372036854775808,"c":18446744073709551615,"y":[true,false,null]},"z":1}'),
    ('{"n": 2**64, "m": -2**63 - 1}',
     '{"m":-9223372036854775809,"n":18446744073709551616}'),
    ('{"ms": 0.012, "s": 1.5, "big": 1e16, "bigger": 1.5e17, "tiny": 1e-05, "t2": 3.0517578125e-05, "zero": 0.0, "nz": -0.0, "e": 1e-4}',
     '{"big":1e+16,"bigger":1.5e+17,"e":0.0001,"ms":0.012,"nz":-0.0,"s":1.5,"t2":3.0517578125e-05,"tiny":1e-05,"zero":0.0}'),
    ('{"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf")}',
     '{"inf":Infinity,"nan":NaN,"ninf":-Infinity}'),
    ('{"t": "\\x00\\x01\\x1f\\x7f\\x80\\u2028\\u2029\\"\\\\/\\n\\t\\b\\f\\r é中😀\\ufeff"}',
     '{"t":"\\u0000\\u0001\\u001f\x7f\x80\u2028\u2029\\"\\\\/\\n\\t\\b\\f\\r é中😀\ufeff"}'),
    ('{"s": "bad\\udc80", "k\\udc81": ["\\ud800"]}',
     '{"k\\udc81":["\\ud800"],"s":"bad\\udc80"}'),
    ('{1: "int key", 2: "another"}',
     '{"1":"int key","2":"another"}'),
    ('{2.5: "float key"}',
     '{"2.5":"float key"}'),
    ('{None: "none key"}',
     '{"null":"none key"}'),
    ('{True: "bool key"}',
     '{"true":"bool key"}'),
    ('{"tup": (1, "x"), "nested": [[{"b": 1, "a": 2}]]}',
     '{"nested":[[{"a":2,"b":1}]],"tup":[1,"x"]}'),
    ('{"b": b"bytes", "e": Color.RED, "d": datetime.datetime(2026, 1, 2, 3, 4, 5), "u": uuid.UUID(int=1), "sub": S("x"), "i": I(7), "set": frozenset()}',
     '{"b":"b\'bytes\'","d":"2026-01-02 03:04:05","e":"Color.RED","i":7,"set":"frozenset()","sub":"x","u":"00000000-0000-0000-0000-000000000001"}'),
    ('{"é": 1, "e": 2, "E": 3, "\\u00e9\\u0301": 4, "😀": 5, "\\uffff": 6}',
     '{"E":3,"e":2,"é":1,"é́":4,"\uffff":6,"😀":5}'),
]


@pytest.mark.parametrize("source,expected", CANONICAL)
def test_canonical_json_is_frozen(source, expected):
    ns = {"Color": Color, "S": _S, "I": _I, "datetime": datetime, "uuid": uuid}
    assert chain.canonical_json(eval(source, ns)) == expected


def test_canonical_json_still_refuses_what_it_refused():
    for bad in ({1: "x", "a": "mixed keys"}, {"r": [1, {2: 3, "x": 4}]}):
        with pytest.raises(TypeError):
            chain.canonical_json(bad)
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises((ValueError, TypeError)):
        chain.canonical_json(loop)


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.text(max_size=10), _JSONISH, max_size=8))
def test_canonical_json_is_the_json_module_for_every_value(obj):
    """Whatever the fast path, the bytes are the standard library's (sorted keys, no spaces,
    UTF-8 as itself, repr of floats, NaN as NaN, a lone surrogate \\u-escaped)."""
    try:
        want = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        want.encode("utf-8")
    except UnicodeEncodeError:
        want = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    assert chain.canonical_json(obj) == want


def test_a_lone_surrogate_in_a_chained_column_still_fails_to_link():
    """A column the gateway never writes that way (an edited row holding a lone surrogate): the
    fast path refuses it as the standard library did, and verify reports an edit."""
    with pytest.raises(UnicodeEncodeError):
        chain._array_bytes([1, "bad\udc80"])
    row = dict(V2[0][0], peer="x\udc80")
    with pytest.raises(chain.Break):
        chain.Walker().step(dict(row, prev=GENESIS, hash="0" * 64))
    assert chain._array_bytes([2 ** 64, -2 ** 63 - 1]) == b"[18446744073709551616,-9223372036854775809]"


def test_the_writers_link_is_link():
    """write_batch links a row given as its values in FIELDS_V2 order (chain.link_v2)."""
    prev = GENESIS
    for row, _, expected in V2:
        assert chain.link_v2(prev, [row[f] for f in chain.FIELDS_V2]) == expected
        prev = expected
