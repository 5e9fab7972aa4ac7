"""Adversarial tests of JSON body masking's C fast path (hoopy/http/_jsonmask.c) and of the raw path it
feeds: the C code against the Python reference (bytes out, counts, errors), and a value that must be
masked reaching the client unmasked (through the C path, or through both paths).

The differential part complements tests/test_http_jsonmask_c.py with generators aimed at the C code's
edges: str of every kind (latin-1, UCS-2, UCS-4, lone surrogates from surrogateescape), labels at the
63-character limit, the 8-byte word scan of strings at every offset, Unicode whitespace after a mask,
grammar-built near-JSON mutated byte by byte, and whole bodies of attacker-chosen values."""
from __future__ import annotations

import contextlib
import json
import random
import re
import time

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from hoopy.http import json_codec
from hoopy.http.masker import Masker
from hoopy.http.redaction import MaskError
from hoopy.policy import masking
from hoopy.policy.masking import _EMAIL, MASK, Detector, _email_spans, _replace

try:
    from hoopy.http import _jsonmask
except ImportError:
    _jsonmask = None

needs_c = pytest.mark.skipif(_jsonmask is None, reason="the C module is not built")
PY_EMAIL = Detector("email", masking._EMAIL, spans=_email_spans)


@contextlib.contextmanager
def python_only():
    saved = json_codec.valid, json_codec.masked_key
    json_codec.valid, json_codec.masked_key = None, json_codec.masked_key_py
    try:
        yield
    finally:
        json_codec.valid, json_codec.masked_key = saved


def outcome(fn, data):
    try:
        return fn(data)
    except Exception as e:  # noqa: BLE001 (compared, not hidden)
        return (type(e).__name__, str(e))


CONFIGS = [((), ("email",)), (("ssn",), ("email",)), (("ssn", "card.number"), ("email", "credit_card")),
           (("token",), ("email", "us_ssn"))]


def same(data: bytes, configs=CONFIGS):
    """The masker with the C code gives what the masker with only the Python code gives."""
    for fields, patterns in configs:
        dets = tuple(masking.parse_detector(p) for p in patterns)
        fast = Masker(fields, dets)
        ref = Masker(fields, tuple(PY_EMAIL if d.name == "email" else d for d in dets))
        for name in ("mask_json", "mask_sniffed"):
            got = outcome(getattr(fast, name), data)
            with python_only():
                want = outcome(getattr(ref, name), data)
            assert got == want, (name, fields, patterns, data[:300])


# --- the C primitives against their Python twins -------------------------------------------

# characters of every str kind: ASCII, latin-1, UCS-2 (fullwidth at, zero-width, a lone surrogate),
# UCS-4; local-part punctuation; the characters the domain scan stops at
ALPHABET = ("aZ09.-_+!#$%&'*/=?^`{|}~@\"\\ \t\n:[]" "\u00e9\u00ff\u0100\uff20\u200b\udcff\U0001f600\U000e0020")
LABELS = st.integers(0, 70).flatmap(lambda n: st.text("a9-", min_size=n, max_size=n))
PIECES = st.one_of(st.text(ALPHABET, max_size=12), LABELS, st.sampled_from(["@", ".", "a@b.co", "x.y@a.b.c", "-@-."]))
TEXTS = st.lists(PIECES, max_size=12).map("".join)


@needs_c
@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(TEXTS)
@example("a@" + "b" * 63 + "." + "c" * 63 + "-" + "d" * 10)
@example("a@b." + "c" * 62 + "-")
@example("\udcff@a.bc")
@example("a@b.c\U0001f600" + "d@e.fg")
@example("@a.b" * 50 + "@")
def test_email_c_is_the_regex_on_every_str_kind(text):
    spans = [m.span() for m in _EMAIL.finditer(text)]
    assert _email_spans(text) == spans
    assert _jsonmask.email_spans(text) == spans
    got = _jsonmask.email_redact(text, MASK)
    assert got == (_replace(text, spans), len(spans))
    # a non-ASCII mask takes the joined path
    assert _jsonmask.email_redact(text, "\u2588") == (_replace_with(text, spans, "\u2588"), len(spans))


def _replace_with(text, spans, mask):
    out, pos = [], 0
    for s, e in spans:
        out += (text[pos:s], mask)
        pos = e
    return "".join(out) + text[pos:]


SPACES = "\t\n\r \x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u202f\u3000\u200b\ufeff"
KEYTEXT = st.lists(st.sampled_from([MASK, '"', ":", "x", "[REDACTED", "REDACTED]", "\u00e9", "\U0001f600"]
                                   + list(SPACES)), max_size=20).map("".join)


@needs_c
@settings(max_examples=600, deadline=None)
@given(KEYTEXT)
def test_masked_key_c_is_the_regex_with_unicode_space(text):
    want = json_codec.MASKED_KEY.search(text) is not None
    assert json_codec.masked_key_py(text) == want
    assert _jsonmask.masked_key(text, MASK) == want


def parses(data: bytes) -> bool:
    try:
        json_codec.loads(data)
        return True
    except (ValueError, UnicodeDecodeError, MaskError, RecursionError):
        return False


NUMS = st.sampled_from(["0", "-0", "1", "-1", "1.5", "1e5", "1E+5", "1e-5", "-0.0e0", "01", "1.", ".5", "-", "1e",
                        "1e+", "+1", "0x1", "1_0", "NaN", "Infinity", "-Infinity", "1" * 64, "1" * 65, "9" * 63 + ".5",
                        "1e99999", "4111111111111111"])
STRS = st.text(alphabet="ab@.\u00e9\U0001f600\x7f\x1f\x00\"", max_size=20).map(
    lambda s: '"' + s.replace('"', "") + '"')
JVALUES = st.recursive(st.one_of(NUMS, STRS, st.sampled_from(["true", "false", "null", "tru", "nul"])),
                       lambda kids: st.lists(kids, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
                       | st.lists(st.tuples(STRS, kids), max_size=4).map(
                           lambda kv: "{" + ",".join(k + ":" + v for k, v in kv) + "}"),
                       max_leaves=20)
RAW_BYTES = [b"\xff", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x8f\xbf\xbf",
             b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\x80", b"\xef\xbb\xbf",
             b"\x00", b"\x0b", b"\x0c", b"\xa0", b"\xc2\xa0", b"\xe3\x80\x80", b",", b":", b"]", b"}", b'"', b"\\"]


@needs_c
@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(JVALUES, st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(RAW_BYTES)), max_size=3),
       st.sampled_from(["", " ", "\n", "\t\r\n "]), st.integers(0, 7))
def test_valid_never_true_where_the_parse_refuses(doc, inserts, ws, pad):
    data = (ws + doc + ws).encode("utf-8", "surrogatepass")
    # shift the document so that its strings meet the 8-byte word scan at every offset
    data = b" " * pad + data
    for i, b in inserts:
        i %= len(data) + 1
        data = data[:i] + b + data[i:]
    if _jsonmask.valid(data):
        assert parses(data) and b"\\" not in data, data


@needs_c
def test_valid_special_byte_at_every_word_offset():
    """A quote, a control character, a backslash or a high byte at every position of the 8-byte
    word scan (and every string length around it): the scan must see the first one."""
    for n in range(0, 40):
        for k in range(n + 1):
            for bad in (b"\x00", b"\x1f", b"\\", b"\x80", b"\xff", b"\xc3", b'"'):
                s = b"x" * k + bad + b"x" * (n - k)
                for data in (b'["' + s + b'"]', b'"' + s + b'"', b'{"' + s + b'":1}'):
                    if _jsonmask.valid(data):
                        assert parses(data) and b"\\" not in data, data


# --- the whole masker: attacker-chosen values through both paths ----------------------------

ATTACK_VALUES = [
    "ada@example.com", "ada%40example.com", "ada&#64;example.com", "ada&#x40;example.com", "ada&commat;example.com",
    "ada\uff20example.com", "ada\ufe6bexample.com", "a\u200bda@example.com", "ada@exa\u200bmple.com",
    "ada\u00ad@example.com", "ada\\u0040example.com", "ada@example\uff0ecom", "ADA@EXAMPLE.COM", "ada@b\u00fccher.de",
    "ada@example\u3002com", "ada@example\uff61com", "ada\u2066@example.com", "ada@exa\ufe0fmple.com",
    "ada@exa\U000e0020mple.com", "ada\U0001d400@example.com", "a" * 64 + "@" + "b" * 63 + ".co", "\"ada@example.com\"",
    json.dumps({"contact": "ada@example.com"}), json.dumps(json.dumps({"contact": "ada@example.com"})),
    "[REDACTED]", "[REDACTED]\":", "x@example.com\u0000", "@" * 100,
    "a@b.co " * 1000, "ada@" + "x" * 63 + ".com", "ada@" + "x" * 64 + ".com",
]
KEYS = ["e", "ssn", "SSN", "\u017fsn", "card", "number", "a@b.co", "c@d.co", "[REDACTED]", "token"]


def body(rnd: random.Random) -> bytes:
    def value(depth):
        roll = rnd.random()
        if depth < 3 and roll < 0.25:
            return [value(depth + 1) for _ in range(rnd.randrange(4))]
        if depth < 3 and roll < 0.5:
            return {rnd.choice(KEYS + ATTACK_VALUES[:6]): value(depth + 1) for _ in range(rnd.randrange(4))}
        if roll < 0.6:
            return rnd.choice([0, -1, 1.5, 4111111111111111, 10**20, None, True])
        return rnd.choice(ATTACK_VALUES)
    text = json.dumps(value(0), ensure_ascii=rnd.random() < 0.3, indent=rnd.choice([None, 2]))
    data = text.encode("utf-8", "surrogatepass")
    if rnd.random() < 0.2:
        data = data + rnd.choice([b" ", b"x", b"\x00", b",", b"\xef\xbb\xbf"])
    if rnd.random() < 0.1:
        data = b"\xef\xbb\xbf" + data
    return data


@pytest.mark.parametrize("seed", range(4))
def test_attack_bodies_c_is_python(seed):
    rnd = random.Random(seed)
    for _ in range(150):
        same(body(rnd))


def test_many_tiny_strings_and_boundaries():
    for data in (orjson.dumps(["a@b.co"] * 100_000), orjson.dumps(["x"] * 100_000),
                 b'["' + b"x" * (8 * 1024 * 1024 - 20) + b'a@b.co"]',
                 b'{"a":"' + b"a" * 7 + b'@b.co"}', b'"' + b"a@b.co" * 10 + b'"'):
        same(data, CONFIGS[:2])


def test_masking_stays_linear():
    """200,000 masked keys-to-be inside one string and 100,000 addresses as keys: seconds, not minutes."""
    for data in (b'{"k":"' + b"a@b.co " * 200_000 + b'"}', b"{" + b",".join(b'"a%d@b.co":1' % i for i in range(50_000))
                 + b"}"):
        t = time.thread_time()
        out, counts = Masker((), (masking.parse_detector("email"),)).mask_json(data)
        assert time.thread_time() - t < 10
        assert b"@" not in out and orjson.loads(out)


# --- leaks: a field value through the raw path (both paths: the raw path is shared) -------------

@pytest.mark.parametrize("key", ["\u017fsn", "\u00dfn", "S\u017fN", "\u017f\u017fn"])
def test_a_field_named_in_another_case_is_masked_on_the_raw_path_too(key):
    """The walk matches keys by casefold ("\u017fsn" and "\u00dfn" are "ssn"); the raw path counted the
    names in ``text.lower()`` ("\u017fsn".lower() has no "ssn"), found none, and sent the value as is,
    while the same body with an escape anywhere (the walk) had it masked."""
    m = Masker(("ssn",), (masking.parse_detector("email"),))
    raw = json.dumps({key: "123-45-6789"}, ensure_ascii=False).encode()
    walked = json.dumps({key: "123-45-6789", "x": "\n"}, ensure_ascii=False).encode()
    assert b"123-45-6789" not in m.mask_json(walked)[0]
    out, counts = m.mask_json(raw)
    assert b"123-45-6789" not in out, out
    assert counts == {"field:ssn": 1}
    same(raw)


# --- addresses a reader reads as addresses: spelled with characters it drops or maps (both paths) -

SPELLED = [
    ("ada@example\u3002com", "IDNA reads U+3002 IDEOGRAPHIC FULL STOP as a dot"),
    ("ada@example\uff61com", "IDNA reads U+FF61 HALFWIDTH IDEOGRAPHIC FULL STOP as a dot"),
    ("ada@example\ufe52com", "U+FE52 SMALL FULL STOP reads as a dot"),
    ("ada\u2066@example.com", "U+2066..2069 bidi isolates are invisible (U+202A..202E were in the list)"),
    ("ada@exa\u2069mple.com", "U+2069 POP DIRECTIONAL ISOLATE is invisible"),
    ("ada@exa\ufe0fmple.com", "U+FE00..FE0F variation selectors are invisible"),
    ("ada@exa\U000e0020mple.com", "U+E0020.. tag characters are invisible"),
    ("ada@exa\U000e007fmple.com", "U+E007F CANCEL TAG is invisible"),
    ("ada@exa\u034fmple.com", "U+034F combining grapheme joiner is invisible"),
    ("ada\u061c@example.com", "U+061C ARABIC LETTER MARK is invisible"),
]
# Left as limits (docs/http.md): letters that only NFKC makes ASCII, and internationalized domains.
POLICY_LEAKS = [
    ("ada\U0001d400@example.com", "U+1D400 MATHEMATICAL BOLD A is 'A' under NFKC"),
    ("ada@b\u00fccher.de", "an internationalized domain (RFC 6531 / IDNA) is an address"),
]


def _masked_once(value, why):
    m = Masker((), (masking.parse_detector("email"),))
    data = json.dumps({"e": value}, ensure_ascii=False).encode()
    same(data, CONFIGS[:1])
    out, counts = m.mask_json(data)
    assert counts.get("email") == 1 and b"ada" not in out, why


@pytest.mark.parametrize("value,why", SPELLED)
def test_an_address_spelled_with_characters_a_reader_drops_or_maps_is_masked(value, why):
    """These went out unmasked (attackjson): masking.py's spellings now read them as a reader does."""
    _masked_once(value, why)


@pytest.mark.xfail(strict=True, reason="a limit (docs/http.md): NFKC-only letters and internationalized "
                   "domains are not read as addresses by the email pattern, Python and C alike")
@pytest.mark.parametrize("value,why", POLICY_LEAKS)
def test_an_address_spelled_with_unlisted_characters_is_masked(value, why):
    _masked_once(value, why)
