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


def parse(t) -> HTTPSettings:
    upstream = t.string("upstream", required=True)
    if upstream is not None:
        u = urlsplit(upstream)
        if u.scheme not in ("http", "https") or not u.hostname:
            t.problem("upstream", f"{upstream!r} is not an http:// or https:// URL")
    headers = {}
    for name, ref in (t.table("upstream_headers", default={}) or {}).items():
        secret = t.secret_value(f"upstream_headers.{name}", ref)
        if secret is not None:
            headers[name] = secret
    return HTTPSettings(
        upstream=upstream,
        upstream_headers=headers,
        upstream_ca=t.secret("upstream_ca"),
        tls_cert=t.secret("tls_cert"),
        tls_key=t.secret("tls_key"),
    )
