"""What hoopy's commands share: hoopy/cli.py and a protocol's own (hoopy/mcp/cli.py) import it,
so neither imports the other for it. Failing with a message, the configuration as a command reads it,
and the admin API's client (no proxies, no redirects, no token in clear off this machine)."""
from __future__ import annotations

import ipaddress
import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

from hoopy.text import escape


def fail(msg: str, code: int = 1):
    print(f"hoopy: {msg}", file=sys.stderr)
    return code


def load_config(args, mode: str = "gateway"):
    """The configuration; readers read only what they need and resolve no secret."""
    from hoopy import config as configmod

    try:
        return configmod.load(args.config, mode=mode)
    except configmod.ConfigError as e:
        for p in e.problems:
            print(f"hoopy: {args.config}: {escape(str(p))}", file=sys.stderr)
        raise SystemExit(2)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could send the reviewer's token anywhere: never followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.URLError(f"the admin API answered with a redirect ({code} to "
                                    f"{escape(newurl)}): refused, the token is not sent on")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_admin_url(url: str) -> str:
    """The admin URL, if a token may be sent to it: http only to a loopback IP address,
    https to an IP address or a name (the certificate is verified). Raises ValueError."""
    try:
        u = urllib.parse.urlsplit(url)
        host, port = u.hostname, u.port
    except ValueError as e:
        raise ValueError(f"{url!r} is not a URL: {e}")
    if u.scheme not in ("http", "https") or not host:
        raise ValueError(f"{url!r}: the admin API is an http:// or https:// URL with a host")
    if u.username or u.password or u.query or u.fragment or u.path not in ("", "/"):
        raise ValueError(f"{url!r}: the admin URL is scheme://host:port only")
    if u.scheme == "http":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{url!r}: over plain http the admin address must be an IP address, not a "
                             f"name (a name could resolve to another machine); use https:// for a name")
        if not _loopback(host):
            raise ValueError(f"{url!r}: refusing to send a token in clear to {host}, which is not this "
                             "machine; use https:// (admin_listen = \"ssl:...\")")
    netloc = f"[{host}]" if ":" in host else host
    return f"{u.scheme}://{netloc}" + (f":{port}" if port else "")


def admin_url(cfg) -> str:
    from hoopy.config import admin_address

    desc = cfg.gateway.admin_listen
    if not desc:
        raise SystemExit(fail("gateway.admin_listen is not set: the gateway has no admin API", 2))
    try:
        scheme, host, port = admin_address(desc)
    except (ValueError, IndexError):
        raise SystemExit(fail(f"gateway.admin_listen {desc!r}: no port in it", 2))
    if cfg.gateway.admin_tls_cert is not None:
        scheme = "https"  # the listener serves TLS itself (admin_tls_cert, admin_tls_key)
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


class AdminClient:
    def __init__(self, cfg, override: str | None, token: str):
        try:
            self.base = check_admin_url(override or admin_url(cfg))
        except ValueError as e:
            raise SystemExit(fail(str(e), 2))
        context = None
        if self.base.startswith("https:"):
            # The system's CAs, admin_ca, and the listener's own certificate (self-signed or not:
            # X509_V_FLAG_PARTIAL_CHAIN lets a leaf be its own anchor).
            context = ssl.create_default_context()
            cert = cfg.gateway.admin_tls_cert
            if cert is not None and cert.value:
                try:
                    context.load_verify_locations(cadata=cert.value)
                except ssl.SSLError as e:
                    raise SystemExit(fail(f"gateway.admin_tls_cert: {e}", 2))
                context.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
            if cfg.gateway.admin_ca is not None:
                try:
                    context.load_verify_locations(cafile=str(cfg.gateway.admin_ca))
                except (OSError, ssl.SSLError) as e:
                    raise SystemExit(fail(f"gateway.admin_ca: {e}", 2))
        # No proxies (a proxy would see the token), no redirects.
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), _NoRedirect(), urllib.request.HTTPSHandler(context=context))
        self.token = token

    def call(self, method: str, path: str, body: dict | None = None):
        """(status, JSON answer); raises OSError if the gateway cannot be reached."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read(1 << 24) or b"null")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read(1 << 20))
            except ValueError:
                return e.code, {"error": e.reason}
