"""The private asyncssh APIs hoopy uses (hoopy/ssh/private.py) are still there.

An asyncssh upgrade that renames or removes one must fail here, loudly, rather
than change what a client sees (a lost exit status, unbounded env requests,
refusals that leave no event).
"""
import inspect

import asyncssh
import pytest
import pytest_twisted

from hoopy.ssh import private


@pytest.mark.parametrize("cls,name", private.USED_METHODS, ids=lambda v: getattr(v, "__name__", v))
def test_each_private_method_still_exists(cls, name):
    assert callable(getattr(cls, name, None)), f"asyncssh {asyncssh.__version__}: {cls.__name__}.{name} is gone"


@pytest.mark.parametrize("cls,name", private.USED_ATTRIBUTES, ids=lambda v: getattr(v, "__name__", v))
def test_each_private_attribute_is_still_set(cls, name):
    sources = "".join(inspect.getsource(k) for k in cls.__mro__ if k.__module__.startswith("asyncssh"))
    assert f"self.{name} " in sources or f"self.{name}:" in sources, \
        f"asyncssh {asyncssh.__version__}: {cls.__name__} no longer sets {name}"


def test_the_packet_dispatch_table_is_still_a_dict_by_message_type():
    from asyncssh.constants import MSG_CHANNEL_OPEN

    table = asyncssh.SSHServerConnection._packet_handlers
    assert table[MSG_CHANNEL_OPEN] is asyncssh.SSHServerConnection._process_channel_open
    assert private.GatewayServerConnection._packet_handlers[MSG_CHANNEL_OPEN] is not table[MSG_CHANNEL_OPEN]


def test_no_more_sessions_is_named_as_asyncssh_dispatches_global_requests():
    from asyncssh.misc import map_handler_name

    name = "_process_" + map_handler_name("no-more-sessions@openssh.com") + "_global_request"
    assert hasattr(private.GatewayServerConnection, name)


def test_the_gcm_cipher_and_the_packet_log_level_are_where_the_send_path_reads_them():
    from asyncssh.crypto.cipher import GCMCipher
    from asyncssh.logging import SSHLogger

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher = GCMCipher("aes128-gcm", b"k" * 16, b"i" * 12)
    assert cipher._key == b"k" * 16 and cipher._iv == b"i" * 12
    # What the fast send path sends (the length, then AESGCM's ciphertext and tag) is asyncssh's packet.
    twin = GCMCipher("aes128-gcm", b"k" * 16, b"i" * 12)
    for packet in (b"\x04\x5e" + b"x" * 26, b"\x06\x5e" + b"y" * 40):
        hdr = len(packet).to_bytes(4, "big")
        fast = hdr + AESGCM(twin._key).encrypt(twin._iv, packet, hdr)
        twin._update_iv()
        assert fast == b"".join(cipher.encrypt_and_sign(hdr, packet))
    assert cipher._iv == twin._iv != b"i" * 12
    assert isinstance(SSHLogger._debug_level, int)


class _Conn:
    def __init__(self, fast):
        self.fast, self.sent = fast, []

    def _send_channel_data(self, chan, datatype, buf, n):
        if self.fast:
            self.sent.append(bytes(buf[:n]))
        return self.fast


def _channel(conn, window=100, pktsize=30):
    chan = object.__new__(private.GatewayServerChannel)
    chan._conn, chan._send_chan, chan._send_state = conn, 7, "open"
    chan._send_buf, chan._send_buf_len = [(bytearray(b"a" * 70), None)], 70
    chan._send_window, chan._send_pktsize = window, pktsize
    chan.paused = []
    chan._pause_resume_writing = lambda: chan.paused.append(chan._send_buf_len)
    return chan


def test_the_fast_send_path_takes_what_the_window_and_packet_size_allow():
    conn = _Conn(fast=True)
    chan = _channel(conn, window=50)
    private._flush_send_buf(chan)
    assert conn.sent == [b"a" * 30, b"a" * 20]  # packets of at most 30; 50 of window
    assert chan._send_window == 0 and chan._send_buf_len == 20 and len(chan._send_buf[0][0]) == 20
    assert chan.paused == [20]  # the session's pause/resume is asked, as asyncssh does


def test_where_the_fast_path_declines_the_rest_goes_asyncssh_s_way(monkeypatch):
    from asyncssh.channel import SSHChannel

    calls = []
    monkeypatch.setattr(SSHChannel, "_flush_send_buf", lambda self: calls.append(self._send_buf_len))
    chan = _channel(_Conn(fast=False))
    private._flush_send_buf(chan)  # (key exchange under way, a rekey due, CBC, compression)
    assert calls == [70] and chan._send_buf_len == 70


# --- the keyed UMAC and the receive path of whole packets -----------------------------------------

@pytest.mark.parametrize("alg", ["umac-64-etm@openssh.com", "umac-128-etm@openssh.com"])
def test_a_umac_keyed_once_signs_as_asyncssh_does(alg):
    import ctypes
    import os
    import random

    from asyncssh.mac import get_mac

    key = os.urandom(16)
    mac, twin = get_mac(alg.encode(), key), get_mac(alg.encode(), key)
    assert type(mac) is private._UMACHandler and private._umac_module._nettle is not None
    assert private.keyed_umac(mac) and not private.keyed_umac(mac)  # (once)
    assert not private.keyed_umac(get_mac(b"hmac-sha2-256-etm@openssh.com", key))
    rng = random.Random(16)
    # odd sequence numbers first, jumps, the wrap: nettle's pad cache must follow the nonce given
    for seq in [1, 3, 2, 2, 0, 7, 0xFFFFFFFF, 0] + [rng.randrange(1 << 32) for _ in range(100)]:
        packet = os.urandom(rng.choice([4, 20, 1023, 1024, 1025, 32768 + 16]))
        expected = twin.sign(seq, packet)
        assert mac.sign(seq, packet) == expected
        assert mac.verify(seq, packet, expected) and not mac.verify(seq, packet + b"x", expected)
        held = b"??" + packet  # sign_at: the bytes where they are in a larger bytes object
        address = ctypes.cast(ctypes.c_char_p(held), ctypes.c_void_p).value
        assert mac._hoopy_sign_at(seq, address + 2, len(packet)) == expected


class _EchoSession:
    """Server side of the echo test: what arrives goes back; EOF ends it."""

    def __init__(self):
        import asyncssh as a

        class Session(a.SSHServerSession):
            def connection_made(self, chan):
                self.chan = chan

            def shell_requested(self):
                return True

            def data_received(self, data, datatype):
                self.chan.write(data)

            def eof_received(self):
                self.chan.exit(0)
                return False

        self.cls = Session


def _echo_through_gateway_connections(cipher: str, mac: str, payload: bytes, counted: list):
    """An asyncssh client and server, both with the gateway's connection classes (fast paths both
    ways, on both ends), echoing ``payload``: what comes back."""
    import asyncio

    server_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    session_cls = _EchoSession().cls

    class Server(asyncssh.SSHServer):
        def connection_made(self, conn):
            self.conn = private.gateway_connection(conn, None)

        def begin_auth(self, username):
            return True

        def public_key_auth_supported(self):
            return True

        def validate_public_key(self, username, key):
            return True

        def session_requested(self):
            return self.conn.create_server_channel(encoding=None), session_cls()

    class Client(asyncssh.SSHClient):
        def connection_made(self, conn):
            private.gateway_client_connection(conn)

    class Collect(asyncssh.SSHClientSession):
        def __init__(self):
            self.got, self.done = bytearray(), asyncio.get_event_loop().create_future()

        def data_received(self, data, datatype):
            self.got += data

        def connection_lost(self, exc):
            if not self.done.done():
                self.done.set_result(exc)

    async def main():
        server = await asyncssh.create_server(
            Server, "127.0.0.1", 0, server_host_keys=[server_key], encryption_algs=[cipher], mac_algs=[mac])
        port = server.sockets[0].getsockname()[1]
        try:
            conn, _ = await asyncssh.create_connection(
                Client, "127.0.0.1", port, username="u", client_keys=[client_key], known_hosts=None,
                agent_path=None, config=[], encryption_algs=[cipher], mac_algs=[mac])
            async with conn:
                chan, session = await conn.create_session(Collect, encoding=None, window=1 << 20,
                                                          max_pktsize=128 * 1024)
                for i in range(0, len(payload), 100_000):
                    chan.write(payload[i:i + 100_000])
                    await asyncio.sleep(0)
                chan.write_eof()
                await asyncio.wait_for(session.done, 60)
                return bytes(session.got)
        finally:
            server.close()

    return main()


@pytest.mark.parametrize("cipher,mac", [("aes128-ctr", "umac-64-etm@openssh.com"),
                                        ("aes128-gcm@openssh.com", "hmac-sha2-256"),
                                        ("aes256-ctr", "hmac-sha2-256-etm@openssh.com"),
                                        ("aes128-ctr", "hmac-sha2-256")])  # (not ETM: asyncssh's way)
@pytest_twisted.ensureDeferred
async def test_whole_packets_taken_from_the_read_arrive_as_sent(cipher, mac, monkeypatch):
    import asyncio
    import os

    from twisted.internet.defer import Deferred

    original, counted = private._CoalescedSends._recv_whole, []

    def counting(self, data, view, pos, n):
        counted.append(original(self, data, view, pos, n))
        return counted[-1]

    monkeypatch.setattr(private._CoalescedSends, "_recv_whole", counting)
    payload = os.urandom(3 << 20) + bytes(range(256)) * 7
    echo = _echo_through_gateway_connections(cipher, mac, payload, counted)
    assert await Deferred.fromFuture(asyncio.ensure_future(echo)) == payload
    taken = [n for n in counted if n]
    if mac == "hmac-sha2-256" and "gcm" not in cipher:
        assert not taken  # the length is encrypted: asyncssh reads these
    else:
        # most of the data came through the fast path (on both ends), small packets too
        assert sum(taken) > len(payload) and min(taken) < 100


def _encryption(kind):
    """A real asyncssh encryption with fixed keys (the receiving end and its peer alike)."""
    from asyncssh.encryption import get_encryption

    if kind == "gcm":
        return get_encryption(b"aes128-gcm@openssh.com", b"k" * 16, b"i" * 12)
    return get_encryption(b"aes128-ctr", b"k" * 16, b"i" * 16, b"umac-64-etm@openssh.com", b"m" * 16, True)


@pytest.mark.parametrize("kind", ["gcm", "etm"])
def test_a_packet_altered_on_the_way_is_refused_as_asyncssh_does(kind):
    """What _recv_whole hands asyncssh's _recv_packet: the plaintext after the length, or None where
    the MAC (the GCM tag) fails (asyncssh then raises MACError and disconnects); the connection's
    own encryption back in place after."""
    packet = b"\x04\x5d" + b"z" * 26  # (a window adjust: channel data has its own way, below)
    hdr = len(packet).to_bytes(4, "big")
    wire = b"".join(_encryption(kind).encrypt_packet(5, hdr, packet))
    bad = bytearray(wire)
    bad[9] ^= 1
    for sent, expected in ((wire, packet), (bytes(bad), None)):
        conn = object.__new__(private.GatewayServerConnection)
        enc = _encryption(kind)
        seen = []
        conn._inpbuf, conn._recv_encryption, conn._decompressor, conn._auth_complete = b"", enc, None, True
        conn._recv_macsize, conn._recv_blocksize = (16 if kind == "gcm" else 8), 16
        conn._max_recv_pktlen, conn._recv_seq = 1 << 20, 5
        conn._recv_packet = lambda: seen.append(conn._recv_encryption.decrypt_packet(5, b"", b"", 4, b""))
        assert conn._recv_whole(sent, memoryview(sent), 0, len(sent)) == len(sent)
        assert seen == [expected] and conn._recv_encryption is enc
        # more than there is: nothing taken (asyncssh's way)
        assert conn._recv_whole(sent[:-1], memoryview(sent[:-1]), 0, len(sent) - 1) == 0 and len(seen) == 1


def test_channel_data_is_dispatched_where_asyncssh_would_dispatch_it():
    from asyncssh.channel import SSHChannel
    from asyncssh.constants import MSG_CHANNEL_DATA

    assert private._PROCESS_DATA is SSHChannel._process_data
    for cls in (asyncssh.SSHServerChannel, asyncssh.SSHClientChannel, private.GatewayServerChannel,
                private.GatewayUpstreamChannel):
        assert cls._packet_handlers[MSG_CHANNEL_DATA] is SSHChannel._process_data
    # what _recv_whole does for channel data is what _process_data does, nothing else
    source = inspect.getsource(SSHChannel._process_data)
    for step in ("self._recv_state != 'open'", "packet.get_string()", "packet.check_end()",
                 "datalen > self._recv_window", "self.logger.debug2(", "self._accept_data(data)"):
        assert step in source
    assert inspect.getsource(SSHChannel._process_data).count("self.") == 4


def test_the_socket_transport_s_write_still_sends_first_when_nothing_is_buffered():
    """_send_pending's sendmsg is what asyncio's write does first, so its private names must be
    the ones write uses, in that order."""
    import asyncio.selector_events as se

    source = inspect.getsource(se._SelectorSocketTransport.write)
    for step in ("if self._eof:", "if self._empty_waiter is not None:", "if self._conn_lost:",
                 "if not self._buffer:", "n = self._sock.send(data)", "self._buffer.extend(data)"):
        assert step in source, step
    assert private._SOCKET_TRANSPORT is se._SelectorSocketTransport
    parts = [b"abcd", b"efgh", b"ij"]
    assert private._unsent(parts, 0) == parts and private._unsent(parts, 10) == []
    assert private._unsent(parts, 4) == [b"efgh", b"ij"] and private._unsent(parts, 5) == [b"fgh", b"ij"]
