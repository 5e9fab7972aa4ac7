"""JSON-RPC and MCP wire facts shared by both sides: revisions, methods, envelopes.

Two eras of Streamable HTTP exist side by side:

- the handshake era (2024-11-05 .. 2025-11-25): ``initialize`` first, then every
  message carries ``Mcp-Session-Id``; a POST is answered with JSON or an SSE stream;
  GET opens a stream for server-initiated messages; DELETE ends the session.
- the per-request era (2026-07-28): every request is a self-contained POST; client
  info and capabilities ride in ``params._meta``; ``MCP-Protocol-Version``,
  ``Mcp-Method`` and (for tools/call, prompts/get, resources/read) ``Mcp-Name``
  headers must match the body; ``server/discover`` replaces ``initialize``; the
  server cannot send the client requests.
"""
from __future__ import annotations

import base64
import binascii
import json
import re

HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
LATEST_HANDSHAKE = HANDSHAKE_VERSIONS[-1]
LATEST_MODERN = MODERN_VERSIONS[-1]

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_CLIENT_CAPS = "io.modelcontextprotocol/clientCapabilities"
ENVELOPE_KEYS = (META_VERSION, META_CLIENT_INFO, META_CLIENT_CAPS)

H_SESSION = "mcp-session-id"
H_VERSION = "mcp-protocol-version"
H_METHOD = "mcp-method"
H_NAME = "mcp-name"
NAME_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

# JSON-RPC error codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
UNSUPPORTED_VERSION = -32022
ERROR_STATUS = {PARSE_ERROR: 400, INVALID_REQUEST: 400, INVALID_PARAMS: 400, HEADER_MISMATCH: 400,
                UNSUPPORTED_VERSION: 400, METHOD_NOT_FOUND: 404}

# What a client may ask of a server through hoopy. Anything else is refused (-32601).
CLIENT_REQUESTS = frozenset({
    "initialize", "ping", "server/discover",
    "tools/list", "tools/call",
    "resources/list", "resources/templates/list", "resources/read",
    "resources/subscribe", "resources/unsubscribe",
    "prompts/list", "prompts/get",
    "completion/complete", "logging/setLevel",
})
CLIENT_NOTIFICATIONS = frozenset({
    "notifications/initialized", "notifications/cancelled", "notifications/progress",
    "notifications/roots/list_changed",
})
# What a server may ask of the client; each is refused unless a rule grants it.
SERVER_REQUESTS = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation",
                   "roots/list": "roots", "ping": None}
SERVER_NOTIFICATIONS = frozenset({
    "notifications/message", "notifications/progress", "notifications/cancelled",
    "notifications/resources/updated", "notifications/resources/list_changed",
    "notifications/tools/list_changed", "notifications/prompts/list_changed",
    "notifications/elicitation/complete",
})
# Server capabilities hoopy passes on (the rest, e.g. tasks, would let calls bypass it).
SERVER_CAPABILITIES = ("tools", "resources", "prompts", "logging", "completions")


class WireError(Exception):
    """A message hoopy refuses: ``code`` is the JSON-RPC error code."""

    def __init__(self, code: int, message: str, data=None):
        self.code = code
        self.data = data
        super().__init__(message)


def dumps(msg) -> bytes:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()


def loads(body: bytes, limit: int):
    if len(body) > limit:
        raise WireError(INVALID_REQUEST, f"message larger than {limit} bytes")
    try:
        msg = json.loads(body)
    except (ValueError, RecursionError):
        raise WireError(PARSE_ERROR, "Parse error")
    if _SURROGATE.search(body):
        # a lone surrogate escape decodes to a str that cannot be encoded again: it could be judged
        # but neither recorded nor forwarded as judged
        try:
            json.dumps(msg, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise WireError(PARSE_ERROR, "Parse error: a string holds a lone surrogate (not Unicode)")
    return msg


_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
MAX_ID_LENGTH = 256  # a string id (UUIDs are 36): it is recorded in every event of its request
MAX_ID = 2 ** 63


def error(id_, code: int, message: str, data=None) -> dict:
    err = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": err}


def result(id_, res) -> dict:
    return {"jsonrpc": "2.0", "id": id_, "result": res}


def is_request(msg) -> bool:
    return isinstance(msg, dict) and "method" in msg and "id" in msg


def is_notification(msg) -> bool:
    return isinstance(msg, dict) and "method" in msg and "id" not in msg


def is_response(msg) -> bool:
    return isinstance(msg, dict) and "method" not in msg and "id" in msg and ("result" in msg or "error" in msg)


def check_message(msg) -> None:
    """One JSON-RPC 2.0 message object (batches are gone since 2025-06-18)."""
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        raise WireError(INVALID_REQUEST, "the body must be one JSON-RPC 2.0 message object")
    if "method" in msg and not isinstance(msg["method"], str):
        raise WireError(INVALID_REQUEST, "method must be a string")
    if "id" in msg and (isinstance(msg["id"], bool) or not isinstance(msg["id"], (str, int))):
        raise WireError(INVALID_REQUEST, "id must be a string or an integer")
    if "id" in msg and (len(msg["id"]) > MAX_ID_LENGTH if isinstance(msg["id"], str) else abs(msg["id"]) >= MAX_ID):
        raise WireError(INVALID_REQUEST, f"id must be at most {MAX_ID_LENGTH} characters or a 64-bit integer")
    if "params" in msg and not isinstance(msg["params"], dict):
        raise WireError(INVALID_PARAMS, "params must be an object")


_B64 = re.compile(r"^=\?base64\?(.*)\?=$")


def decode_header_value(value: str | None) -> str | None:
    """The ``=?base64?...?=`` form some header values take (2026-07-28)."""
    if value is None:
        return None
    m = _B64.match(value)
    if not m:
        return value
    try:
        raw = base64.b64decode(m.group(1), validate=True)
        if base64.b64encode(raw).decode() != m.group(1):
            return None
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def encode_header_value(value: str) -> str:
    if re.fullmatch(r"[\x20-\x7e]*", value) and value == value.strip() and not _B64.match(value):
        return value
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


def check_modern(msg: dict, headers) -> dict:
    """The per-request envelope of a 2026-07-28 request, checked against its headers.

    ``headers``: a callable name -> list of values. Returns the envelope
    {version, client_info, capabilities}; raises WireError as the spec's ladder does.
    """
    for h in (H_VERSION, H_METHOD, H_NAME):
        if len(headers(h)) > 1:
            raise WireError(HEADER_MISMATCH, f"{h} header appears more than once")
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(params, dict) or not isinstance(meta, dict) or META_VERSION not in meta \
            or META_CLIENT_CAPS not in meta:
        raise WireError(INVALID_PARAMS, f"params._meta must carry {META_VERSION!r} and {META_CLIENT_CAPS!r}")
    version = meta[META_VERSION]
    got = headers(H_VERSION)
    if not got or got[0] != version:
        raise WireError(HEADER_MISMATCH, "mcp-protocol-version header does not match the request envelope")
    method = msg.get("method")
    got = headers(H_METHOD)
    if not got or got[0] != method:
        raise WireError(HEADER_MISMATCH, "mcp-method header does not match the request body's method")
    key = NAME_PARAM.get(method)
    if key is not None and params.get(key) is not None:
        got = headers(H_NAME)
        if not got or decode_header_value(got[0]) != params.get(key):
            raise WireError(HEADER_MISMATCH, f"mcp-name header does not match the request body's {key!r}")
    if version not in MODERN_VERSIONS:
        raise WireError(UNSUPPORTED_VERSION, "Unsupported protocol version",
                        {"supported": list(MODERN_VERSIONS), "requested": version})
    caps = meta[META_CLIENT_CAPS]
    info = meta.get(META_CLIENT_INFO)
    return {"version": version, "client_info": info if isinstance(info, dict) else None,
            "capabilities": caps if isinstance(caps, dict) else {}}


def strip_envelope(params):
    """params without the per-request envelope keys (for a handshake-era peer)."""
    if not isinstance(params, dict) or not isinstance(params.get("_meta"), dict):
        return params
    meta = {k: v for k, v in params["_meta"].items() if k not in ENVELOPE_KEYS}
    out = dict(params)
    if meta:
        out["_meta"] = meta
    else:
        del out["_meta"]
    return out


def add_envelope(params, version: str, client_info, capabilities) -> dict:
    params = dict(params) if isinstance(params, dict) else {}
    meta = dict(params.get("_meta") or {})
    meta[META_VERSION] = version
    meta[META_CLIENT_CAPS] = capabilities or {}
    if client_info:
        meta[META_CLIENT_INFO] = client_info
    params["_meta"] = meta
    return params


def modern_headers(msg: dict, version: str) -> dict:
    """The routing headers a 2026-07-28 request must carry (built from the body: they always match)."""
    h = {"MCP-Protocol-Version": version, "Mcp-Method": msg["method"]}
    key = NAME_PARAM.get(msg["method"])
    value = (msg.get("params") or {}).get(key) if key else None
    if isinstance(value, str):
        h["Mcp-Name"] = encode_header_value(value)
    return h


def client_label(info) -> str | None:
    if not isinstance(info, dict):
        return None
    name = str(info.get("name") or "")[:128]
    version = str(info.get("version") or "")[:64]
    return f"{name}/{version}" if version else (name or None)
