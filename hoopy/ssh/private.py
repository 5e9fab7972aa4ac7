"""Every private asyncssh API hoopy relies on, in one place.

asyncssh's public API has no call for some things a relay must do exactly as
sshd does (send ``exit-status`` without closing, so EOF and close can follow
in the upstream's order; bound what a client's ``env`` requests make the
gateway keep). Each use is a small function here; tests/test_ssh_private.py
checks that every name still exists with the shape used, so an asyncssh
upgrade that removes one fails loudly in the suite, not silently on a client.
"""
from __future__ import annotations

import asyncssh
from asyncssh.packet import Boolean, String, UInt32

# What this module touches; tests/test_ssh_private.py checks each one.
USED_METHODS = (  # (class, method name)
    (asyncssh.SSHServerChannel, "_send_request"),
    (asyncssh.SSHServerChannel, "_process_env_request"),
)
USED_ATTRIBUTES = (  # (class, attribute its instances carry)
    (asyncssh.SSHServerChannel, "_send_state"),
    (asyncssh.SSHServerChannel, "_env"),
)


def send_exit_status(chan: asyncssh.SSHServerChannel, status: int) -> bool:
    """Send ``exit-status`` and leave the channel open (``chan.exit`` also closes it)."""
    if chan._send_state in ("close_pending", "closed"):
        return False
    chan._send_request(b"exit-status", UInt32(status & 0xFF))
    return True


def send_exit_signal(chan: asyncssh.SSHServerChannel, signal: str, core_dumped: bool = False,
                     msg: str = "", lang: str = asyncssh.DEFAULT_LANG) -> bool:
    """Send ``exit-signal`` and leave the channel open."""
    if chan._send_state in ("close_pending", "closed"):
        return False
    chan._send_request(b"exit-signal", String(signal), Boolean(core_dumped), String(msg or ""),
                       String(lang or asyncssh.DEFAULT_LANG))
    return True


class BoundedEnvChannel(asyncssh.SSHServerChannel):
    """A server channel that keeps a bounded number of ``env`` requests.

    asyncssh keeps every one a client sends; ``env_refused(key, why)`` (set per
    channel) hears of each one refused, so it can be recorded.
    """

    max_env = 64
    max_env_bytes = 4096
    env_refused = None

    def _process_env_request(self, packet) -> bool:
        key = packet.get_string()
        value = packet.get_string()
        packet.check_end()
        if len(key) + len(value) > self.max_env_bytes:
            why = f"larger than {self.max_env_bytes} bytes"
        elif key not in self._env and len(self._env) >= self.max_env:
            why = f"more than {self.max_env} variables"
        else:
            self._env[key] = value
            return True
        if self.env_refused is not None:
            self.env_refused(key, why)
        return False


def bound_env(chan: asyncssh.SSHServerChannel, max_env: int, max_bytes: int, on_refused) -> None:
    """Make ``chan`` (made by ``create_server_channel``) keep at most ``max_env`` variables."""
    chan.__class__ = BoundedEnvChannel
    chan.max_env, chan.max_env_bytes, chan.env_refused = max_env, max_bytes, on_refused
