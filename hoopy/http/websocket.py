"""A WebSocket upgrade's headers: pure functions.

Which request is an upgrade, the caller's token offered as a subprotocol, what the upstream is
offered and what the client is answered. checks.py judges a request's shape with these and
upgrade.py relays with them; neither imports the other for it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib

# Browsers cannot set Authorization on a WebSocket: the token rides in the subprotocol offer instead,
# ``new WebSocket(url, ["hoopy", "hoopy.bearer." + token])``, for upgrades only.
SUBPROTOCOL = b"hoopy"
BEARER_PREFIX = b"hoopy.bearer."

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def websocket_key(hdrs: dict) -> bytes | None:
    """The caller's one Sec-WebSocket-Key if it is valid (16 bytes in base64), else None."""
    keys = hdrs.get(b"sec-websocket-key", ())
    if len(keys) != 1:
        return None
    key = keys[0].strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    return key


def websocket_accept(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept that proves a server read ``key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())


def is_websocket_upgrade(method: bytes, hdrs: dict) -> bool:
    return method == b"GET" and any(b"websocket" in v.lower() for v in hdrs.get(b"upgrade", ()))


def offered_subprotocols(hdrs: dict) -> list[bytes]:
    """Every protocol of every Sec-WebSocket-Protocol header, in order."""
    return [t.strip() for v in hdrs.get(b"sec-websocket-protocol", ()) for t in v.split(b",") if t.strip()]


def subprotocol_tokens(hdrs: dict) -> list[bytes]:
    """The tokens offered as ``hoopy.bearer.TOKEN``, counted only beside a plain ``hoopy`` entry."""
    offered = offered_subprotocols(hdrs)
    if SUBPROTOCOL not in offered:
        return []
    return [t[len(BEARER_PREFIX):] for t in offered if t.startswith(BEARER_PREFIX) and len(t) > len(BEARER_PREFIX)]


def upstream_subprotocols(hdrs: dict) -> list[bytes]:
    """What the upstream is offered: the caller's protocols without ours (the token never goes on)."""
    return [t for t in offered_subprotocols(hdrs) if t != SUBPROTOCOL and not t.startswith(BEARER_PREFIX)]


def with_subprotocol_answer(head: bytes, offered_ours: bool) -> bytes:
    """The upstream's 101 head, answering ``hoopy`` when the caller offered it and the upstream chose
    none (a browser fails a handshake that offered protocols and got none back)."""
    if not offered_ours:
        return head
    for ln in head.split(b"\r\n")[1:]:
        if ln.partition(b":")[0].strip().lower() == b"sec-websocket-protocol":
            return head
    return head[:-2] + b"Sec-WebSocket-Protocol: " + SUBPROTOCOL + b"\r\n\r\n"
