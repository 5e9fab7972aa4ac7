"""Getting a masked value out through the MCP gateway: every place an MCP server's answer can
carry text, not only a tool result's text content (pure code: hoopy.mcp.results; the wiring
is in hoopy.mcp.conversation, tool_calls and server_messages, whose real-peer tests are
tests/test_mcp.py).

A tool result's ``resource_link`` (its uri, name, title and description), the ``_meta`` and
annotations of a result or an item, a resource's base64 ``blob`` of text, a JSON-RPC error's
message and data, a logging or progress notification, and a server's request to the client
(sampling, elicitation) each passed an address in full.
"""
from __future__ import annotations

import base64
import json

import pytest

from hoopy.http.masker import Masker
from hoopy.mcp.results import mask_error, mask_message, mask_result
from hoopy.policy.masking import parse_detector

MAIL, CARD = "ann@example.com", "4111 1111 1111 1111"


def masker():
    return Masker(("ssn",), (parse_detector("email"), parse_detector("credit_card")))


def clean(value):
    text = json.dumps(value)
    assert MAIL not in text and CARD not in text and "123-45-6789" not in text, text
    for blob in _blobs(value):
        decoded = base64.b64decode(blob).decode("utf-8", "replace")
        assert MAIL not in decoded and "123-45-6789" not in decoded, decoded


def _blobs(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "blob" and isinstance(x, str):
                yield x
            else:
                yield from _blobs(x)
    elif isinstance(v, list):
        for x in v:
            yield from _blobs(x)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


RESULTS = [
    {"content": [{"type": "resource_link", "uri": f"mailto:{MAIL}", "name": MAIL, "title": MAIL,
                  "description": f"write to {MAIL}"}]},
    {"content": [{"type": "text", "text": "ok", "annotations": {"audience": ["user"], "note": MAIL}}]},
    {"content": [{"type": "text", "text": "ok", "_meta": {"contact": MAIL}}]},
    {"content": [], "_meta": {"debug": f"card {CARD}"}},
    {"content": [{"type": "resource", "resource": {"uri": "file:///c.txt", "mimeType": "text/plain",
                                                  "blob": b64(f"contact {MAIL}")}}]},
    {"content": [{"type": "resource", "resource": {"uri": "file:///c.json", "mimeType": "application/json",
                                                  "blob": b64('{"ssn": "123-45-6789"}')}}]},
    {"contents": [{"uri": "file:///c.txt", "mimeType": "text/csv", "blob": b64(f"id,mail\n1,{MAIL}\n")}]},
    {"contents": [{"uri": f"mailto:{MAIL}", "text": "x"}]},
    {"content": [{"type": "text", "text": "ok"}], "isError": False, "note": MAIL},
    {"messages": [{"role": "user", "content": {"type": "resource", "resource": {"uri": "x:", "blob": b64(MAIL),
                                                                               "mimeType": "text/plain"}}}]},
]


@pytest.mark.parametrize("result", RESULTS, ids=range(len(RESULTS)))
def test_every_string_of_a_result_is_masked(result):
    out, counts = mask_result(masker(), result)
    assert counts, out
    clean(out)


def test_binary_blobs_and_images_are_left_as_they_are():
    result = {"content": [{"type": "image", "mimeType": "image/png", "data": "iVBORw0KGgo="},
                          {"type": "resource", "resource": {"uri": "x:", "mimeType": "application/zip",
                                                           "blob": "UEsDBA=="}}]}
    assert mask_result(masker(), result) == (result, {})


@pytest.mark.parametrize("error", [
    {"code": -32000, "message": f"no card {CARD} for {MAIL}"},
    {"code": -32602, "message": "invalid", "data": {"customer": {"ssn": "123-45-6789", "mail": MAIL}}},
    {"code": -32603, "message": "failed", "data": f"traceback ... {MAIL}"},
])
def test_an_error_is_masked(error):
    out, counts = mask_error(masker(), error)
    assert counts and out["code"] == error["code"]
    clean(out)


@pytest.mark.parametrize("message", [
    {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": {"email": MAIL}}},
    {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "error", "logger": MAIL, "data": "x"}},
    {"jsonrpc": "2.0", "method": "notifications/progress",
     "params": {"progressToken": 1, "progress": 1, "message": f"mailing {MAIL}"}},
    {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": f"mailto:{MAIL}"}},
    {"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage",
     "params": {"messages": [{"role": "user", "content": {"type": "text", "text": f"summarize {MAIL}"}}],
                "maxTokens": 10}},
    {"jsonrpc": "2.0", "id": 8, "method": "elicitation/create",
     "params": {"message": f"Is {MAIL} right?", "requestedSchema": {"type": "object"}}},
])
def test_what_the_server_sends_besides_answers_is_masked(message):
    out, counts = mask_message(masker(), message)
    assert counts and out["method"] == message["method"] and out.get("id") == message.get("id")
    clean(out)


def test_a_message_without_a_value_is_the_same_object():
    m = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 2}}
    out, counts = mask_message(masker(), m)
    assert out is m and not counts
