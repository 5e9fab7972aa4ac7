"""Masking without seams, tried as an attacker would (issue 10, section 3): the upstream is asked for
the same record in every shape an API can give it (key case, JSON inside JSON strings, JSONP and
JavaScript, HTML, CSV, XML, untyped and compressed bodies), through a real gateway to a real upstream.

Each shape passed a masked value in full before: every test here failed on that code.
"""
from __future__ import annotations

import gzip
import json
import zlib

import pytest

from tests.test_http_gateway import curl, gw, raw_url, upstream, wait_events  # noqa: F401 (fixtures)

SSN, CARD, MAIL = "123-45-6789", "4111 1111 1111 1111", "ada@example.com"


def _clean(status, got, *secrets):
    for s in secrets or (SSN, CARD, MAIL):
        assert s.encode() not in got, (status, got)


@pytest.mark.parametrize("body", [
    {"SSN": SSN},
    {"Ssn": SSN, "CARD": {"Number": CARD}},
    {"customer": {"sSn": SSN}},
    [{"SSN": {"value": SSN}}],
])
def test_field_names_match_in_any_case(gw, body):
    status, got, _, _ = curl(raw_url(gw, json.dumps(body).encode(), "application/json"))
    assert status == 200 and b"[REDACTED]" in got
    _clean(status, got, SSN, CARD)


@pytest.mark.parametrize("body", [
    {"data": json.dumps({"ssn": SSN})},
    {"data": "  " + json.dumps([{"SSN": SSN}])},
    {"data": json.dumps({"inner": json.dumps({"ssn": SSN})})},  # two levels down
    {"card": json.dumps({"number": CARD})},  # a dotted path that runs into the string
    {"payload": json.dumps({"contact": "x\u0040".replace("x", "ada") + "example.com"})},
    {"items": [json.dumps({"ssn": SSN}), 1]},
])
def test_json_inside_a_json_string_is_masked(gw, body):
    status, got, _, _ = curl(raw_url(gw, json.dumps(body).encode(), "application/json"))
    assert status == 200, got
    _clean(status, got)
    json.loads(got)  # still JSON


@pytest.mark.parametrize("body, ct", [
    (b'callback({"id": 7, "ssn": "%s"});' % SSN.encode(), "application/javascript"),
    (b"/**/ cb && cb({'SSN': '%s'})" % SSN.encode(), "text/javascript"),
    (b"var customer = {ssn: \"%s\", name: 'Ada'};" % SSN.encode(), "application/x-javascript"),
    (b'var raw = "{\\"ssn\\":\\"%s\\"}";' % SSN.encode(), "text/javascript"),
    (b'<html><script>window.__DATA__ = {"customer":{"ssn":"%s"}}</script></html>' % SSN.encode(), "text/html"),
    (b'<script type="application/json" id="d">{"ssn": "%s"}</script>' % SSN.encode(), "text/html; charset=utf-8"),
    (b'<div data-customer="{&quot;ssn&quot;:&quot;%s&quot;}">Ada</div>' % SSN.encode(), "text/html"),
    (b"<form><input type=text name=ssn value='%s'></form>" % SSN.encode(), "text/html"),
    (b'<span class="field ssn">%s</span>' % SSN.encode(), "text/html"),
    (b"<table><tr><th>Name<th>SSN</tr><tr><td>Ada<td>%s</tr></table>" % SSN.encode(), "text/html"),
    (b"<dl><dt>SSN</dt><dd>%s</dd></dl>" % SSN.encode(), "text/html"),
    (b"<p>SSN: %s</p>" % SSN.encode(), "text/html"),
    (b"<!-- debug: ssn=%s -->" % SSN.encode(), "text/html"),
])
def test_json_and_fields_in_html_and_javascript_are_masked(gw, body, ct):
    status, got, _, _ = curl(raw_url(gw, body, ct))
    assert status == 200 and b"[REDACTED]" in got, got
    _clean(status, got)


@pytest.mark.parametrize("body, ct", [
    (f"id,name,SSN,email\n1,Ada,{SSN},{MAIL}\n".encode(), "text/csv"),
    (f"id;ssn;note\r\n1;{SSN};x\r\n".encode(), "text/csv; charset=utf-8"),
    (f"id\tSsn\n1\t{SSN}\n".encode(), "text/tab-separated-values"),
    (f'id,ssn\n1,"{SSN}\nsecond line"\n'.encode(), "text/csv"),
    (f"id,card.number\n1,{CARD}\n".encode(), "text/csv"),
    (f"id,ssn\n1,{SSN}\n".encode(), "text/plain"),  # CSV labelled as plain text
    (f"id,ssn\n1,{SSN}\n".encode(), "application/octet-stream"),  # or as nothing at all
])
def test_csv_columns_named_by_a_field_are_masked(gw, body, ct):
    status, got, _, _ = curl(raw_url(gw, body, ct))
    assert status == 200 and b"[REDACTED]" in got, got
    _clean(status, got)


@pytest.mark.parametrize("body", [
    f"<customer><ssn>{SSN}</ssn></customer>",
    f'<?xml version="1.0"?><c:customer xmlns:c="urn:x"><c:SSN>{SSN}</c:SSN></c:customer>',
    f'<customer ssn="{SSN}" name="Ada"/>',
    f"<customer><ssn><![CDATA[{SSN}]]></ssn></customer>",
    f"<customer><ssn><v>{SSN}</v></ssn></customer>",
    f"<customer><card><number>{CARD}</number></card></customer>",
    f'<customer><field name="ssn" value="{SSN}"/></customer>',
    f"<customer><note>mail {MAIL}</note></customer>",
    f'<customer note="{MAIL}"/>',
    f"<customer><note>{{\"ssn\": \"{SSN}\"}}</note></customer>",
])
@pytest.mark.parametrize("ct", ["application/xml", "text/xml", "application/atom+xml"])
def test_xml_elements_and_attributes_named_by_a_field_are_masked(gw, body, ct):
    status, got, _, _ = curl(raw_url(gw, body.encode(), ct))
    assert status == 200 and b"[REDACTED]" in got, got
    _clean(status, got)


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY s "123-45-6789">]><c><note>&s;</note></c>',
    b'<!DOCTYPE c SYSTEM "http://evil.example/c.dtd"><c>&s;</c>',
    # a billion laughs: refused before anything is expanded
    b'<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><l>&b;</l>',
])
def test_xml_with_a_document_type_declaration_is_refused(gw, body):
    status, got, _, _ = curl(raw_url(gw, body, "application/xml"))
    assert status == 502 and b"document type declaration" in got, got


def test_patterns_apply_to_every_text_body_whatever_its_type(gw):
    for ct in ("application/octet-stream", None, "application/x-custom", "text/markdown", "application/yaml",
               "text/csv", "application/xml", "text/html"):
        status, got, _, _ = curl(raw_url(gw, f"contact: {MAIL}\n".encode(), ct))
        assert status == 200 and b"[REDACTED]" in got, (ct, got)
        _clean(status, got, MAIL)


def test_untyped_text_with_fields_is_masked(gw):
    status, got, _, _ = curl(raw_url(gw, f"ssn={SSN}&name=Ada".encode(), "application/octet-stream"))
    assert status == 200 and got == b"ssn=[REDACTED]&name=Ada", got
    status, got, _, _ = curl(raw_url(gw, f"SSN: {SSN}\nname: Ada\n".encode(), None))
    assert status == 200 and SSN.encode() not in got, got


@pytest.mark.parametrize("ct", ["application/octet-stream", None, "image/png", "application/pdf",
                                "application/zip"])
def test_a_binary_body_the_masker_cannot_read_is_refused_with_an_event(gw, ct):
    body = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + SSN.encode()
    before = len(gw.events("redaction"))
    status, got, _, _ = curl(raw_url(gw, body, ct))
    assert status == 502 and b"cannot be masked" in got and SSN.encode() not in got, got
    refused = [e for e in wait_events(gw, "redaction", before + 1)[before:] if e["outcome"] == "refused"]
    assert refused and refused[-1]["data"]["path"] == "/raw" and "binary" in refused[-1]["data"]["reason"]


def test_a_passthrough_route_streams_what_the_masker_cannot_read(gw):
    body = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    status, got, _, _ = curl(raw_url(gw, body, "image/png").replace("/raw?", "/files/logo.png?"))
    assert status == 200 and got == body
    # what the masker can read is still masked there
    status, got, _, _ = curl(raw_url(gw, json.dumps({"ssn": SSN}).encode(), "application/json")
                             .replace("/raw?", "/files/c.json?"))
    assert status == 200 and SSN.encode() not in got


@pytest.mark.parametrize("ce", ["gzip", "deflate", "deflate-raw", "br"])
@pytest.mark.parametrize("ct", ["application/json", "text/csv", "application/xml", "application/octet-stream"])
def test_compressed_bodies_are_decoded_and_masked(gw, ce, ct):
    import brotli

    plain = {"application/json": json.dumps({"SSN": SSN}).encode(),
             "text/csv": f"id,ssn\n1,{SSN}\n".encode(),
             "application/xml": f"<c><ssn>{SSN}</ssn></c>".encode(),
             "application/octet-stream": f"ssn={SSN}".encode()}[ct]
    if ce == "gzip":
        body = gzip.compress(plain)
    elif ce == "deflate":
        body = zlib.compress(plain)
    elif ce == "deflate-raw":
        c = zlib.compressobj(wbits=-15)
        body, ce = c.compress(plain) + c.flush(), "deflate"
    else:
        body = brotli.compress(plain)
    status, got, headers, _ = curl(raw_url(gw, body, ct, ce=[ce]))
    assert status == 200 and b"[REDACTED]" in got and "content-encoding" not in headers, (status, got)
    _clean(status, got)


@pytest.mark.parametrize("ce", ["zstd", "compress", "x-custom", "gzip, br"])
def test_a_coding_the_masker_cannot_undo_is_refused(gw, ce):
    body = gzip.compress(json.dumps({"ssn": SSN}).encode())
    status, got, _, _ = curl(raw_url(gw, body, "application/json", ce=[c.strip() for c in ce.split(",")]))
    assert status == 502, (status, got)


def test_a_truncated_compressed_body_is_refused(gw):
    body = gzip.compress(json.dumps({"note": "x" * 5000, "ssn": SSN}).encode())[:-40]
    status, got, _, _ = curl(raw_url(gw, body, "application/json", ce=["gzip"]))
    assert status == 502 and SSN.encode() not in got, (status, got)


@pytest.mark.parametrize("target", ["/v1/customers/", "/v1/customers//", "/v1/customers/./"])
def test_a_star_never_matches_an_empty_segment(gw, upstream, target):
    # "GET /v1/customers/*" grants one customer, not the collection (an upstream that ignores the
    # trailing slash serves /v1/customers/ as /v1/customers)
    mark = upstream.mark()
    status, got, _, _ = curl(gw.url + target)
    assert status == 403, got
    assert upstream.since(mark) == []
    assert curl(gw.url + "/v1/customers/42")[0] == 200
