"""Every private asyncssh API hoopy relies on, in one place.

asyncssh's public API has no call for some things a relay must do exactly as
sshd does (send ``exit-status`` without closing, so EOF and close can follow
in the upstream's order; bound what a client's ``env`` requests make the
gateway keep; hear of every request asyncssh refuses on its own, so it is
recorded), nor for relaying bulk data without copying it many times over.
Each use is here, small; tests/test_ssh_private.py checks that every name
still exists with the shape used, so an asyncssh upgrade that removes one
fails loudly in the suite, not silently on a client.
"""
from __future__ import annotations

import asyncssh
from asyncssh.constants import MSG_CHANNEL_OPEN
from asyncssh.packet import Boolean, SSHPacket, String, UInt32

# What this module touches; tests/test_ssh_private.py checks each one.
USED_METHODS = (  # (class, method name)
    (asyncssh.SSHServerChannel, "_send_request"),
    (asyncssh.SSHServerChannel, "_process_env_request"),
    (asyncssh.SSHServerChannel, "_report_response"),
    (asyncssh.SSHServerConnection, "_process_channel_open"),
    (asyncssh.SSHServerConnection, "send_channel_open_failure"),
    (asyncssh.SSHServerConnection, "_report_global_response"),
    (asyncssh.SSHServerConnection, "_send"),
    (asyncssh.SSHClientConnection, "_send"),
    (asyncssh.SSHServerConnection, "data_received"),
    (asyncssh.SSHServerConnection, "_recv_pkthdr"),
    (asyncssh.SSHServerConnection, "_recv_packet"),
    (asyncssh.SSHServerConnection, "_reset_keepalive_timer"),
)
USED_ATTRIBUTES = (  # (class, attribute its instances carry)
    (asyncssh.SSHServerChannel, "_send_state"),
    (asyncssh.SSHServerChannel, "_env"),
    (asyncssh.SSHServerChannel, "_request_queue"),
    (asyncssh.SSHServerConnection, "_global_request_queue"),
    (asyncssh.SSHServerConnection, "_transport"),
    (asyncssh.SSHServerConnection, "_loop"),
    (asyncssh.SSHClientConnection, "_transport"),
    (asyncssh.SSHServerConnection, "_recv_handler"),
    (asyncssh.SSHServerConnection, "_inpbuf"),
    (asyncssh.SSHServerConnection, "_recv_blocksize"),
    (asyncssh.SSHServerConnection, "_recv_macsize"),
    (asyncssh.SSHServerConnection, "_pktlen"),
)
# And the class attribute ``SSHServerConnection._packet_handlers`` (a dict by message type).


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


class GatewayServerChannel(asyncssh.SSHServerChannel):
    """A session channel that bounds its ``env`` requests and reports every request it refuses.

    asyncssh keeps every ``env`` request a client sends, and refuses some
    requests on its own (``x11-req``, ``auth-agent-req@openssh.com``, a second
    ``exec``, a command line that is not UTF-8, unknown requests) without
    telling the application: ``refused(request)``, set per channel, hears of
    each refusal, whoever made it.
    """

    max_env = 64
    max_env_bytes = 4096
    refused = None  # callable(request name, why or None)

    def _process_env_request(self, packet) -> bool:
        key = packet.get_string()
        value = packet.get_string()
        packet.check_end()
        if len(key) + len(value) > self.max_env_bytes:
            self._env_why = f"env {_text(key)}: larger than {self.max_env_bytes} bytes"
        elif key not in self._env and len(self._env) >= self.max_env:
            self._env_why = f"env {_text(key)}: more than {self.max_env} variables"
        else:
            self._env[key] = value
            return True
        return False

    def _report_response(self, result) -> None:
        request = self._request_queue[0][0] if self._request_queue else "?"
        super()._report_response(result)
        if not result and request not in QUIET_REQUESTS and self.refused is not None:
            why = self.__dict__.pop("_env_why", None) if request == "env" else None
            self.refused(request, why)


def gateway_channel(chan: asyncssh.SSHServerChannel, max_env: int, max_bytes: int,
                    refused) -> asyncssh.SSHServerChannel:
    """Make ``chan`` (from ``create_server_channel``) a GatewayServerChannel."""
    chan.__class__ = GatewayServerChannel
    chan.max_env, chan.max_env_bytes, chan.refused = max_env, max_bytes, refused
    return chan


# Requests whose refusal is the ordinary answer, not a refused operation.
QUIET_REQUESTS = frozenset({"keepalive@openssh.com"})


def _text(b) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


class _CoalescedSends:
    """Fewer copies and syscalls per byte relayed, for the gateway's own connections.

    Received: asyncssh appends what arrives to its input buffer and, for each packet it takes
    off the front, copies the rest of the buffer; a 256 KiB read holding several packets was
    copied many times over (memcpy was more than half of the gateway's instructions in a bulk
    transfer). Here each read is handed over in the pieces asyncssh is waiting for (the next
    packet's first block, then the rest of that packet), so its buffer holds one packet at most
    and each byte is copied once on the way in.

    Sent: packets sent while one event is handled go to the socket in one write.
    """

    _pending_sends = None
    _keepalive_reset_at = -1e9

    def _reset_keepalive_timer(self) -> None:
        # asyncssh cancels and re-arms its keepalive timer (a new timer handle on the loop's heap)
        # for every piece of input: once a second is as good for a 30-60 s keepalive.
        now = self._loop.time()
        if now - self._keepalive_reset_at >= 1.0:
            self._keepalive_reset_at = now
            super()._reset_keepalive_timer()

    def data_received(self, data, datatype=None) -> None:
        n = len(data)
        view = memoryview(data) if n > 4096 else data
        pos = 0
        while pos < n:
            if not self._transport:
                return  # closed by what came before: asyncssh reads no further either
            handler = self._recv_handler
            if handler == self._recv_pkthdr:
                need = self._recv_blocksize - len(self._inpbuf)
            elif handler == self._recv_packet:
                need = 4 + self._pktlen + self._recv_macsize - self._recv_blocksize - len(self._inpbuf)
            else:  # the version line, or anything else: all of it, as asyncssh would take it
                need = n - pos
            need = max(need, 1)
            super().data_received(view[pos:pos + need], datatype)
            pos += need

    def _send(self, data: bytes) -> None:
        pending = self._pending_sends
        if pending is None:
            # The transport as it is now: asyncssh drops its reference when it closes (the
            # abort it schedules runs after this flush, so what it sent before still goes).
            self._pending_sends = pending = [self._transport]
            self._loop.call_soon(self._send_pending)
        pending.append(data)

    def _send_pending(self) -> None:
        pending, self._pending_sends = self._pending_sends, None
        assert pending is not None  # scheduled only by _send, once per batch
        transport, data = pending[0], pending[1:]
        if transport is not None and data:
            try:
                transport.write(data[0] if len(data) == 1 else b"".join(data))
            except ConnectionError:
                pass


class GatewayClientConnection(_CoalescedSends, asyncssh.SSHClientConnection):
    """The gateway's connection to the upstream host."""


def gateway_client_connection(conn: asyncssh.SSHClientConnection) -> asyncssh.SSHClientConnection:
    conn.__class__ = GatewayClientConnection
    return conn


class GatewayServerConnection(_CoalescedSends, asyncssh.SSHServerConnection):
    """A client connection that reports what asyncssh refuses without asking the application.

    Channel opens of a type asyncssh does not know (and any open refused with
    a reason not from hoopy, whose own refusals are recorded where made and
    start with ``hoopy:``) and global requests answered with failure reach
    ``refused(what, name, why)``. ``no-more-sessions@openssh.com`` (sent by
    OpenSSH clients that will open no more sessions) is honoured as sshd does.
    """

    refused = None  # callable("open" | "global", name, reason)
    no_more_sessions = False

    def _process_channel_open_peeking(self, pkttype, pktid, packet):
        try:
            peek = SSHPacket(packet.get_remaining_payload())
            chantype = _text(peek.get_string())
            send_chan = peek.get_uint32()
            opening = self.__dict__.setdefault("_opening", {})
            if len(opening) > 256:
                opening.clear()
            opening[send_chan] = chantype
        except (asyncssh.Error, ValueError):
            pass  # malformed: asyncssh itself ends the connection
        return asyncssh.SSHServerConnection._process_channel_open(self, pkttype, pktid, packet)

    _packet_handlers = {**asyncssh.SSHServerConnection._packet_handlers,
                        MSG_CHANNEL_OPEN: _process_channel_open_peeking}

    def send_channel_open_failure(self, send_chan, code, reason, lang) -> None:
        chantype = self.__dict__.get("_opening", {}).pop(send_chan, "?")
        super().send_channel_open_failure(send_chan, code, reason, lang)
        if self.refused is not None and not str(reason).startswith("hoopy:"):
            self.refused("open", chantype, str(reason))

    def _report_global_response(self, result) -> None:
        name = "?"
        if self._global_request_queue:
            try:  # what was read of the packet: its message type, then the request's name
                consumed = SSHPacket(self._global_request_queue[0][1].get_consumed_payload())
                consumed.get_byte()
                name = _text(consumed.get_string())
            except (asyncssh.Error, ValueError):
                pass
        super()._report_global_response(result)
        if not result and name not in QUIET_REQUESTS and self.refused is not None:
            self.refused("global", name, None)

    def _process_no_more_sessions_at_openssh_dot_com_global_request(self, packet) -> None:
        packet.check_end()
        self.no_more_sessions = True
        self._report_global_response(True)


def gateway_connection(conn: asyncssh.SSHServerConnection, refused) -> asyncssh.SSHServerConnection:
    conn.__class__ = GatewayServerConnection
    conn.refused = refused
    return conn
