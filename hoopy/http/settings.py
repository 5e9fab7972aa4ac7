"""The keys of a ``type = "http"`` connection."""
from __future__ import annotations

from urllib.parse import urlsplit

import attrs


@attrs.frozen
class HTTPSettings:
    upstream: str  # http:// or https:// URL
    upstream_headers: dict  # header name -> hoopy.config.Secret
    upstream_ca: object  # Secret (PEM) or None
    tls_cert: object
    tls_key: object
    upstream_timeout: float = 30.0  # no response head (or body progress) for this long: 504
    mask_limit: int = 8 * 1024 * 1024  # a body that must be masked is buffered up to this; larger: refused
    record_body_limit: int = 4096  # bytes of each (masked) body kept in the request event
    pool_size: int = 64  # persistent upstream connections kept per host
    head_timeout: float = 20.0  # a request head must be in within this of its first byte (slowloris)


def parse(t) -> HTTPSettings:
    upstream = t.string("upstream", required=True)
    if upstream is not None:
        u = urlsplit(upstream)
        if u.scheme not in ("http", "https") or not u.hostname:
            t.problem("upstream", f"{upstream!r} is not an http:// or https:// URL")
        elif u.query or u.fragment:
            t.problem("upstream", f"{upstream!r}: an upstream URL has no query or fragment")
    headers = {}
    for name, ref in (t.table("upstream_headers", default={}) or {}).items():
        secret = t.secret_value(f"upstream_headers.{name}", ref)
        if secret is not None:
            headers[name] = secret
    s = HTTPSettings(
        upstream=upstream,
        upstream_headers=headers,
        upstream_ca=t.secret("upstream_ca"),
        tls_cert=t.secret("tls_cert"),
        tls_key=t.secret("tls_key"),
        upstream_timeout=t.duration("upstream_timeout", default=30.0),
        mask_limit=t.size("mask_limit", default=8 * 1024 * 1024),
        record_body_limit=t.size("record_body_limit", default=4096),
        pool_size=t.integer("pool_size", default=64, minimum=1),
        head_timeout=t.duration("head_timeout", default=20.0),
    )
    if t.has("tls_cert") != t.has("tls_key"):
        t.problem("tls_key" if t.has("tls_cert") else "tls_cert", "tls_cert and tls_key go together")
    if s.upstream_ca is not None and upstream and not upstream.startswith("https:"):
        t.problem("upstream_ca", "applies to an https:// upstream only")
    return s
