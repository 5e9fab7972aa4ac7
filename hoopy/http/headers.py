"""Header rules, sans-IO: what is dropped, what is injected, what is recorded."""
from __future__ import annotations

import re

# RFC 9110 7.6.1: meaningful for one hop only, never forwarded.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection",
    b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
# The caller's own credential and attribution: consumed here, never forwarded.
HOOPY = frozenset({b"x-hoopy-token", b"x-hoopy-model", b"x-hoopy-tool-call", b"x-hoopy-mcp-server"})
# Set by the gateway alone: a caller could otherwise pose as another client to the upstream.
FORWARDING = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto",
                        b"x-real-ip", b"x-forwarded-prefix", b"x-forwarded-path", b"x-forwarded-uri",
                        b"x-forwarded-port", b"x-forwarded-server", b"x-forwarded-scheme",
                        b"x-forwarded-ssl", b"x-original-host", b"x-host", b"x-client-ip",
                        b"true-client-ip", b"x-cluster-client-ip", b"front-end-https", b"x-url-scheme"})
# Who the caller is, as authenticating proxies tell the app behind them (Apache and nginx auth modules,
# oauth2-proxy, Grafana, Azure App Service, Google IAP, AWS ALB, Cloudflare Access, Envoy's client
# certificate header): an upstream that sat behind one trusts them, so a caller may not set them.
IDENTITY_ASSERTION = frozenset({
    b"remote-user", b"x-remote-user", b"x-remote-group", b"x-remote-groups", b"x-forwarded-user",
    b"x-forwarded-email", b"x-forwarded-groups", b"x-forwarded-preferred-username", b"x-forwarded-access-token",
    b"x-auth-request-user", b"x-auth-request-email", b"x-auth-request-groups",
    b"x-auth-request-preferred-username", b"x-auth-request-access-token", b"x-authenticated-user",
    b"x-authenticated-userid", b"x-webauth-user", b"x-ms-client-principal", b"x-ms-client-principal-name",
    b"x-ms-client-principal-id", b"x-ms-client-principal-idp", b"x-goog-authenticated-user-email",
    b"x-goog-authenticated-user-id", b"x-goog-iap-jwt-assertion", b"x-amzn-oidc-identity", b"x-amzn-oidc-data",
    b"x-amzn-oidc-accesstoken", b"cf-access-authenticated-user-email", b"cf-access-jwt-assertion",
    b"x-forwarded-client-cert", b"x-client-cert", b"x-ssl-client-cert", b"x-ssl-client-dn", b"x-ssl-client-s-dn",
    b"x-ssl-client-verify", b"x-client-verify", b"ssl-client-cert", b"ssl-client-verify",
})
# Headers with which frameworks (IIS URL Rewrite, Symfony, Zend, nginx setups) route to another path
# than the request line's: the policy judged the request line, so these are refused outright.
PATH_OVERRIDE = frozenset({b"x-original-url", b"x-rewrite-url", b"x-original-uri", b"x-override-url"})
# Query parameters with which frameworks (Laravel, Symfony, Rails via forms) run another method.
METHOD_OVERRIDE_PARAMS = frozenset({"_method", "x-http-method-override", "x-http-method", "x-method-override"})
# Headers that change which method the upstream framework runs: refused outright.
METHOD_OVERRIDE = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})
# Values never written to the record.
SECRET = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"x-api-key",
                    b"api-key", b"x-auth-token", b"x-hoopy-token", b"x-amz-security-token",
                    b"x-csrf-token", b"x-xsrf-token"})
REDACTED = "[REDACTED]"


def connection_tokens(values) -> set[bytes]:
    """Header names a Connection header lists (they are hop-by-hop too)."""
    out: set = set()
    for v in values or ():
        for t in v.split(b","):
            t = t.strip()
            if t:
                out.add(t.lower())
    return out


def is_secret(name: bytes) -> bool:
    n = name.lower()
    return (n in SECRET or n.endswith((b"-token", b"-key", b"-secret", b"apikey", b"-signature", b"-credential",
                                       b"-credentials", b"-session"))
            or any(w in n for w in (b"password", b"secret", b"passwd")))


_RECORD_NAMES: dict = {}  # header name -> (its record key, whether its value is secret)


def _record_name(name: bytes):
    found = _RECORD_NAMES.get(name)
    if found is None:
        found = (name.decode("latin-1").lower(), is_secret(name))
        if len(_RECORD_NAMES) < 4096:  # names come from callers and upstreams: the cache stays small
            _RECORD_NAMES[name] = found
    return found


_BEARER_PROTOCOL = re.compile(rb"hoopy\.bearer\.[^,\s]+")


def for_record(pairs) -> dict:
    """{name: value or [values]} with secret values replaced: safe to keep."""
    out: dict = {}
    for name, values in pairs:
        key, secret = _RECORD_NAMES.get(name) or _record_name(name)
        if key == "sec-websocket-protocol":  # a browser's token rides here (hoopy.bearer.TOKEN)
            values = [_BEARER_PROTOCOL.sub(b"hoopy.bearer." + REDACTED.encode(), v) for v in values]
        if len(values) == 1:
            out[key] = REDACTED if secret else values[0].decode("latin-1")[:1024]
        else:
            out[key] = [REDACTED if secret else v.decode("latin-1")[:1024] for v in values]
    return out


def forwarded_for(peer_host: str, proto: str, host: bytes | None) -> dict[bytes, bytes]:
    """The Forwarded (RFC 7239) and X-Forwarded-* headers this gateway adds."""
    node = f'"[{peer_host}]"' if ":" in peer_host else peer_host
    fwd = f"for={node};proto={proto}"
    out = {b"x-forwarded-for": peer_host.encode(), b"x-forwarded-proto": proto.encode()}
    if host and all(32 < c < 127 and c not in b'";,' for c in host):
        fwd += f';host="{host.decode()}"'
        out[b"x-forwarded-host"] = host
    out[b"forwarded"] = fwd.encode()
    return out
