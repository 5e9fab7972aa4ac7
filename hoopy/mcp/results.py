"""Masking of what an MCP server sends: a tool's (or a resource's, or a prompt's) result, an
error, a notification, a request to the client. ``[[masking]]`` patterns apply to every string
of it, wherever it sits (text content, structured content, embedded resources, resource links,
``_meta`` and annotations, an error's message and data, a log line); fields to JSON keys (in
structured content, and in text that is itself JSON). A resource's base64 ``blob`` of a text
type is read as that text; binary blobs and images are data and stay as they are."""
from __future__ import annotations

import base64
import binascii
from typing import Any

from hoopy.http.bodies import Masker


def masker_for(gateway, connection: str) -> Masker:
    return Masker.from_config(gateway.config.masking_for(connection))


def _text_type(mime) -> bool:
    if not isinstance(mime, str):
        return True  # no type: it may be text (read it; a binary blob holds no match anyway)
    mime = mime.split(";", 1)[0].strip().lower()
    return mime.startswith("text/") or mime.endswith(("json", "xml", "yaml", "csv", "javascript")) \
        or mime in ("application/x-www-form-urlencoded", "application/x-ndjson")


def _walk(masker: Masker, value, counts: dict):
    """Every string masked (the masker reads JSON, CSV and markup held in a string itself), and
    every text blob as its text."""
    if isinstance(value, dict) and _has_blob(value):
        return {k: _blob(masker, v, counts) if k == "blob" and isinstance(v, str) and _text_type(value.get("mimeType"))
                else _walk(masker, v, counts) for k, v in value.items()}
    if isinstance(value, list) and _has_blob(value):
        return [_walk(masker, v, counts) for v in value]
    return masker.mask_value(value, counts)


def _blob(masker: Masker, blob: str, counts: dict) -> str:
    try:
        text = base64.b64decode(blob, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return blob  # not text: data
    c: dict = {}
    masked = masker.mask_value(text, c)
    if not c:
        return blob
    for k, n in c.items():
        counts[k] = counts.get(k, 0) + n
    return base64.b64encode(masked.encode()).decode()


def _has_blob(v) -> bool:
    if isinstance(v, dict):
        return "blob" in v or any(_has_blob(x) for x in v.values())
    if isinstance(v, list):
        return any(_has_blob(x) for x in v)
    return False


def _masked(masker: Masker, value) -> tuple[Any, dict]:
    counts: dict = {}
    if not masker.active:
        return value, counts
    out = _walk(masker, value, counts)
    return (out if counts else value), counts


def mask_result(masker: Masker, result) -> tuple[object, dict]:
    """The result with every match masked, and {detector or field: count}."""
    if not isinstance(result, dict):
        return result, {}
    return _masked(masker, result)


def mask_error(masker: Masker, error) -> tuple[object, dict]:
    """A JSON-RPC error: its message and data masked (its code kept)."""
    if not isinstance(error, dict):
        return error, {}
    out, counts = _masked(masker, {k: v for k, v in error.items() if k != "code"})
    if not counts:
        return error, counts
    return ({"code": error["code"], **out} if "code" in error else out), counts


def mask_message(masker: Masker, message) -> tuple[object, dict]:
    """A notification or a request the server sends: its params masked."""
    if not isinstance(message, dict) or "params" not in message:
        return message, {}
    params, counts = _masked(masker, message["params"])
    return ({**message, "params": params} if counts else message), counts


def mask_arguments(masker: Masker, args) -> tuple[object, dict]:
    """Arguments as recorded: patterns and fields masked (what is forwarded is unchanged)."""
    counts: dict = {}
    if not masker.active:
        return args, counts
    return masker.mask_value(args, counts), counts
