"""What records of the admin listener (the API and the web console) name: the listener, which has no
connection of its own, and the caller's address as the other listeners write it."""
from __future__ import annotations

import attrs


@attrs.frozen
class _AdminListener:
    """What ``auth.failed`` events of the admin API name: no connection, protocol "admin"."""

    name: str | None = None
    type: str = "admin"


ADMIN = _AdminListener()


def peer_text(request) -> str:
    """A twisted.web request's client address as ``host:port`` (``[host]:port`` for IPv6)."""
    addr = request.getClientAddress()
    host, port = getattr(addr, "host", "?"), getattr(addr, "port", 0)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
