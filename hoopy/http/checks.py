"""What a request must be before it is judged, and what goes upstream of it: pure functions.

Everything here reads a request's method, target and headers (``hdrs``: lower-case name -> list of
values, read once per request) and either returns or raises ``Refusal``, the JSON error the client
is shown. No I/O, no Twisted: tested directly (tests/test_http_exchange.py).
"""
from __future__ import annotations

import re
from urllib.parse import unquote_plus

from hoopy.http import headers as H
from hoopy.http.paths import PathError, normalize_target
from hoopy.http.websocket import (BEARER_PREFIX, is_websocket_upgrade, subprotocol_tokens, upstream_subprotocols,
                                websocket_key)
from hoopy.policy.rules import Operation, Unit

_METHOD = re.compile(rb"[A-Z][A-Z0-9_-]*")
# Hashes of a body: of an unmasked body they let a masked value be guessed offline
BODY_DIGESTS = frozenset({b"etag", b"content-md5", b"digest", b"content-digest", b"repr-digest"})
_ATTRIBUTION = (("model", b"x-hoopy-model"), ("tool_call", b"x-hoopy-tool-call"),
                ("mcp_server", b"x-hoopy-mcp-server"))
# Compiled once: re's own cache costs a lookup per call, on every request.
_QUERY_PARTS = re.compile(r"[&;]")
_TRAILING_DOTS = re.compile(r"(?:\.|%20)+$")


class Refusal(Exception):
    """Ends an exchange with a JSON error the client shows."""

    def __init__(self, status: int, error: str, outcome: str = "refused", **extra):
        super().__init__(error)
        self.status, self.error, self.outcome, self.extra = status, error, outcome, extra


def token_of(method: bytes, hdrs: dict) -> str | None:
    """The caller's token; None when there is none, "" when there are two that differ (refused as a
    bad credential: which identity it acts as must not depend on which header a reader takes). A
    WebSocket upgrade may carry it in its subprotocol offer (``hoopy``, ``hoopy.bearer.TOKEN``):
    browsers cannot send Authorization."""
    found = set()
    for auth in hdrs.get(b"authorization", ()):
        scheme, _, value = auth.strip().partition(b" ")
        if scheme.lower() == b"bearer" and value.strip():
            found.add(value.strip())
    for tok in hdrs.get(b"x-hoopy-token", ()):
        if tok.strip():
            found.add(tok.strip())
    if b"sec-websocket-protocol" in hdrs and is_websocket_upgrade(method, hdrs):
        found.update(subprotocol_tokens(hdrs))
    if not found:
        return None
    return found.pop().decode("latin-1") if len(found) == 1 else ""


def prefers_async(hdrs: dict) -> bool:
    """``Prefer: respond-async`` (RFC 7240), among any other preferences."""
    for value in hdrs.get(b"prefer", ()):
        for pref in value.split(b","):
            if pref.split(b";", 1)[0].split(b"=", 1)[0].strip().lower() == b"respond-async":
                return True
    return False


def attribution(hdrs: dict) -> dict:
    """What the caller says it acts for (X-Hoopy-Model ...): recorded on the session."""
    return {k: (hdrs.get(h, (b"",))[-1] or b"").decode("utf-8", "replace") for k, h in _ATTRIBUTION}


_ATTRIBUTION_HEADERS = tuple(h for _, h in _ATTRIBUTION)


def claims_attribution(hdrs: dict) -> bool:
    """Whether the request carries any X-Hoopy-Model/-Tool-Call/-MCP-Server header (most carry none:
    ``attribution`` is read only then)."""
    for h in _ATTRIBUTION_HEADERS:
        if h in hdrs:
            return True
    return False


def check_shape(method: bytes, uri: bytes, hdrs: dict, masking: bool) -> tuple[str, str | None, bool]:
    """(normalized path, query, is a WebSocket upgrade) of a request whose shape may be judged."""
    if method == b"CONNECT":
        raise Refusal(405, "CONNECT is not forwarded")
    if method in (b"TRACE", b"TRACK"):
        # the upstream echoes the request it got, the injected credential in it
        raise Refusal(405, f"{method.decode()} is not forwarded: it echoes the injected credential")
    if not _METHOD.fullmatch(method):
        # Rules name methods in upper case; many upstreams upper-case what they get, so "delete"
        # would be judged as no DELETE and run as one.
        raise Refusal(400, "the method must be an upper-case token (GET, POST, ...)")
    try:
        path, query = normalize_target(uri)
    except PathError as e:
        raise Refusal(400, str(e))
    if query:
        for part in _QUERY_PARTS.split(query):
            key = unquote_plus(part.partition("=")[0]).strip().lower()
            if key in H.METHOD_OVERRIDE_PARAMS:
                raise Refusal(400, f"method-override parameters ({key}) are refused: send the real method")
    h = hdrs
    if len(h.get(b"host", ())) > 1:
        raise Refusal(400, "a request has one Host header")
    # CGI, PHP, WSGI and Rack read X_Original_URL as X-Original-URL (both HTTP_X_ORIGINAL_URL): every
    # header below counts in its underscore spelling too
    # (find(), not ``in``, on bytes in the per-request path: see hoopy/bytesearch.py)
    names = h.keys() if b"".join(h).find(b"_") == -1 else {n.replace(b"_", b"-") for n in h}
    for name in H.PATH_OVERRIDE:
        if name in names:
            raise Refusal(400, f"path-override headers ({name.decode()}) are refused: the request line "
                               "is what is judged")
    if b"content-length" in h and b"transfer-encoding" in h:
        raise Refusal(400, "a request cannot have both Content-Length and Transfer-Encoding", close=True)
    if method in (b"GET", b"HEAD") and (b"transfer-encoding" in h or any(
            v.strip() != b"0" for v in h.get(b"content-length", ()))):
        # A server that does not read a GET's body takes it for the next request on its connection,
        # behind a pool another caller's, with the injected credential (RFC 9110 9.3.1: may be refused)
        raise Refusal(400, f"a {method.decode()} request cannot carry a body: send it with POST", close=True)
    te = h.get(b"transfer-encoding")
    if te is not None and (len(te) != 1 or te[0].strip().lower() != b"chunked"):
        # twisted.web reads "chunked" + "identity" (two headers) as chunked and ignores "identity"
        # alone; a server in front of or behind us may frame either otherwise: never guessed at.
        raise Refusal(400, "the only transfer coding accepted is one 'Transfer-Encoding: chunked'", close=True)
    for name in H.IDENTITY_ASSERTION.intersection(names):
        raise Refusal(400, f"identity headers of authenticating proxies ({name.decode()}) are refused: "
                           "the upstream would take them for who is calling")
    for name in H.METHOD_OVERRIDE:
        if name in names:
            raise Refusal(400, f"method-override headers ({name.decode()}) are refused: send the real method")
    websocket = False
    if b"upgrade" in h:
        # exactly websocket: "websocket, h2c" would let the upstream pick h2c, and an HTTP/2 tunnel
        # carries requests to any path, none of them judged
        upgrade = [t.strip().lower() for v in h[b"upgrade"] for t in v.split(b",") if t.strip()]
        if method != b"GET" or upgrade != [b"websocket"]:
            raise Refusal(501, "only WebSocket upgrades (GET with Upgrade: websocket) are relayed")
        if masking:
            raise Refusal(501, "WebSocket frames cannot be masked, and this connection has masking "
                               "rules: upgrades are refused rather than relayed unmasked")
        if websocket_key(h) is None:
            raise Refusal(400, "a WebSocket upgrade needs one Sec-WebSocket-Key (16 bytes in base64)")
        websocket = True
    return path, query, websocket


def check_token_stays(token: str, pairs, query: str | None, websocket: bool):
    """The caller's token goes nowhere but here: not upstream in another header, a cookie or the query."""
    tok = token.encode("latin-1")
    for name, values in pairs:
        n = name.lower()
        if n in (b"authorization", b"x-hoopy-token"):
            continue
        if n == b"sec-websocket-protocol" and websocket:
            if any(tok in v.replace(BEARER_PREFIX + tok, b"") for v in values):
                raise Refusal(400, "the caller's token is in the subprotocol offer other than as "
                                   "hoopy.bearer.TOKEN, and would reach the upstream")
            continue  # the browser's way to send it: removed before the upgrade goes upstream
        for v in values:
            if v.find(tok) == -1:
                continue
            raise Refusal(400, f"the caller's token is in the {name.decode('latin-1')} header too, "
                               "and would reach the upstream")
    if query is not None and (token in query or token in unquote_plus(query)):
        raise Refusal(400, "the caller's token is in the query string, and would reach the upstream")


def operation(method: str, path: str, query: str | None, judge) -> Operation:
    """What the policy judges: the path as forwarded, and each form of it that a lenient upstream
    reads as the same route (Express and older Spring ignore a trailing slash, IIS and many others
    ignore case, IIS drops trailing dots and spaces) whenever a rule treats that form more strictly
    (denies or holds it). Otherwise "DELETE /v1/customers/42/" would slip past "DELETE
    /v1/customers/*" and reach the very route it denies. ``judge``: the session's pure judgement."""
    units = [Unit(method, path)]
    for form in _lenient_forms(path):
        unit = Unit(method, form)
        j = judge(Operation("http", "request", f"{method} {form}", (unit,)))
        if j.outcome == "approve" or (j.outcome == "deny" and j.rule is not None):
            units.append(unit)
    # The reviewer of a held request reads this text: the query is part of what is approved
    text = f"{method} {path}" + (f"?{query[:1024]}" if query else "")
    detail = {"method": method, "path": path, "query": query}
    # What a retry-mode approval is bound to: method, normalized path, query, the body's SHA-256 (put in
    # ``detail`` when a reviewer reads the body, before the decision). Made only when an approval asks.
    return Operation("http", "request", text, tuple(units), detail, canonical=lambda: Operation.canonical_of(
        method, path, query, detail.get("body_sha256")))


_FORMS: dict = {}  # path -> its other lenient forms (pure string work, the same for every request of a path)


def _lenient_forms(path: str) -> tuple:
    forms = _FORMS.get(path)
    if forms is None:
        trimmed = path.rstrip("/") or "/"
        dotless = "/".join((_TRAILING_DOTS.sub("", seg) or seg) if seg.endswith((".", "%20")) else seg
                           for seg in trimmed.split("/"))
        forms = tuple(f for f in dict.fromkeys(f for p in (trimmed, path.lower(), dotless)
                                               for f in (p, p.lower(), p.rstrip("/") or "/")) if f != path)
        if len(path) <= 256:  # paths come from callers: the cache stays small (at most ~10 MB)
            if len(_FORMS) >= 4096:
                _FORMS.clear()
            _FORMS[path] = forms
    return forms


_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))
_CANONICAL = {b"x-forwarded-for": b"X-Forwarded-For", b"x-forwarded-proto": b"X-Forwarded-Proto",
              b"forwarded": b"Forwarded"}


class HeaderPlan:
    """How one connection's requests are rewritten for the upstream (computed once per site)."""

    def __init__(self, inject: list, upstream_host: bytes, client_host: bytes, proto: str):
        self.inject = inject  # [(name, value)]: the connection's upstream_headers
        self.upstream_host, self.client_host, self.proto = upstream_host, client_host, proto
        # Never forwarded as the caller sent them: hop-by-hop, ours, forwarding headers, Host,
        # Content-Length, the caller's credential, those the gateway injects, and Expect (answered
        # here: the body follows at once).
        self.dropped = (H.HOP_BY_HOP | H.HOOPY | H.FORWARDING | {n.lower() for n, _ in inject}
                        | {b"host", b"content-length", b"authorization", b"expect"})
        self._forwarded: dict = {}  # peer host -> its forwarding headers (the same for every request of a peer)
        # Set by the site when an injected header is a credential it scrubs from responses: bodies
        # are then asked for uncompressed (a compressed one is decoded to be scrubbed, or refused)
        self.plain_bodies = False

    def forwarding(self, peer_host: str) -> list:
        """The Forwarded and X-Forwarded-* headers for a peer: made once a peer host."""
        found = self._forwarded.get(peer_host)
        if found is None:
            found = [(_CANONICAL.get(name, name), value)
                     for name, value in H.forwarded_for(peer_host, self.proto, None).items()]
            if len(self._forwarded) >= 4096:  # peers come and go: the cache stays small
                self._forwarded.clear()
            self._forwarded[peer_host] = found
        return found

    def build(self, method: bytes, pairs, hdrs: dict, peer_host: str, masking: bool,
              upgrade: bool = False) -> list:
        """The upstream request's headers, as (name, value) pairs."""
        conn = hdrs.get(b"connection")
        extra_hop = H.connection_tokens(conn) - {b"upgrade"} if conn else ()
        out = []
        if upgrade:
            out += [(b"Host", self.upstream_host), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
            protocols = upstream_subprotocols(hdrs)
            if protocols:
                out.append((b"Sec-WebSocket-Protocol", b", ".join(protocols)))
        else:
            out.append((b"Host", self.client_host))
        dropped = self.dropped
        plain = masking or self.plain_bodies  # bodies the gateway reads (to mask, or to scrub the credential)
        for name, values in pairs:
            n = name.lower()
            if n.find(b"_") != -1:  # Transfer_Encoding, X_Forwarded_For: the same header to CGI-style readers
                n = n.replace(b"_", b"-")
            if (n in dropped or n in extra_hop or (upgrade and n == b"sec-websocket-protocol")
                    or n.startswith(b"x-hoopy-")):  # the gateway's own namespace: never the upstream's
                continue
            if plain:
                if n == b"accept-encoding" or (masking and n in (b"range", b"if-range")):
                    continue  # we must read what we mask, whole (a slice of a JSON value is no JSON)
                if masking and n in (b"if-none-match", b"if-match") and method in (b"GET", b"HEAD"):
                    continue  # a 304/412 would tell whether a guessed body (its ETag) is the unmasked one
            for v in values:
                out.append((name, v))
        if plain:
            out.append((b"Accept-Encoding", b"identity"))
        if method not in _BODY_METHODS and (b"content-length" in hdrs or b"transfer-encoding" in hdrs):
            # A body where the method defines none (DELETE, OPTIONS ...): an upstream that leaves it
            # unread would prepend it to the next request on the connection (another caller's):
            # that connection is not used again.
            out.append((b"Connection", b"close"))
        # No host= / X-Forwarded-Host: the caller picks its Host header, and an upstream (or the ingress
        # in front of it) that routes on X-Forwarded-Host would take the caller to another site.
        out += self.forwarding(peer_host)
        out += self.inject
        return out
