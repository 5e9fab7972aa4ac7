"""Getting a masked value out of the HTTP gateway as the upstream spells it, through a real
gateway and curl (issue 10 §3: masking with no seams).

Patterns are about characters, and a body may spell a character otherwise for its reader:
percent-encoding in a URL (a pagination link, a ``mailto:``), a JavaScript or C escape, an HTML
character reference inside JSON, a zero-width or soft hyphen between two characters, a fullwidth
form. Each of these passed an address in full; and a CSV whose header starts with a byte order
mark passed its ``ssn`` column.
"""
from __future__ import annotations

import json

import pytest

from tests.test_http_gateway import curl, gw, raw_url, upstream  # noqa: F401 (fixtures)

MAIL = "ada@example.com"
LEAKS = (b"ada", b"45-6789")


def _clean(status, got):
    assert status == 200, (status, got)
    assert not [s for s in LEAKS if s in got], got
    assert b"[REDACTED]" in got, got


SPELLED = [
    ("percent-text", b"mail: ada%40example.com", "text/plain"),
    ("percent-lower", b"mail: ada%40example%2ecom", "text/plain"),
    ("percent-in-json-link", json.dumps({"next": "/v1/customers?email=ada%40example.com&page=2"}).encode(),
     "application/json"),
    ("percent-form", b"contact=ada%40example.com&x=1", "application/x-www-form-urlencoded"),
    ("percent-html-href", b'<a href="mailto:ada%40example.com">write</a>', "text/html"),
    ("js-x40", b'var e = "ada\\x40example.com";', "application/javascript"),
    ("js-u0040", b'var e = "ada\\u0040example.com";', "application/javascript"),
    ("js-u-brace", b'var e = "ada\\u{40}example.com";', "application/javascript"),
    ("c-octal", b'char *e = "ada\\100example.com";', "text/plain"),
    ("entity-in-json", json.dumps({"note": "ada&#64;example.com"}).encode(), "application/json"),
    ("entity-hex-in-json", json.dumps({"note": "ada&#x40;example.com"}).encode(), "application/json"),
    ("entity-named-in-text", b"ada&commat;example.com", "text/plain"),
    ("zero-width-space", "mail: ada\u200b@example.com".encode(), "text/plain"),
    ("soft-hyphen", "mail: ada@exam\u00adple.com".encode(), "text/plain"),
    ("word-joiner-json", json.dumps({"x": "ada@\u2060example.com"}, ensure_ascii=False).encode(), "application/json"),
    ("fullwidth-at", "mail: ada\uff20example.com".encode(), "text/plain"),
    ("small-at", "mail: ada\ufe6bexample.com".encode(), "text/plain"),
    ("fullwidth-at-json-escaped", b'{"x": "ada\\uff20example.com"}', "application/json"),
]


@pytest.mark.parametrize("name, body, ct", SPELLED, ids=[c[0] for c in SPELLED])
def test_a_value_spelled_otherwise_for_its_reader_is_masked(gw, name, body, ct):
    status, got, _, _ = curl(raw_url(gw, body, ct))
    _clean(status, got)


@pytest.mark.parametrize("body", [
    "\ufeffssn,id\n123-45-6789,1\n",
    "\ufeffSSN;id\r\n123-45-6789;1\r\n",
    '\ufeff"ssn",id\n"123-45-6789",1\n',
])
def test_a_csv_header_after_a_byte_order_mark_names_its_columns(gw, body):
    """A CSV reader (Excel, Python's utf-8-sig) drops the byte order mark: ``\\ufeffssn`` is ``ssn``."""
    status, got, _, _ = curl(raw_url(gw, body.encode(), "text/csv"))
    _clean(status, got)


@pytest.mark.parametrize("body, ct", [
    (b"50% off: 100%25 sure, a\\b & c", "text/plain"),
    (b'{"q": "a%20b", "path": "C:\\\\x\\\\y", "amp": "&amp;"}', "application/json"),
    ("caf\u00e9 na\u00efve \u00fcber".encode(), "text/plain"),
])
def test_text_without_a_value_is_unchanged(gw, body, ct):
    status, got, _, _ = curl(raw_url(gw, body, ct))
    assert status == 200 and b"[REDACTED]" not in got, got
