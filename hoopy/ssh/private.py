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

import asyncio.selector_events
import ctypes
import os
import time
from typing import Any
from hmac import compare_digest as _compare_digest

import asyncssh
from asyncssh.channel import SSHChannel
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_EOF, MSG_CHANNEL_EXTENDED_DATA, MSG_CHANNEL_OPEN
from asyncssh.encryption import ETMEncryption, GCMEncryption
from asyncssh.misc import DisconnectError, MACError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from asyncssh.logging import SSHLogger
from asyncssh.packet import Boolean, SSHPacket, String, UInt32

try:  # UMAC is nettle's, through ctypes (asyncssh.crypto.umac); absent without libnettle
    from asyncssh.crypto import umac as _umac_module
    from asyncssh.mac import _UMAC as _UMACHandler
except ImportError:  # pragma: no cover
    _umac_module = _UMACHandler = None  # type: ignore[assignment]

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
    (asyncssh.SSHServerChannel, "_flush_send_buf"),
    (asyncssh.SSHServerChannel, "_pause_resume_writing"),
    (asyncssh.SSHServerChannel, "_close_send"),
    (asyncssh.SSHServerChannel, "log_sent_packet"),
    (asyncssh.SSHClientConnection, "_send_kexinit"),
    # the receive path of whole packets (_CoalescedSends._recv_whole)
    (asyncssh.SSHServerConnection, "_recv_data"),
    (asyncssh.SSHServerConnection, "_send_disconnect"),
    (asyncssh.SSHServerConnection, "_force_close"),
    (asyncssh.SSHServerConnection, "internal_error"),
    (asyncssh.SSHServerConnection, "_finish_recv_packet"),
    (asyncssh.SSHServerChannel, "_accept_data"),
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
    # the send path of channel data (_FastChannelData, _CoalescedSends._send_channel_data)
    (asyncssh.SSHServerChannel, "_send_buf"),
    (asyncssh.SSHServerChannel, "_send_buf_len"),
    (asyncssh.SSHServerChannel, "_send_window"),
    (asyncssh.SSHServerChannel, "_send_pktsize"),
    (asyncssh.SSHServerChannel, "_send_chan"),
    (asyncssh.SSHServerChannel, "_conn"),
    (asyncssh.SSHClientConnection, "_kex_complete"),
    (asyncssh.SSHClientConnection, "_auth_complete"),
    (asyncssh.SSHClientConnection, "_compressor"),
    (asyncssh.SSHClientConnection, "_rekey_bytes"),
    (asyncssh.SSHClientConnection, "_rekey_bytes_sent"),
    (asyncssh.SSHClientConnection, "_rekey_seconds"),
    (asyncssh.SSHClientConnection, "_rekey_time"),
    (asyncssh.SSHClientConnection, "_send_encryption"),
    (asyncssh.SSHClientConnection, "_send_enchdrlen"),
    (asyncssh.SSHClientConnection, "_send_blocksize"),
    (asyncssh.SSHClientConnection, "_send_seq"),
    (asyncssh.SSHClientConnection, "_enc_alg_cs"),
    (asyncssh.SSHClientConnection, "_enc_alg_sc"),
    (asyncssh.SSHClientConnection, "_recv_encryption"),
    (asyncssh.SSHClientConnection, "_recv_seq"),
    (asyncssh.SSHClientConnection, "_max_recv_pktlen"),
    (asyncssh.SSHClientConnection, "_decompressor"),
    (asyncssh.SSHClientConnection, "_packet"),
    (asyncssh.SSHClientConnection, "_channels"),
    (asyncssh.SSHServerChannel, "_recv_state"),
    (asyncssh.SSHServerChannel, "_recv_window"),
)
# And the class attribute ``SSHServerConnection._packet_handlers`` (a dict by message type),
# asyncssh.crypto.cipher.GCMCipher's _key, _iv and _update_iv (see _send_channel_data), the
# encryptions' _cipher and _mac, asyncssh.mac._UMAC's _key and _umac_alg, and
# asyncssh.crypto.umac's _nettle and its UMAC objects' _ctx (see keyed_umac).


def keyed_umac(mac) -> bool:
    """Give an asyncssh UMAC handler (one direction of one connection's keys) a context keyed
    once: asyncssh keys a new nettle context for every packet (a 4 KiB buffer, the key schedule
    and about a hundred AES blocks of subkeys), a third of the time of a 32 KiB packet's MAC.
    The MAC is the same bytes (nettle's set_nonce takes the sequence number each time, its digest
    resets the hash). False where ``mac`` is not asyncssh's UMAC or its nettle is not there."""
    if _UMACHandler is None or type(mac) is not _UMACHandler or "sign" in mac.__dict__:
        return False
    new = mac._umac_alg
    cls = getattr(new, "__self__", None)
    nettle = getattr(_umac_module, "_nettle", None)
    name = getattr(cls, "name", "")
    if cls is None or nettle is None or name not in ("umac32", "umac64", "umac96", "umac128"):
        return False
    ctx = new(mac._key)._ctx  # keyed by asyncssh's own code: no nonce yet, no message
    set_nonce = getattr(nettle, f"nettle_{name}_set_nonce")
    update = getattr(nettle, f"nettle_{name}_update")
    digest = getattr(nettle, f"nettle_{name}_digest")
    size = cls.digest_size
    c_size, c_eight = ctypes.c_size_t(size), ctypes.c_size_t(8)
    out = ctypes.create_string_buffer(size)

    def sign(seq: int, packet: bytes) -> bytes:
        set_nonce(ctx, c_eight, seq.to_bytes(8, "big"))
        update(ctx, ctypes.c_size_t(len(packet)), packet)
        digest(ctx, c_size, out)
        return out.raw

    def sign_at(seq: int, address: int, length: int) -> bytes:
        # The MAC of ``length`` bytes at ``address`` (inside a bytes object the caller holds).
        set_nonce(ctx, c_eight, seq.to_bytes(8, "big"))
        update(ctx, ctypes.c_size_t(length), ctypes.c_void_p(address))
        digest(ctx, c_size, out)
        return out.raw

    def verify(seq: int, packet: bytes, sig: bytes) -> bool:
        return _compare_digest(sign(seq, packet), sig)

    for attr, f in (("sign", sign), ("verify", verify), ("_hoopy_sign_at", sign_at)):
        setattr(mac, attr, f)  # (on this handler only: asyncssh's own packets use them too)
    return True


# asyncio's own socket transport (its write tries send() first when nothing is buffered: _send_pending).
_SOCKET_TRANSPORT = asyncio.selector_events._SelectorSocketTransport
_DATA = bytes((MSG_CHANNEL_DATA,))
_PROCESS_DATA = SSHChannel._packet_handlers[MSG_CHANNEL_DATA]  # (asyncssh's SSHChannel._process_data)


class _Decrypted:
    """A packet's decryption done already (_CoalescedSends._recv_whole): what asyncssh's
    _recv_packet asks of its encryption, for one packet."""

    __slots__ = ("plain",)

    def __init__(self, plain):
        self.plain = plain  # None: the MAC did not verify (asyncssh raises MACError)

    def decrypt_packet(self, seq, first, rest, header_len, mac):
        return self.plain


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


def _flush_send_buf(self) -> None:
    """asyncssh's SSHChannel._flush_send_buf, with data packets built straight from the send buffer.

    asyncssh copies each byte of channel data about twelve times on its way out (the buffer
    slice, ``String()``, the channel's and the connection's payload concatenations, the padding,
    the header and the MAC appended) and sends an empty ``SSH_MSG_IGNORE`` before every packet
    (RFC 4251 9.3.1's countermeasure for CBC modes). Here, in the steady state of a connection
    whose cipher is not CBC, each data packet is one join of its fields, encrypted and handed to
    the socket as is (_CoalescedSends._send_channel_data); in any other state (key exchange or
    rekey due, compression, CBC) the packet goes asyncssh's own way. Flow control is asyncssh's:
    the same window, packet size and buffer accounting, the same pause/resume of the session.
    (A function set on the channel classes, not a mixin: a channel's __class__ is switched to
    them, and a second base would change the object layout.)
    """
    send = getattr(self._conn, "_send_channel_data", None)
    if send is None or self._send_chan is None:
        return SSHChannel._flush_send_buf(self)
    while self._send_buf and self._send_window:
        buf, datatype = self._send_buf[0]
        n = min(len(buf), self._send_window, self._send_pktsize)
        if not send(self, datatype, buf, n):
            return SSHChannel._flush_send_buf(self)  # the rest asyncssh's way
        if n == len(buf):
            del self._send_buf[0]
        else:
            del buf[:n]
        self._send_buf_len -= n
        self._send_window -= n
    self._pause_resume_writing()
    if not self._send_buf:
        if self._send_state == "eof_pending":
            self.send_packet(MSG_CHANNEL_EOF)
            self._send_state = "eof"
        elif self._send_state == "close_pending":
            self._close_send()


class GatewayServerChannel(asyncssh.SSHServerChannel):
    """A session channel that bounds its ``env`` requests and reports every request it refuses.

    asyncssh keeps every ``env`` request a client sends, and refuses some
    requests on its own (``x11-req``, ``auth-agent-req@openssh.com``, a second
    ``exec``, a command line that is not UTF-8, unknown requests) without
    telling the application: ``refused(request)``, set per channel, hears of
    each refusal, whoever made it.
    """

    _flush_send_buf = _flush_send_buf
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


class GatewayUpstreamChannel(asyncssh.SSHClientChannel):
    """The upstream half of a session channel."""

    _flush_send_buf = _flush_send_buf


def gateway_upstream_channel(chan: asyncssh.SSHClientChannel) -> asyncssh.SSHClientChannel:
    """Make ``chan`` (a session channel the gateway opened upstream) a GatewayUpstreamChannel."""
    if type(chan) is asyncssh.SSHClientChannel:
        chan.__class__ = GatewayUpstreamChannel
    return chan


# Ciphers for which the fast path sends no SSH_MSG_IGNORE before a data packet (not CBC).
_NO_IGNORE_NEEDED = frozenset({b"aes128-gcm@openssh.com", b"aes256-gcm@openssh.com",
                               b"chacha20-poly1305@openssh.com", b"aes128-ctr", b"aes192-ctr", b"aes256-ctr"})


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
        whole = type(data) is bytes  # (what asyncio reads: _recv_whole takes packets from it)
        view = memoryview(data) if whole or n > 4096 else data
        pos = 0
        if whole:
            self._reset_keepalive_timer()  # as asyncssh's _recv_data does for what it takes
        while pos < n:
            if not self._transport:
                return  # closed by what came before: asyncssh reads no further either
            handler = self._recv_handler
            if handler == self._recv_pkthdr:
                if whole and not self._inpbuf:
                    used = self._recv_whole(data, view, pos, n)
                    if used:
                        pos += used
                        continue
                need = self._recv_blocksize - len(self._inpbuf)
            elif handler == self._recv_packet:
                need = 4 + self._pktlen + self._recv_macsize - self._recv_blocksize - len(self._inpbuf)
            else:  # the version line, or anything else: all of it, as asyncssh would take it
                need = n - pos
            need = max(need, 1)
            super().data_received(view[pos:pos + need], datatype)
            pos += need

    def _recv_pkthdr(self) -> bool:
        # A packet shorter than one cipher block (RFC 4253 6: at least 16 bytes, a multiple of the
        # block size) is refused once its length is known. asyncssh takes a whole block before
        # reading the length, so for such a packet it checks the MAC (the GCM tag) over bytes of
        # the next packet and whatever else is buffered: it refuses it or not by how the packet
        # was cut into reads (with a MACError when it refuses); the pieces data_received hands it
        # and _recv_whole would accept one a peer built so. Refused always, as asyncssh would.
        if not super()._recv_pkthdr():
            return False
        if self._recv_encryption and 4 + self._pktlen < self._recv_blocksize:
            raise MACError('MAC verification failed')
        return True

    _recv_fast_for: object = None  # the receive encryption _recv_kind was decided for
    _recv_kind: str | None = None  # "gcm", "etm", or None: asyncssh's way
    _pktlen: int  # (asyncssh's, declared for the type checker)
    _recv_encryption: Any

    def _recv_whole(self, data: bytes, view, pos: int, n: int) -> int:
        """Decrypt and check the packet at data[pos:] straight from the read, if all of it is
        there and this connection's state allows, and have asyncssh's _recv_packet process it as
        it would have (the same checks, dispatch, flow control and errors): the bytes used, or 0
        (nothing done: asyncssh's way). asyncssh copies each byte of a packet about five times
        before decrypting it (its input buffer, the rest of the packet, the first block joined
        to it, the part after the length, the tag joined for AES-GCM); here none."""
        enc = self._recv_encryption
        if enc is not self._recv_fast_for:
            self._recv_fast_for = enc
            kind = None
            if type(enc) is GCMEncryption:
                kind = "gcm"
            elif type(enc) is ETMEncryption:
                kind = "etm"
                keyed_umac(enc._mac)
            self._recv_kind = kind
        kind = self._recv_kind
        if kind is None or self._decompressor is not None or not self._auth_complete or n - pos < 4:
            return 0
        pktlen = int.from_bytes(view[pos:pos + 4], "big")
        macsize = self._recv_macsize
        end = pos + 4 + pktlen + macsize
        if end > n or pktlen > self._max_recv_pktlen or 4 + pktlen < self._recv_blocksize:
            return 0  # (shorter than a block: _recv_pkthdr refuses it)
        seq = self._recv_seq
        if kind == "gcm":
            cipher = enc._cipher
            aead = cipher.__dict__.get("_hoopy_aead")
            if aead is None:
                aead = cipher._hoopy_aead = AESGCM(cipher._key)
            try:
                plain = aead.decrypt(cipher._iv, view[pos + 4:end], view[pos:pos + 4])
            except InvalidTag:
                plain = None
            cipher._update_iv()  # (asyncssh's verify_and_decrypt: whether or not the tag checked)
        else:
            mac = enc._mac
            body = pos + 4 + pktlen
            sign_at = mac.__dict__.get("_hoopy_sign_at")
            if sign_at is not None:
                # The length and ciphertext where they are, in ``data`` (a bytes object, held here).
                address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
                ok = _compare_digest(sign_at(seq, address + pos, 4 + pktlen), bytes(view[body:end]))
            else:
                ok = mac.verify(seq, bytes(view[pos:body]), bytes(view[body:end]))
            plain = enc._cipher.decrypt(view[pos + 4:body]) if ok else None
        if plain is not None and plain[1:2] == _DATA and SSHLogger._debug_level < 2:
            # Channel data, the bulk of a transfer: asyncssh's _recv_packet and the channel's
            # _process_data in one step (its checks, in its order), the data sliced once.
            padlen = plain[0]
            payload_end = len(plain) - padlen
            datalen = int.from_bytes(plain[6:10], "big")
            chan = self._channels.get(int.from_bytes(plain[2:6], "big"))
            if (padlen and 10 + datalen == payload_end and chan is not None
                    and chan._packet_handlers.get(MSG_CHANNEL_DATA) is _PROCESS_DATA
                    and chan._recv_state == "open" and datalen <= chan._recv_window):
                try:
                    chan._accept_data(plain[10:payload_end])
                    self._finish_recv_packet(MSG_CHANNEL_DATA, seq)
                except DisconnectError as exc:
                    self._send_disconnect(exc.code, exc.reason, exc.lang)
                    self._force_close(exc)
                except Exception:
                    self.internal_error()
                return end - pos
        # asyncssh's _recv_packet from here, with nothing left to read for this packet
        self._recv_encryption = _Decrypted(plain)
        self._packet = b""
        self._pktlen = self._recv_blocksize - 4 - macsize  # what it reads after this: nothing
        try:
            self._recv_packet()
        except DisconnectError as exc:
            self._send_disconnect(exc.code, exc.reason, exc.lang)
            self._force_close(exc)
        except Exception:
            self.internal_error()
        finally:
            if type(self._recv_encryption) is _Decrypted:  # (new keys, if it was NEWKEYS, stay)
                self._recv_encryption = enc
        return end - pos

    def _send(self, data: bytes) -> None:
        self._send_parts(data)

    def _send_parts(self, *parts: bytes) -> None:
        pending = self._pending_sends
        if pending is None:
            # The transport as it is now: asyncssh drops its reference when it closes (the
            # abort it schedules runs after this flush, so what it sent before still goes).
            self._pending_sends = pending = [self._transport]
            self._loop.call_soon(self._send_pending)
        pending.extend(parts)

    _fast_for = None  # the send encryption _fast_ok was decided for
    _fast_ok = False
    _send_seq: int  # (asyncssh's, declared for the type checker)

    def _send_channel_data(self, chan, datatype, buf: bytearray, n: int) -> bool:
        """Send buf[:n] as one data packet of ``chan``, as asyncssh's send_packet would, with
        fewer copies; False (nothing sent) where this connection's state needs asyncssh's way."""
        enc = self._send_encryption
        if enc is not self._fast_for:
            self._fast_for = enc
            alg = self._enc_alg_cs if self.is_client() else self._enc_alg_sc
            self._fast_ok = enc is not None and alg in _NO_IGNORE_NEEDED
            if type(enc) is ETMEncryption:
                keyed_umac(enc._mac)
        if not (self._fast_ok and self._kex_complete and self._auth_complete and self._compressor is None
                and self._rekey_bytes_sent < self._rekey_bytes
                and not (self._rekey_seconds and time.monotonic() >= self._rekey_time)):
            return False
        pkttype, fields = (MSG_CHANNEL_DATA, (chan._send_chan, n)) if datatype is None \
            else (MSG_CHANNEL_EXTENDED_DATA, (chan._send_chan, datatype, n))
        padlen = -(self._send_enchdrlen + 1 + 4 * len(fields) + n) % self._send_blocksize
        if padlen < 4:
            padlen += self._send_blocksize
        head = bytes((padlen, pkttype)) + b"".join(f.to_bytes(4, "big") for f in fields)
        with memoryview(buf) as view:
            data = view[:n]
            packet = b"".join((head, data, os.urandom(padlen)))
            data.release()  # (the caller deletes what was sent from buf)
        pktlen = len(packet)
        hdr = pktlen.to_bytes(4, "big")
        seq = self._send_seq
        if type(enc) is GCMEncryption:
            # Ciphertext and tag, as they go on the wire after the length (asyncssh splits and joins them).
            cipher = enc._cipher
            aead = cipher.__dict__.get("_hoopy_aead")
            if aead is None:
                aead = cipher._hoopy_aead = AESGCM(cipher._key)  # as asyncssh's GCMCipher does
            self._send_parts(hdr, aead.encrypt(cipher._iv, packet, hdr))
            cipher._update_iv()
        else:
            self._send_parts(*enc.encrypt_packet(seq, hdr, packet))
        self._send_seq = (seq + 1) & 0xffffffff
        self._rekey_bytes_sent += pktlen
        if SSHLogger._debug_level >= 3:
            chan.log_sent_packet(pkttype, seq, packet[1:-padlen])
        return True

    def _send_pending(self) -> None:
        pending, self._pending_sends = self._pending_sends, None
        assert pending is not None  # scheduled only by _send, once per batch
        transport, data = pending[0], pending[1:]
        if transport is None or not data:
            return
        try:
            if 1 < len(data) <= 512 and type(transport) is _SOCKET_TRANSPORT and not transport._buffer \
                    and not transport._eof and not transport._conn_lost and transport._empty_waiter is None:
                # What transport.write does first with nothing buffered (send now), with the parts
                # as they are (one sendmsg) instead of joined into one more copy of every byte.
                try:
                    sent = transport._sock.sendmsg(data)
                except OSError:
                    sent = 0  # (EAGAIN; any other error meets transport.write below, as it would)
                data = _unsent(data, sent)
                if not data:
                    return
            if len(data) == 1:
                transport.write(data[0])
            elif type(transport) is _SOCKET_TRANSPORT:
                transport.write(b"".join(data))  # (asyncio's writelines joins them the same way)
            else:
                transport.writelines(data)  # (uvloop: one vectored write, no copy of the parts)
        except ConnectionError:
            pass


def _unsent(parts: list, n: int) -> list:
    """What is left of ``parts`` once their first ``n`` bytes have gone."""
    i = 0
    while i < len(parts) and n >= len(parts[i]):
        n -= len(parts[i])
        i += 1
    rest = parts[i:]
    if n and rest:
        rest[0] = rest[0][n:]
    return rest


class GatewayClientConnection(_CoalescedSends, asyncssh.SSHClientConnection):
    """The gateway's connection to the upstream host."""


def _recast(conn, cls) -> None:
    """``conn`` made an instance of ``cls`` (a subclass of its own). uvloop's transport keeps the
    protocol's ``data_received`` it found when the connection was made (asyncio's looks it up on
    every read): handed the protocol again, it takes the subclass's."""
    conn.__class__ = cls
    transport = getattr(conn, "_transport", None)
    if transport is not None and type(transport) is not _SOCKET_TRANSPORT and not transport.is_closing():
        transport.set_protocol(conn)


def gateway_client_connection(conn: asyncssh.SSHClientConnection) -> asyncssh.SSHClientConnection:
    _recast(conn, GatewayClientConnection)
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
    _recast(conn, GatewayServerConnection)
    conn.refused = refused
    return conn
