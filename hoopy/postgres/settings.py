"""The keys of a ``type = "postgres"`` connection."""
from __future__ import annotations

import attrs

TLS_MODES = ("disable", "prefer", "require", "verify-full")
CLIENT_AUTH = ("scram-sha-256", "password")


@attrs.frozen
class PostgresSettings:
    upstream: str
    upstream_user: str
    upstream_password: object  # hoopy.config.Secret or None (trust)
    upstream_database: str | None
    upstream_tls: str
    upstream_ca: object  # Secret (PEM) or None: for verify-full
    tls_cert: object  # Secret (PEM) or None: offer TLS to clients
    tls_key: object
    client_auth: str = "scram-sha-256"  # or "password": cleartext, accepted only over TLS


def parse(t) -> PostgresSettings:
    s = PostgresSettings(
        upstream=t.client_endpoint("upstream", required=True),
        upstream_user=t.string("upstream_user", required=True),
        upstream_password=t.secret("upstream_password"),
        upstream_database=t.string("upstream_database"),
        upstream_tls=t.string("upstream_tls", default="prefer", choices=TLS_MODES),
        upstream_ca=t.secret("upstream_ca"),
        tls_cert=t.secret("tls_cert"),
        tls_key=t.secret("tls_key"),
        client_auth=t.string("client_auth", default="scram-sha-256", choices=CLIENT_AUTH),
    )
    if s.client_auth == "password" and s.tls_cert is None:
        t.problem("client_auth", "\"password\" sends the token in clear: it needs tls_cert and tls_key")
    if (s.tls_cert is None) != (s.tls_key is None) and not (t.has("tls_cert") and t.has("tls_key")):
        t.problem("tls_key" if s.tls_cert else "tls_cert", "tls_cert and tls_key go together")
    return s
