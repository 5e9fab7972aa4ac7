"""What one http connection's requests share, and the head deadline of twisted.web channels.

``HTTPSite`` holds what every request of a ``[connections.X]`` of type http shares: settings, the
masker, the upstream client, the header plan, the injected secrets to scrub, and each client
connection's session (the connections themselves are hoopy/http/server.py's). ``HeadDeadline``
gives a twisted.web ``HTTPChannel`` (the MCP gateway's) a deadline for each request head.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import re
from itertools import chain
from urllib.parse import quote_from_bytes, urlsplit

from twisted.internet import defer
from twisted.logger import Logger

from hoopy.http import headers as H
from hoopy.http.bodies import Masker, Scrubber
from hoopy.http.checks import HeaderPlan

log = Logger()


class HeadDeadline:
    """For an HTTPChannel: a request's head must be in ``head_timeout`` after its first byte (or after
    the connection opened). twisted.web's idle timeout restarts at every byte, so a head sent a byte
    at a time (slowloris) would hold its connection, unauthenticated, for ever. Late: 408, closed."""

    head_timeout = 20.0
    _head_timer = None
    _awaiting_head = True

    def connectionMade(self):
        super().connectionMade()
        self._arm_head()

    def _arm_head(self):
        if self._head_timer is None:
            self._head_timer = self.callLater(self.head_timeout, self._head_late)

    def _head_late(self):
        self._head_timer = None
        if self.transport is not None and self._awaiting_head:
            log.info("no request head within {t:g}s from {peer}: closed", t=self.head_timeout,
                     peer=str(self.transport.getPeer()))
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()

    def dataReceived(self, data):
        if self._awaiting_head:
            self._arm_head()
        super().dataReceived(data)

    def allHeadersReceived(self):
        self._awaiting_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().allHeadersReceived()

    def requestDone(self, request):
        self._awaiting_head = True  # the next head's deadline starts at its first byte
        super().requestDone(request)

    def connectionLost(self, reason=None):
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connectionLost(reason)


class HTTPSite:
    """Everything one http connection's requests share."""

    def __init__(self, gateway, connection, upstream, tls: bool, tls_policy=None):
        self.gateway = gateway
        self.reactor = gateway.reactor
        self.identities = gateway.identities
        self.connection = connection
        self.settings = s = connection.settings
        self.upstream = upstream  # hoopy.http.upstream.UpstreamClient
        self.tls_policy = tls_policy  # for WebSocket upgrades over https
        u = urlsplit(s.upstream)
        self.upstream_hostname = u.hostname
        self.upstream_port = u.port or (443 if u.scheme == "https" else 80)
        self.upstream_prefix = u.path.rstrip("/").encode()
        inject = [(name.encode("latin-1"), v.value.encode("latin-1")) for name, v in s.upstream_headers.items()]
        # The Host header for the upstream (default ports left out, an IPv6 literal in brackets)
        host = u.hostname.encode("idna") if ":" not in u.hostname else b"[" + u.hostname.encode() + b"]"
        default = (u.scheme, self.upstream_port) in (("http", 80), ("https", 443))
        self.header_plan = HeaderPlan(inject, u.netloc.encode(), host if default else b"%b:%d" % (
            host, self.upstream_port), "https" if tls else "http")
        # The injected credentials, whole and without their scheme ("Bearer ..."): an upstream that
        # echoes one back (a header, a redirect's Location, a debug body) must not hand it to the caller.
        secrets = set()
        for _, v in inject:
            secrets.update(spellings(v))
        self.secrets = tuple(sorted(secrets, key=len, reverse=True))
        # An upstream asked for a compressed body (Accept-Encoding: gzip) would echo the credential
        # where the scrubber cannot read it: bodies are asked for uncompressed (response_body.py)
        self.header_plan.plain_bodies = bool(self.secrets)
        # Headers are searched in any case (an upstream may upper-case what it echoes)
        self._secret_re = re.compile(b"|".join(re.escape(s) for s in self.secrets), re.IGNORECASE) \
            if self.secrets else None
        # Each secret in lower case holds one of these: a header value whose lower case holds none
        # is not searched (most are not: the pattern costs microseconds a header, the test a tenth)
        lowered = {s.lower() for s in self.secrets}
        self._secret_cores = _cores(lowered)
        self.masker = Masker.from_config(gateway.config.masking_for(connection.name))
        self._scrubber = Scrubber(self.secrets) if self.secrets else None  # each response gets a fresh() one
        self.channels: set = set()
        # The last plain response head's cleaning (response_head.clean_headers): most answers of
        # an upstream repeat their head but for its Date, which changes once a second
        self.head_memo: tuple | None = None
        self._clean_head: tuple | None = None  # the last response head head_scrub found clean

    def identity_for(self, channel, token: str):
        """The identity a token names (None: none): remembered per connection for its next request."""
        raw = token.encode("latin-1")
        if channel is not None and channel.last_token is not None and hmac.compare_digest(channel.last_token, raw):
            ident = channel.last_identity
            # a per-child credential is revoked when its child exits, and expires: asked each time
            if ident.credential is None or self.identities.live(ident.credential):
                return ident
            channel.last_token = channel.last_identity = None  # asked anew below (None: gone)
        ident = self.identities.by_token(token)
        if ident is not None and channel is not None:
            channel.last_token, channel.last_identity = raw, ident
        return ident

    def auth_failed(self, peer: str, why: str):
        self.gateway.auth_failed(self.connection, peer, "", "bearer", why)

    def scrub_header(self, value: bytes) -> bytes:
        if self._secret_re is None:
            return value
        low = value.lower()
        for core in self._secret_cores:
            if low.find(core) != -1:  # (find(), not ``in``: see hoopy/bytesearch.py)
                return self._secret_re.sub(H.REDACTED.encode(), value)
        return value

    def head_scrub(self, phrase: bytes, pairs):
        """``scrub_header`` if a response head (its reason phrase and (name, value) pairs) may hold
        an injected credential, else None: nothing in it is scrubbed. One search of the whole head
        in lower case instead of one per name and value (most heads hold none): a core in any name
        or value in lower case is in their concatenation in lower case, so None is only said of a
        head every ``scrub_header`` call would have returned unchanged."""
        if self._secret_re is None:
            return None
        # The last head found clean, kept: the same phrase and header lines again are clean again
        # (an upstream repeats its head but for its Date, which changes once a second)
        head = (phrase, tuple(pairs))
        if head == self._clean_head:
            return None
        low = b"".join(chain((phrase,), chain.from_iterable(pairs))).lower()
        for core in self._secret_cores:
            if low.find(core) != -1:
                return self.scrub_header
        self._clean_head = head
        return None

    def scrub_body(self, data: bytes) -> bytes:
        for secret in self.secrets:
            if secret in data:
                data = data.replace(secret, b"*" * len(secret))
        return data

    def scrubber(self):
        return self._scrubber.fresh() if self._scrubber is not None else None

    def raw_endpoint(self):
        """A client endpoint to the upstream outside the pool (for upgrades)."""
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        ep = HostnameEndpoint(self.reactor, self.upstream_hostname, self.upstream_port,
                              timeout=min(self.settings.upstream_timeout, 10.0))
        if self.settings.upstream.startswith("https:"):
            creator = self.tls_policy.creatorForNetloc(self.upstream_hostname.encode(), self.upstream_port)
            ep = wrapClientTLS(creator, ep)
        return ep

    # --- sessions: one per client connection --------------------------------------------------

    def session_for(self, channel, identity: str, peer: str, credential: str | None = None):
        """The channel's session for this identity (and per-child credential, see hoopy/causal.py):
        a new one if another identity or credential spoke before. The session itself when the
        channel's goes on (most requests: no Deferred made and waited on), else a Deferred of the
        new one, which fires once it is recorded."""
        s = channel.session
        if s is not None and s.identity == identity and s.credential == credential and not s.ended:
            return s
        if s is not None:
            self.end_session(channel, "another identity used this connection")
        session = self.gateway.new_session(identity, self.connection, peer, credential=credential)
        session.terminate = _Terminate(channel, session)
        channel.session = session
        return session.start()

    def end_session(self, channel, reason: str):
        s, channel.session = channel.session, None
        if s is not None:
            s.cancel_holds(reason)
            s.end(reason)

    def channel_closed(self, channel):
        if channel.session is not None:
            self.end_session(channel, "client disconnected")
        self.channels.discard(channel)

    def stop(self, reason: str):
        ds = []
        for channel in list(self.channels):
            s = channel.session
            if s is not None:
                ds += s.cancel_holds(reason)
                ds.append(s.terminate(reason))
            elif channel.transport is not None:
                channel.transport.loseConnection()
        return defer.DeferredList(ds, consumeErrors=True)


_UNRESERVED_RUN = re.compile(rb"[a-z0-9._~-]{8,}")


def _cores(lowered: set) -> tuple:
    """Strings one of which every secret (in lower case) holds: a header whose lower case holds none
    is not searched with the pattern. A run of 8+ unreserved characters is spelled alike in every
    spelling (no encoder touches them), so a secret's spellings share it: the longest such run of a
    secret that its other spellings hold too, else the secret itself."""
    anchors = set()
    for s in lowered:
        runs = sorted(_UNRESERVED_RUN.findall(s), key=len, reverse=True)
        found = None
        for run in runs:
            if sum(1 for o in lowered if run in o) > 1:
                found = run
                break
        anchors.add(found or s)
    # each secret holds one of them (checked, not assumed), and none holds another
    assert all(any(a in s for a in anchors) for s in lowered)
    return tuple(a for a in anchors if not any(o != a and o in a for o in anchors))


# What percent-encoders leave of the reserved characters (see spellings)
_PARTLY_SAFE = (b"/", b"+=:@$&,;", b"/+=:@$&,;!*'()")


def spellings(value: bytes) -> set[bytes]:
    """An injected header value as an upstream may echo it: whole and without its scheme; in either
    case; percent- and form-encoded (a redirect's query), wholly or partly (as
    common encoders leave "/", "+", "="); with JSON's escaped slash (PHP's default);
    and a Basic credential decoded (user:password, and the password). Each at least 8 bytes."""
    scheme, _, rest = value.partition(b" ")
    rest = rest.strip()
    base = {value, rest}
    if scheme.lower() == b"basic" and rest:
        try:
            plain = base64.b64decode(rest, validate=True)
        except (binascii.Error, ValueError):
            plain = b""
        if plain:
            base.update((plain, plain.partition(b":")[2]))
    out: set[bytes] = set()
    for s in base:
        for form in (s, s.lower(), s.upper()):
            pct = quote_from_bytes(form, safe=b"").encode()
            out.update((form, form.replace(b"/", b"\\/"), pct, pct.replace(b"%20", b"+")))
            # partly encoded, as encoders leave reserved characters: Python's quote() keeps "/", Go's
            # url.PathEscape "+", "=", ":", "@", "$", "&"; a path encoder "/" and all of them
            for safe in _PARTLY_SAFE:
                out.add(quote_from_bytes(form, safe=safe).encode())
    # percent escapes in lower-case hex too (the header search ignores case; bodies are searched as is)
    out.update([re.sub(rb"%[0-9A-F]{2}", lambda m: m.group().lower(), s) for s in out if b"%" in s])
    return {s for s in out if len(s) >= 8}


class _Terminate:
    """Ends a session and its connection (gateway shutdown)."""

    def __init__(self, channel, session):
        self.channel, self.session = channel, session

    def __call__(self, reason):
        d = self.session.end(reason)
        if self.channel.transport is not None:
            self.channel.transport.abortConnection()
        return d
