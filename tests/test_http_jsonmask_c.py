"""The C scanner of JSON body masking (hoopy/http/_jsonmask.c) against the Python code it stands in
for: ``email_spans``/``email_redact`` against ``masking._email_spans``/``_replace``; ``valid`` never
True for bytes the masker's parse refuses; and the whole masker (``mask_json``, ``mask``,
``mask_sniffed``) with the C code against the same masker with the Python code only: the same bytes,
the same counts, or the same MaskError, byte for byte, over generated bodies (hypothesis and seeded
random: escapes, spellings, deep nesting, huge strings, invalid UTF-8, duplicate keys, odd numbers).
Then attacks: a value spelled other ways still masked through the fast path."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
import random
import re
import shutil
import sysconfig

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from hoopy.http import json_codec
from hoopy.http.masker import Masker
from hoopy.http.redaction import MaskError
from hoopy.policy import masking
from hoopy.policy.masking import _DOMAIN, _EMAIL, _LOCAL, BUILTIN, MASK, Detector, _email_spans, _replace

try:
    from hoopy.http import _jsonmask
except ImportError:
    _jsonmask = None

needs_c = pytest.mark.skipif(_jsonmask is None, reason="the C module is not built (see the first test)")
SOURCE = Path(json_codec.__file__).with_name("_jsonmask.c")


def _compiler() -> bool:
    cc = (sysconfig.get_config_var("CC") or "").split()
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return bool(cc) and shutil.which(cc[0]) is not None and headers.exists()


def test_the_c_module_is_built_where_a_compiler_is():
    """CI must not test only the fallback: with a compiler and the headers the module is there, built
    from this very source, for masking.py's regexes, and the masker and the email detector use it."""
    if not _compiler():
        pytest.skip("no C compiler or no Python headers: the Python code is used, as designed")
    if _jsonmask is None:
        pytest.fail("hoopy/http/_jsonmask.c is not built: pip install -e . or python3 setup.py build_ext --inplace")
    assert _jsonmask.SOURCE == hashlib.sha256(SOURCE.read_bytes()).hexdigest(), \
        "the built module is from another version of _jsonmask.c: rebuild it"
    assert (_jsonmask.DOMAIN, _jsonmask.LOCAL) == (_DOMAIN, _LOCAL), "masking.py's regexes changed: update the C code"
    if os.environ.get("HOOPY_JSONMASK") != "python":
        assert json_codec.valid is _jsonmask.valid
        assert json_codec.masked_key is not json_codec.masked_key_py
        assert BUILTIN["email"].spans is masking.email_spans_c
        assert BUILTIN["email"].replace is masking.email_replace_c


# --- the e-mail finder ---------------------------------------------------------------------

EMAILISH = st.text(alphabet="ab.-@_x1Z \"'<>+{}é%&\\\u200b\uff20\u0100\U0001f600", max_size=80)
LABEL = st.one_of(st.integers(0, 66), st.sampled_from([61, 62, 63, 64, 65])).flatmap(
    lambda n: st.text("a1-Z", min_size=n, max_size=n))
DOMAINISH = st.lists(st.tuples(LABEL, st.sampled_from([".", ".", "..", "-", "@", "_", "é", "\U0001f600", ""])),
                     max_size=6).map(lambda parts: "".join(a + b for a, b in parts))


@needs_c
@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(EMAILISH, DOMAINISH, st.tuples(EMAILISH, DOMAINISH).map("@".join)), st.integers(0, 3))
@example("a" * 63 + "@" + "b" * 63 + ".c", 1)
@example("x@y.z\U0001f600a@b.cc", 1)
def test_email_spans_and_redact_are_the_python_ones(text, reps):
    text = text * reps if reps else text
    spans = _email_spans(text)
    assert _jsonmask.email_spans(text) == spans == [m.span() for m in _EMAIL.finditer(text)]
    got = _jsonmask.email_redact(text, MASK)
    want = (_replace(text, spans), len(spans)) if spans else (text, 0)
    assert got == want and type(got[0]) is str
    assert got[0].isascii() == want[0].isascii()  # the same kind of str (an equal str of another kind is not ==)


@needs_c
def test_email_spans_are_linear():
    import time

    for text in ("@" * 400_000, "a" * 400_000 + "@", "a@" * 200_000, ("a@b." + "c" * 63) * 5000):
        t = time.thread_time()
        assert _jsonmask.email_spans(text) == _email_spans(text)
        assert time.thread_time() - t < 5


# --- a masked key: the regex, in linear time ---------------------------------------------

MASKISH = st.lists(st.sampled_from([MASK, '"', ":", " ", "\u00a0", "\u2003", "\x1c", "\x85", "x", "\u0100", "\U0001f600",
                                    "[REDACTED", "]", "\n"]), max_size=14).map("".join)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(MASKISH)
@example('[REDACTED]x"\u2003\x85:')
def test_masked_key_is_the_regex(text):
    want = bool(json_codec.MASKED_KEY.search(text))
    assert json_codec.masked_key_py(text) is want
    if _jsonmask is not None:
        assert _jsonmask.masked_key(text, MASK) is want


def test_masked_key_is_linear():
    import time

    for text in ('"' + (MASK + " ") * 200_000 + '",', '"' + (MASK + " ") * 200_000 + '" :', (MASK + '"') * 100_000):
        t = time.thread_time()
        want = json_codec.masked_key_py(text)
        if _jsonmask is not None:
            assert _jsonmask.masked_key(text, MASK) is want
        assert time.thread_time() - t < 5


# --- valid: never True for what the parse refuses ------------------------------------------

def parses(data: bytes) -> bool:
    try:
        json_codec.loads(data)
        return True
    except (ValueError, UnicodeDecodeError, MaskError, RecursionError):
        return False


NASTY = [b"", b" ", b"{", b"}", b"[1,]", b"{,}", b'{"a"}', b'{"a":}', b'{"a":1,}', b"01", b"-", b"-0", b"1.", b".5",
         b"1e", b"1e+", b"1E5", b"-0.0e-0", b"0.1e+3", b"1e400", b"-1e-400", b"18446744073709551616", b"1" * 64,
         b"1" * 65, b"1" * 5000, b"NaN", b"Infinity", b"-Infinity", b"nul", b"truex", b"true false", b'"\x1f"',
         b'"\x7f"', b'"\xed\xa0\x80"', b'"\xc0\xaf"', b'"\xe0\x80\xaf"', b'"\xf4\x90\x80\x80"', b'"\xf0\x9f\x98\x80"',
         b'"\xff"', b'"\xc3"', b'"\xc3\xa9"', b"\xef\xbb\xbf[1]", b'"a\\u0040b"', b'"\\\\"', b"[" * 256 + b"]" * 256,
         b"[" * 257 + b"]" * 257, b"[" * 1100 + b"]" * 1100, b'{"a":' * 300 + b"1" + b"}" * 300, b"[1] [2]",
         b"\t\r\n [ 1 , 2 ] \n", b"[1]\x00", b"\x0b[1]", b"[1]\xa0", b'{"a":1,"a":2}', b'"' + b"x" * 100_000 + b'"',
         b"[true,false,null]", b"[tru]", b'{"a" :1}', b"[1 2]", b"[,1]", b'"\xe2\x80\x8b"', b"-01", b"2.", b"[-]"]


@needs_c
@pytest.mark.parametrize("data", NASTY)
def test_valid_is_never_true_for_what_the_parse_refuses(data):
    if _jsonmask.valid(data):
        assert parses(data) and b"\\" not in data


@needs_c
@pytest.mark.parametrize("data", [b"1", b"-0", b"1E5", b'{"a":[1,2.5e-3,{"b":null}],"c":"\xc3\xa9\xf0\x9f\x98\x80"}',
                                  b" [ ] ", b"{}", b'"x"', b"[" * 256 + b"]" * 256, b'{"a":1,"a":2}'])
def test_valid_says_true_for_plain_json(data):
    assert _jsonmask.valid(data)


@needs_c
def test_valid_on_every_byte_and_cut():
    """Every single byte put into, and every cut of, a valid document."""
    doc = b'{"k": [1, -2.5E+3, "a\xc3\xa9b@c.de", true, null, {"x": false}], "z": "\xf0\x9f\x98\x80"}'
    for i in range(len(doc) + 1):
        for data in [doc[:i]] + [doc[:i] + bytes([c]) + doc[i:] for c in range(256)]:
            if _jsonmask.valid(data):
                assert parses(data) and b"\\" not in data, data


# --- the masker with C against the masker without ------------------------------------------

PY_EMAIL = Detector("email", masking._EMAIL, spans=_email_spans)  # the reference: Python only


@contextlib.contextmanager
def python_only():
    saved = json_codec.valid, json_codec.masked_key
    json_codec.valid, json_codec.masked_key = None, json_codec.masked_key_py
    try:
        yield
    finally:
        json_codec.valid, json_codec.masked_key = saved


CONFIGS = [
    ((), ("email",)),
    (("ssn",), ("email",)),
    (("ssn", "card.number"), ("email",)),
    (("SSN", "user.Email"), ("email", "credit_card")),
    (("token",), ("email", "us_ssn", "credit_card")),
    ((), ("email", "regex:secret-[0-9]+")),
    (("ssn",), ()),
]


def pair(fields, patterns):
    """(the masker as hoopy builds it, the same masker with the Python e-mail finder only)."""
    dets = tuple(masking.parse_detector(p) for p in patterns)
    ref = tuple(PY_EMAIL if d.name == "email" else d for d in dets)
    return Masker(fields, dets), Masker(fields, ref)


def outcome(fn, data):
    """What a call gives, or the exception it raises (its type and message): the two must agree on
    errors too (a UnicodeEncodeError the Python code raises on some invalid UTF-8 included)."""
    try:
        return fn(data)
    except Exception as e:  # noqa: BLE001 (compared, not hidden)
        return (type(e).__name__, str(e))


def same(data: bytes, configs=CONFIGS):
    for fields, patterns in configs:
        fast, ref = pair(fields, patterns)
        for name in ("mask_json", "mask_sniffed"):
            got = outcome(getattr(fast, name), data)
            with python_only():
                want = outcome(getattr(ref, name), data)
            assert got == want, (name, fields, patterns, data[:200])
        got = outcome(lambda d: fast.mask("json", d), data)
        with python_only():
            want = outcome(lambda d: ref.mask("json", d), data)
        assert got == want


WORDS = ["a@b.co", "user1@example.com", "x.y+z@sub.example.org", "ssn", "SSN", "Ssn", "number", "card", "email",
         "a%40b.co", "a&#64;b.co", "a&commat;b.co", "a\uff20b.co", "a\u200b@b.co", "a@b\u200b.co", "4111 1111 1111 1111",
         "4111111111111111", "123-45-6789", "secret-42", "\u00e9", "\U0001f600", "\u212aey", "<b>ssn: 1</b>",
         "ssn: 123", "ssn=1", "{\"ssn\": 1}", "[\"a@b.co\"]", '"', "\\", "\\u0040", "@", "@@", ".", "-", " ",
         "[REDACTED]", "[REDACTED]\":", "x" * 70, "a" * 64 + "@b.co"]
KEYS = st.sampled_from(["ssn", "SSN", "card", "number", "user", "Email", "a@b.co", "c@d.co", "x", "token",
                        "[REDACTED]", "k\u212aey", "é"])
TEXT = st.lists(st.sampled_from(WORDS) | st.text(max_size=8), max_size=5).map("".join)
NUMBERS = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from([4111111111111111, 378282246310005, 5555555555554444, 1234567890123]))
VALUES = st.recursive(st.none() | st.booleans() | NUMBERS | TEXT,
                      lambda kids: st.lists(kids, max_size=4) | st.lists(st.tuples(KEYS | TEXT, kids), max_size=4),
                      max_leaves=25)


def render(value, ascii_: bool, indent) -> str:
    """JSON text; a list of pairs is an object (its keys may repeat)."""
    if isinstance(value, list) and value and all(isinstance(p, tuple) for p in value):
        sep = ", " if indent else ","
        return "{" + sep.join(json.dumps(k, ensure_ascii=ascii_) + ":" + render(v, ascii_, indent) for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v, ascii_, indent) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_)


ODD_NUMBERS = [b"1E5", b"-0", b"0.0e-0", b"1e400", b"-1e-400", b"4111111111111111.0", b"4.111111111111111e15",
               b"41111111111111110e-1", b"1" * 30, b"1" * 70, b"-4111111111111111", b"NaN", b"Infinity"]


def mutate(data: bytes, rnd: random.Random) -> bytes:
    roll = rnd.random()
    if roll < 0.15:
        i = rnd.randrange(len(data) + 1)
        return data[:i] + rnd.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\x00", b"\x1f", b"\xef\xbb\xbf",
                                      b"\\", b'"', b",", b"]", b"}", b"@"]) + data[i:]
    if roll < 0.25:
        return data[:rnd.randrange(len(data) + 1)]
    if roll < 0.4 and b"0" in data:
        return data.replace(b"0", rnd.choice(ODD_NUMBERS), 1)
    return data


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(VALUES, st.booleans(), st.booleans(), st.randoms(use_true_random=False))
def test_the_masker_with_c_is_the_masker_without(value, ascii_, indent, rnd):
    data = render(value, ascii_, indent).encode("utf-8", "surrogatepass")
    same(data)
    same(mutate(data, rnd))


def seeded_bodies(seed: int, n: int):
    rnd = random.Random(seed)
    for _ in range(n):
        rows = []
        for i in range(rnd.randrange(1, 40)):
            row = {"id": rnd.choice([i, -i, i * 1.5, 4111111111111111, 10**20]),
                   rnd.choice(["email", "Email", "ssn", "note", "a@b.co"]): rnd.choice(WORDS) + rnd.choice(WORDS),
                   "nested": rnd.choice([None, {"card": {"number": rnd.choice(WORDS)}}, [rnd.choice(WORDS)] * 3])}
            rows.append(row)
        text = json.dumps({"rows": rows}, ensure_ascii=rnd.random() < 0.3,
                          indent=rnd.choice([None, 1]), separators=rnd.choice([None, (",", ":")]))
        data = text.encode("utf-8", "surrogatepass")
        kind = rnd.randrange(6)
        if kind == 0:  # duplicate keys
            data = data.replace(b'"id"', b'"ssn": 1, "ssn"', 1)
        elif kind == 1:  # deep nesting around it
            d = rnd.choice([10, 255, 256, 300, 1030])
            data = b'{"a":[' * d + data + b"]}" * d
        elif kind == 2:  # a huge string
            data = data[:-1] + b', "big": "' + b"x" * rnd.randrange(1, 300_000) + b' a@b.co"}'
        elif kind == 3:
            data = mutate(data, rnd)
        yield data


@pytest.mark.parametrize("seed", range(6))
def test_seeded_bodies(seed):
    for data in seeded_bodies(seed, 25):
        same(data)


def test_the_bench_body():
    import importlib.util

    spec = importlib.util.spec_from_file_location("jsonmask_bench", Path(__file__).parent.parent / "bench/jsonmask.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = bench.body()
    same(data, CONFIGS[:3])
    out, counts = bench.masker().mask_json(data)
    assert counts == {"email": data.count(b"@")} and b"@" not in out
    assert orjson.loads(out)["customers"][0]["email"] == MASK


# --- attacks: a value spelled another way through the fast path -------------------------

SPELLED = ["ada%40example.com", "ada&#64;example.com", "ada&#x40;example.com", "ada&commat;example.com",
           "ada\uff20example.com", "ada\ufe6bexample.com", "a\u200bda@example.com", "ada@exa\u200bmple.com",
           "ada\u00ad@example.com", "ada\\u0040example.com", "ada\\x40example.com", "ada\\100example.com",
           "ada%40example%2Ecom", "ada@example&period;com", "ADA@EXAMPLE.COM"]


@pytest.mark.parametrize("value", SPELLED)
@pytest.mark.parametrize("where", ["value", "key", "nested", "json-in-json", "array"])
def test_a_spelled_address_is_masked_as_before(value, where):
    if where == "value":
        body = {"contact": value, "n": 1}
    elif where == "key":
        body = {value: 1, "other": 2}
    elif where == "nested":
        body = {"a": [{"b": {"c": value}}]}
    elif where == "json-in-json":
        body = {"payload": json.dumps({"contact": value})}
    else:
        body = [value, value, 4]
    for ascii_ in (True, False):
        data = json.dumps(body, ensure_ascii=ascii_).encode()
        same(data, CONFIGS[:2])
        fast, _ = pair(("ssn",), ("email",))
        out, counts = fast.mask_json(data)
        assert counts.get("email"), (value, where, out)
        assert "example" not in out.decode()


def test_two_keys_masked_alike_stay_two():
    """Two address keys become the same masked key: the raw path declines, the walk keeps both."""
    data = b'{"a@b.co": 1, "c@d.co": 2, "x": "e@f.co"}'
    same(data)
    out, counts = pair((), ("email",))[0].mask_json(data)
    assert json.loads(out) == {MASK: 1, MASK + "#2": 2, "x": MASK} and counts == {"email": 3}


def test_invalid_json_is_refused_or_masked_as_text_as_before():
    for data in (b'{"a": "x@y.co", }', b'{"a": "x@y.co\xff"}', b'{"a": "x@y.co"} trailing'):
        same(data)
        fast, _ = pair(("ssn",), ("email",))
        with pytest.raises(MaskError):
            fast.mask_json(data)
        out, counts = pair((), ("email",))[0].mask_json(data)
        assert b"x@y.co" not in out
    deep = b"[" * 1100 + b'"x@y.co"' + b"]" * 1100
    same(deep)
    for fields in ((), ("ssn",)):
        with pytest.raises(MaskError):
            pair(fields, ("email",))[0].mask_json(deep)


def test_huge_and_deep_bodies():
    for data in (b'["' + b"a@b.co " * 200_000 + b'"]', b"[" * 256 + b'"a@b.co"' + b"]" * 256,
                 b"[" * 257 + b'"a@b.co"' + b"]" * 257, b'{"k":' * 1000 + b'"a@b.co"' + b"}" * 1000):
        same(data, CONFIGS[:2])


def test_the_fast_path_is_taken_for_the_usual_body(monkeypatch):
    """The point of the C scan: a body without backslashes is not parsed at all."""
    if _jsonmask is None or json_codec.valid is None:
        pytest.skip("no C module")
    calls = []
    monkeypatch.setattr(json_codec, "loads", lambda d: calls.append(d) or (orjson.loads(d), True))
    fast, _ = pair(("ssn",), ("email",))
    assert fast.mask_json(b'{"e": "a@b.co", "n": [1, 2]}') == (b'{"e": "[REDACTED]", "n": [1, 2]}', {"email": 1})
    assert calls == []
    assert re.sub(rb"\s", b"", fast.mask_json(b'{"ssn": 1, "e": "a\\u0040b.co"}')[0]) == \
        b'{"ssn":"[REDACTED]","e":"[REDACTED]"}'
    assert len(calls) == 1
