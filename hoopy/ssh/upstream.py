"""The gateway's own SSH connection to the upstream host, one per client.

The upstream's host key must be in ``upstream_known_hosts``: an unknown or
changed key is refused (no trust on first use), and the client is told why.
"""
from __future__ import annotations

import asyncio

import asyncssh
from twisted.internet.endpoints import clientFromString

from hoopy.ssh import private
from hoopy.upstream import UpstreamError


# AES-GCM is one call into OpenSSL per packet; asyncssh's chacha20-poly1305 is
# two passes with Python between them (about 3x slower here). The gateway is the
# client upstream, so its order decides.
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                "aes128-ctr", "aes192-ctr", "aes256-ctr")


# What the gateway advertises on the channels it receives on: the peer may send
# packets up to MAX_PACKET (OpenSSH honours up to 256 KiB), so each trip
# through Python carries more.
WINDOW = 8 * 1024 * 1024
MAX_PACKET = 128 * 1024


def address(endpoint: str) -> tuple[str, int]:
    """(host, port) of a Twisted client endpoint string such as tcp:host=H:port=P."""
    ep = clientFromString(None, endpoint)
    host = getattr(ep, "_hostText", None) or getattr(ep, "_host", None)
    port = getattr(ep, "_port", None)
    if not host or not port:
        raise ValueError(f"{endpoint!r}: only tcp:host=...:port=... upstreams are supported for ssh")
    if isinstance(host, bytes):
        host = host.decode()
    return host, int(port)


class Upstream:
    """What every client's upstream connection is made from (parsed once)."""

    def __init__(self, settings):
        self.host, self.port = address(settings.upstream)
        self.user = settings.upstream_user
        self.timeout = settings.connect_timeout
        self.key = asyncssh.import_private_key(settings.upstream_key.value)
        self.known_hosts = asyncssh.import_known_hosts(settings.upstream_known_hosts.value + "\n")

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    async def connect(self, on_lost=None) -> asyncssh.SSHClientConnection:
        try:
            conn, _ = await asyncio.wait_for(asyncssh.create_connection(
                lambda: _Client(on_lost), self.host, self.port, username=self.user, client_keys=[self.key],
                known_hosts=self.known_hosts, agent_path=None, agent_forwarding=False,
                x11_forwarding=False, config=[], preferred_auth="publickey",
                password=None, kbdint_auth=False, gss_auth=False, host_based_auth=False,
                keepalive_interval=30, keepalive_count_max=3, encryption_algs=FAST_CIPHERS,
            ), self.timeout)
            return conn
        except asyncssh.HostKeyNotVerifiable as e:
            raise _reached(UpstreamError(
                f"the upstream host key of {self.name} is not the one in upstream_known_hosts "
                f"(unknown or changed): session refused ({e.reason})"), "upstream_known_hosts") from None
        except asyncssh.PermissionDenied:
            raise _reached(UpstreamError(f"the upstream {self.name} refused the gateway's key"),
                           "upstream_key") from None
        except asyncio.TimeoutError:
            raise UpstreamError(f"the upstream {self.name} did not answer within {self.timeout:g}s") from None
        except (OSError, asyncssh.Error) as e:
            why = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise UpstreamError(f"the upstream {self.name} is unreachable: {why}") from None


def _reached(e: UpstreamError, key: str) -> UpstreamError:
    """The upstream answered (it is reachable) but the gateway cannot use it; ``key``: the
    setting that says why (for `hoopy check --connect`)."""
    e.reached = True
    e.key = key
    return e


class _Client(asyncssh.SSHClient):
    def __init__(self, on_lost):
        self._on_lost = on_lost

    def connection_made(self, conn):
        private.gateway_client_connection(conn)  # fewer send syscalls (see hoopy/ssh/private.py)

    def connection_lost(self, exc):
        if self._on_lost is not None:
            self._on_lost(exc)


async def login_shell(settings) -> str:
    """The login shell of ``upstream_user`` (sshd runs every exec line with it): asks the upstream
    for ``$SHELL``, which sshd sets from the user's passwd entry. Raises UpstreamError."""
    conn = await Upstream(settings).connect()
    try:
        # printf and "$SHELL" read the same in sh, bash, zsh, fish and csh.
        r = await asyncio.wait_for(conn.run("printf '%s\\n' \"$SHELL\"", check=False), settings.connect_timeout)
    except asyncio.TimeoutError:
        raise UpstreamError("the upstream did not say which shell it runs within the connect timeout") from None
    finally:
        conn.close()
    out = r.stdout if isinstance(r.stdout, str) else (r.stdout or b"").decode("utf-8", "replace")
    return out.strip().splitlines()[0] if out.strip() else ""


async def check_upstream_shell(settings) -> str | None:
    """For `hoopy check --connect`: None if ``upstream_shell`` reads lines as the upstream's login
    shell will, else the problem (for the key ``upstream_shell``)."""
    from hoopy.ssh.shell import dialect_of

    shell = await login_shell(settings)
    want, got = dialect_of(settings.upstream_shell), dialect_of(shell)
    if not shell:
        return f"the upstream did not name its login shell (upstream_shell is {settings.upstream_shell!r})"
    if want != got:
        if got is None:
            return (f"the login shell of {settings.upstream_user} is {shell}, which the gateway cannot read: "
                    f"every exec line will be unjudgeable (set upstream_shell = {shell!r} to say so)")
        return (f"upstream_shell is {settings.upstream_shell!r} but the login shell of {settings.upstream_user} "
                f"is {shell}: set upstream_shell = {shell!r}")
    return None
