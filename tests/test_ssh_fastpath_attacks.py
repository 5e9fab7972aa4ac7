"""Adversarial tests of hoopy/ssh/private.py's receive fast path (_CoalescedSends._recv_whole) and
its batched sends: a malicious peer (it holds the session keys, so it can MAC anything it likes; a
man in the middle cannot) crafts packets byte by byte and they are fed to the receiving end in
reads of its choosing. Every case runs twice, against plain asyncssh and against the gateway's
connection class, and the outcomes (data delivered, how the connection ended) must be the same.
"""
from __future__ import annotations

import asyncio

import asyncssh
import pytest
import pytest_twisted
from asyncssh.constants import (MSG_CHANNEL_DATA, MSG_CHANNEL_EOF, MSG_CHANNEL_EXTENDED_DATA,
                                MSG_CHANNEL_OPEN, MSG_CHANNEL_WINDOW_ADJUST, MSG_IGNORE)
from asyncssh.packet import Byte, String, UInt32

from hoopy.ssh import private

ETM = ("aes128-ctr", "hmac-sha2-256-etm@openssh.com")
UMAC = ("aes256-ctr", "umac-64-etm@openssh.com")
GCM = ("aes128-gcm@openssh.com", "hmac-sha2-256")
CHACHA = ("chacha20-poly1305@openssh.com", "hmac-sha2-256")  # (asyncssh's way: the length is encrypted)
CTR = ("aes128-ctr", "hmac-sha2-256")  # (likewise)
ALGS = [ETM, UMAC, GCM, CHACHA, CTR]
_IDS = {ETM: "etm", UMAC: "umac-etm", GCM: "gcm", CHACHA: "chacha", CTR: "ctr-hmac"}


async def _pair(gateway: bool, cipher: str, mac: str):
    """A server (plain asyncssh, or with the gateway's connection class) and a plain asyncssh
    client (the attacker), a session open between them: (client conn, client chan, server state)."""
    server_key = asyncssh.generate_private_key("ssh-ed25519")
    state: dict = {"data": [], "closed": None, "conn": None}
    done = asyncio.get_event_loop().create_future()

    class Session(asyncssh.SSHServerSession):
        def connection_made(self, chan):
            state["chan"] = chan

        def shell_requested(self):
            return True

        def data_received(self, data, datatype):
            state["data"].append((bytes(data), datatype))

    class Server(asyncssh.SSHServer):
        def connection_made(self, conn):
            state["conn"] = private.gateway_connection(conn, None) if gateway else conn

        def connection_lost(self, exc):
            state["closed"] = exc
            if not done.done():
                done.set_result(exc)

        def begin_auth(self, username):
            return False

        def session_requested(self):
            return state["conn"].create_server_channel(encoding=None), Session()

    server = await asyncssh.create_server(Server, "127.0.0.1", 0, server_host_keys=[server_key],
                                          encryption_algs=[cipher], mac_algs=[mac], line_editor=False)
    port = server.sockets[0].getsockname()[1]
    conn = await asyncssh.connect("127.0.0.1", port, username="u", known_hosts=None, agent_path=None,
                                  config=[], encryption_algs=[cipher], mac_algs=[mac])
    chan, _ = await conn.create_session(asyncssh.SSHClientSession, encoding=None)
    chan.write(b"hello")  # (the server has its first data: the session is up both ways)
    for _ in range(200):
        await asyncio.sleep(0.005)
        if state["data"] and state["conn"]._auth_complete:
            break
    state["data"].clear()
    state["done"], state["server"] = done, server
    return conn, chan, state


async def _pair_upstream(gateway: bool, cipher: str, mac: str):
    """The other way round: a plain asyncssh server (the attacker, an upstream host) and a client
    (plain asyncssh, or with the gateway's upstream connection class): (server conn, server chan,
    the client's state)."""
    server_key = asyncssh.generate_private_key("ssh-ed25519")
    state: dict = {"data": [], "closed": None}
    done = asyncio.get_event_loop().create_future()
    attacker: dict = {}

    class Session(asyncssh.SSHServerSession):
        def connection_made(self, chan):
            attacker["chan"] = chan

        def shell_requested(self):
            return True

    class Server(asyncssh.SSHServer):
        def connection_made(self, conn):
            attacker["conn"] = conn

        def begin_auth(self, username):
            return False

        def session_requested(self):
            return attacker["conn"].create_server_channel(encoding=None), Session()

    class Client(asyncssh.SSHClient):
        def connection_made(self, conn):
            state["conn"] = private.gateway_client_connection(conn) if gateway else conn

        def connection_lost(self, exc):
            state["closed"] = exc
            if not done.done():
                done.set_result(exc)

    class Collect(asyncssh.SSHClientSession):
        def data_received(self, data, datatype):
            state["data"].append((bytes(data), datatype))

    server = await asyncssh.create_server(Server, "127.0.0.1", 0, server_host_keys=[server_key],
                                          encryption_algs=[cipher], mac_algs=[mac], line_editor=False)
    port = server.sockets[0].getsockname()[1]
    conn, _ = await asyncssh.create_connection(Client, "127.0.0.1", port, username="u", known_hosts=None,
                                               agent_path=None, config=[], encryption_algs=[cipher],
                                               mac_algs=[mac])
    chan, _ = await conn.create_session(Collect, encoding=None)
    for _ in range(200):
        await asyncio.sleep(0.005)
        if "chan" in attacker and attacker["chan"]._send_chan is not None:
            break
    attacker["chan"].write(b"hello")
    await asyncio.sleep(0.02)
    state["data"].clear()
    state["chan"], state["done"], state["server"] = chan, done, server
    return attacker["conn"], attacker["chan"], state


def _raw(conn, payload: bytes, padlen: int | None = None, pktlen: int | None = None) -> bytes:
    """The packet ``payload`` as ``conn`` would encrypt it next (its sequence number and cipher
    state advance), with the padding length and the length field chosen by the attacker."""
    bs = conn._send_blocksize
    if padlen is None:
        padlen = -(conn._send_enchdrlen + 1 + len(payload)) % bs
        if padlen < 4:
            padlen += bs
    packet = Byte(padlen % 256) + payload + b"\0" * padlen
    hdr = UInt32(len(packet) if pktlen is None else pktlen)
    seq = conn._send_seq
    wire = b"".join(conn._send_encryption.encrypt_packet(seq, hdr, packet))
    conn._send_seq = (seq + 1) & 0xffffffff
    return wire


def _data(chan, data: bytes, recv_chan: int | None = None, strlen: int | None = None) -> bytes:
    rc = chan._send_chan if recv_chan is None else recv_chan
    return Byte(MSG_CHANNEL_DATA) + UInt32(rc) + UInt32(len(data) if strlen is None else strlen) + data


async def _run(gateway, algs, build, cuts=None, pair=_pair):
    """Build the attacker's bytes (``build(conn, chan, state)`` gives the wire bytes), feed them to
    the server's data_received in reads cut at ``cuts``, then say what the server made of them."""
    conn, chan, state = await pair(gateway, *algs)
    try:
        wire = build(conn, chan, state)
        sconn = state["conn"]
        bounds = [0] + list(cuts or []) + [len(wire)]
        for a, b in zip(bounds, bounds[1:]):
            if sconn._transport:
                sconn.data_received(bytes(wire[a:b]))
        try:
            await asyncio.wait_for(asyncio.shield(state["done"]), 0.3)
        except asyncio.TimeoutError:
            pass
        exc = state["closed"]
        return state["data"], ((type(exc).__name__, str(exc)) if state["done"].done() else "open")
    finally:
        conn.abort()
        state["server"].close()


async def _both(algs, build, cuts=None, pair=_pair):
    plain = await _run(False, algs, build, cuts, pair)
    gw = await _run(True, algs, build, cuts, pair)
    return plain, gw


def _deferred(coro):
    from twisted.internet.defer import Deferred
    return Deferred.fromFuture(asyncio.ensure_future(coro))


CASES = {
    "valid": lambda c, ch, s: _raw(c, _data(ch, b"x" * 100)),
    "two_valid": lambda c, ch, s: _raw(c, _data(ch, b"a" * 50)) + _raw(c, _data(ch, b"b" * 3000)),
    "bad_mac_last_byte": lambda c, ch, s: _flip(_raw(c, _data(ch, b"x" * 100)), -1),
    "bad_ciphertext": lambda c, ch, s: _flip(_raw(c, _data(ch, b"x" * 100)), 20),
    "bad_length_field": lambda c, ch, s: _flip(_raw(c, _data(ch, b"x" * 100)), 3, 0x10),
    "second_tampered": lambda c, ch, s: _raw(c, _data(ch, b"a" * 50)) + _flip(_raw(c, _data(ch, b"b" * 60)), 30),
    "unknown_channel": lambda c, ch, s: _raw(c, _data(ch, b"x" * 10, recv_chan=4242)),
    "window_exceeded": lambda c, ch, s: _shrink(s, 50) + _raw(c, _data(ch, b"x" * 51)),
    "window_exact": lambda c, ch, s: _shrink(s, 50) + _raw(c, _data(ch, b"x" * 50)),
    "strlen_short": lambda c, ch, s: _raw(c, _data(ch, b"x" * 100, strlen=99)),
    "strlen_long": lambda c, ch, s: _raw(c, _data(ch, b"x" * 100, strlen=101)),
    "strlen_huge": lambda c, ch, s: _raw(c, _data(ch, b"x" * 100, strlen=0xffffffff)),
    "zero_length": lambda c, ch, s: _raw(c, _data(ch, b"")) + _raw(c, _data(ch, b"after")),
    "padlen_zero": lambda c, ch, s: _raw(c, _data(ch, b"x" * 23), padlen=0),
    "padlen_small": lambda c, ch, s: _raw(c, _data(ch, b"x" * 22), padlen=1),
    "padlen_ge_pktlen": lambda c, ch, s: _raw(c, _data(ch, b"x" * 18) + b"\0" * 20, padlen=255),
    "padlen_eats_data": lambda c, ch, s: _raw(c, _data(ch, b"x" * 40), padlen=20),
    "extended": lambda c, ch, s: _raw(c, Byte(MSG_CHANNEL_EXTENDED_DATA) + UInt32(ch._send_chan) + UInt32(1)
                                      + String(b"err")),
    "extended_bad_type": lambda c, ch, s: _raw(c, Byte(MSG_CHANNEL_EXTENDED_DATA) + UInt32(ch._send_chan)
                                               + UInt32(7) + String(b"err")),
    "after_eof": lambda c, ch, s: _raw(c, Byte(MSG_CHANNEL_EOF) + UInt32(ch._send_chan)) + _raw(c, _data(ch, b"late")),
    "truncated_channel_number": lambda c, ch, s: _raw(c, Byte(MSG_CHANNEL_DATA) + b"\0\0"),
    "over_max_pktlen": lambda c, ch, s: _raw(c, _data(ch, b"x" * 100), pktlen=(1 << 20) * 64),
    "ignore_then_data": lambda c, ch, s: _raw(c, Byte(MSG_IGNORE) + String(b"")) + _raw(c, _data(ch, b"d")),
    "seq_wrap": lambda c, ch, s: _seq(c, s, 0xfffffffe) + b"".join(_raw(c, _data(ch, b"%d" % i)) for i in range(4)),
    "seq_wrap_then_tampered": lambda c, ch, s: _seq(c, s, 0xffffffff) + _raw(c, _data(ch, b"w"))
    + _flip(_raw(c, _data(ch, b"x" * 30)), 40),
    "replayed": lambda c, ch, s: _twice(_raw(c, _data(ch, b"once" * 10))),
    "reordered": lambda c, ch, s: _swap(_raw(c, _data(ch, b"1" * 20)), _raw(c, _data(ch, b"2" * 20))),
    "skipped_seq": lambda c, ch, s: _seq(c, s, 7, 8) + _raw(c, _data(ch, b"x" * 20)),
    # a second session opened, then data in the same read
    "open_then_data": lambda c, ch, s: _raw(c, Byte(MSG_CHANNEL_OPEN) + String(b"session") + UInt32(99)
                                            + UInt32(1 << 20) + UInt32(1 << 15)) + _raw(c, _data(ch, b"d" * 30))
    + _raw(c, _data(ch, b"e" * 3)),
    # shorter than one cipher block (RFC 4253 6: at least 16 bytes and a multiple of it)
    "tiny_window_adjust": lambda c, ch, s: _raw(c, Byte(MSG_CHANNEL_WINDOW_ADJUST) + UInt32(ch._send_chan)
                                                + UInt32(1), padlen=1) + _raw(c, _data(ch, b"after")),
    "tiny_eof": lambda c, ch, s: _raw(c, Byte(MSG_CHANNEL_EOF) + UInt32(ch._send_chan), padlen=1)
    + _raw(c, _data(ch, b"after")),
}


def _seq(conn, state, send: int, recv: int | None = None) -> bytes:
    conn._send_seq, state["conn"]._recv_seq = send, send if recv is None else recv
    return b""


def _twice(wire: bytes) -> bytes:
    return wire + wire


def _swap(one: bytes, two: bytes) -> bytes:
    return two + one


def _shrink(state, window: int) -> bytes:
    state["chan"]._recv_window = window
    return b""


def _flip(wire: bytes, at: int, bit: int = 1) -> bytes:
    b = bytearray(wire)
    b[at] ^= bit
    return bytes(b)


@pytest.mark.parametrize("algs", ALGS, ids=_IDS.get)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest_twisted.ensureDeferred
async def test_the_gateway_accepts_and_refuses_what_asyncssh_does(case, algs):
    plain, gw = await _deferred(_both(algs, CASES[case]))
    assert gw == plain
    if case in EXPECTED and algs in (ETM, UMAC):  # (GCM: no sequence number; others: the length encrypted)
        assert plain[1] == EXPECTED[case] or plain[1][0] == EXPECTED[case]


@pytest.mark.parametrize("algs", [ETM, UMAC, GCM], ids=_IDS.get)
@pytest.mark.parametrize("case", sorted(set(CASES) - {"open_then_data"}))
@pytest_twisted.ensureDeferred
async def test_the_gateway_s_upstream_end_accepts_and_refuses_what_asyncssh_does(case, algs):
    """A malicious upstream host: the same packets, to the gateway's client connection."""
    plain, gw = await _deferred(_both(algs, CASES[case], pair=_pair_upstream))
    assert gw == plain
    if case in EXPECTED and algs in (ETM, UMAC):
        assert plain[1] == EXPECTED[case] or plain[1][0] == EXPECTED[case]


EXPECTED = {"valid": "open", "two_valid": "open", "zero_length": "open", "seq_wrap": "open",
            "window_exact": "open",
            "bad_mac_last_byte": "MACError", "bad_ciphertext": "MACError", "bad_length_field": "MACError",
            "second_tampered": "MACError", "replayed": "MACError", "reordered": "MACError",
            "skipped_seq": "MACError", "tiny_eof": "MACError", "tiny_window_adjust": "MACError",
            "window_exceeded": "ProtocolError", "unknown_channel": "ProtocolError", "after_eof": "ProtocolError",
            "strlen_short": "ProtocolError", "strlen_long": "ProtocolError", "over_max_pktlen": "ProtocolError"}


def _offsets(lengths):
    """Cuts worth trying: every offset near the start and the end of each packet."""
    out, at = set(), 0
    for n in lengths:
        out.update(range(at, min(at + 40, at + n)))
        out.update(range(max(at, at + n - 40), at + n + 1))
        at += n
    return sorted(k for k in out if 0 < k < at)


@pytest.mark.parametrize("algs", ALGS, ids=_IDS.get)
@pytest_twisted.ensureDeferred
async def test_packets_cut_into_reads_at_every_offset_arrive_whole(algs):
    """Two data packets (and a third on the end) in reads cut at one offset, then at two: the
    same data, in order, on one connection (sequence numbers and cipher state in step)."""
    async def run():
        conn, chan, state = await _pair(True, *algs)
        try:
            expected = []
            sconn = state["conn"]
            one, two = _raw(conn, _data(chan, b"a" * 37)), _raw(conn, _data(chan, b"b" * 1000))
            sconn.data_received(one + two)  # (whole: the fast path where there is one)
            expected += [b"a" * 37, b"b" * 1000]
            offsets = _offsets([len(one), len(two)])
            for i, k in enumerate(offsets):
                one = _raw(conn, _data(chan, b"%d:" % i + b"a" * 37))
                two = _raw(conn, _data(chan, b"%d;" % i + b"b" * 1000))
                three = _raw(conn, _data(chan, b"%d." % i))
                wire = one + two + three
                j = (k * 7) % len(wire) or 1
                for a, b in zip([0, *sorted({k, j})], [*sorted({k, j}), len(wire)]):
                    if a < b:
                        sconn.data_received(wire[a:b])
                expected += [b"%d:" % i + b"a" * 37, b"%d;" % i + b"b" * 1000, b"%d." % i]
                state["chan"]._recv_window = 1 << 20
            await asyncio.sleep(0.05)
            got = b"".join(d for d, _ in state["data"])
            assert got == b"".join(expected) and not state["done"].done()
        finally:
            conn.abort()
            state["server"].close()

    await _deferred(run())


@pytest.mark.parametrize("algs", [ETM, GCM], ids=_IDS.get)
@pytest.mark.parametrize("cut", [1, 3, 4, 5, 15, 16, 17, 60, 61, 62, 63, 64, 65, 66, 100])
@pytest_twisted.ensureDeferred
async def test_a_tampered_second_packet_cut_anywhere_is_refused_as_asyncssh_does(algs, cut):
    def build(c, ch, s):
        return _raw(c, _data(ch, b"a" * 20)) + _flip(_raw(c, _data(ch, b"b" * 60)), 50)

    plain, gw = await _deferred(_both(algs, build, [cut]))
    assert gw == plain and plain == ([(b"a" * 20, None)], ("MACError", "MAC verification failed"))


# --- data across rekeys (strict kex resets the sequence numbers at each NEWKEYS) -----------------

@pytest.mark.parametrize("algs", [ETM, UMAC, GCM], ids=_IDS.get)
@pytest_twisted.ensureDeferred
async def test_data_both_ways_across_many_rekeys_arrives_as_sent(algs):
    """The gateway's classes on both ends, a rekey every 64 KiB each way: what is echoed comes back
    byte for byte (data packets in the same reads as KEXINIT, NEWKEYS and the first packets under
    the new keys), and the fast path did take packets under keys after the first."""
    import os

    seen_keys: set = set()
    original = private._CoalescedSends._recv_whole

    def spying(self, data, view, pos, n):
        used = original(self, data, view, pos, n)
        if used:
            seen_keys.add(id(self._recv_encryption))
        return used

    async def run():
        server_key = asyncssh.generate_private_key("ssh-ed25519")

        class Session(asyncssh.SSHServerSession):
            def connection_made(self, chan):
                self.chan = chan

            def shell_requested(self):
                return True

            def data_received(self, data, datatype):
                self.chan.write(data)

            def eof_received(self):
                self.chan.exit(0)

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn):
                self.conn = private.gateway_connection(conn, None)

            def begin_auth(self, username):
                return False

            def session_requested(self):
                return self.conn.create_server_channel(encoding=None), Session()

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

        server = await asyncssh.create_server(Server, "127.0.0.1", 0, server_host_keys=[server_key],
                                              encryption_algs=[algs[0]], mac_algs=[algs[1]],
                                              rekey_bytes=65536, line_editor=False)
        port = server.sockets[0].getsockname()[1]
        try:
            conn, _ = await asyncssh.create_connection(
                Client, "127.0.0.1", port, username="u", known_hosts=None, agent_path=None, config=[],
                encryption_algs=[algs[0]], mac_algs=[algs[1]], rekey_bytes=65536)
            async with conn:
                chan, session = await conn.create_session(Collect, encoding=None)
                payload = os.urandom(1 << 20)
                for i in range(0, len(payload), 20_000):
                    chan.write(payload[i:i + 20_000])
                    await asyncio.sleep(0)
                chan.write_eof()
                await asyncio.wait_for(session.done, 60)
                assert bytes(session.got) == payload
        finally:
            server.close()

    private._CoalescedSends._recv_whole = spying
    try:
        await _deferred(run())
    finally:
        private._CoalescedSends._recv_whole = original
    assert len(seen_keys) > 4  # (packets under many successive keys took the fast path)


# --- the batched sends (sendmsg of the parts) ----------------------------------------------------

class _Reader(asyncio.Protocol):
    def __init__(self):
        self.paused = 0
        self.resumed = 0

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1


async def _sender_and_peer():
    import socket

    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    loop = asyncio.get_event_loop()
    proto = _Reader()
    transport, _ = await loop.create_connection(lambda: proto, sock=a)
    assert type(transport) is private._SOCKET_TRANSPORT
    conn = object.__new__(private.GatewayServerConnection)
    conn._transport, conn._loop = transport, loop
    b.setblocking(False)
    return conn, transport, proto, b


async def _drain(b, want: int) -> bytes:
    got = bytearray()
    for _ in range(2000):
        try:
            chunk = b.recv(1 << 16)
        except BlockingIOError:
            await asyncio.sleep(0.002)
            continue
        if not chunk:
            break
        got += chunk
        if len(got) >= want:
            break
    return bytes(got)


@pytest_twisted.ensureDeferred
async def test_batched_sends_partly_sent_keep_their_order_and_backpressure():
    async def run():
        import os

        conn, transport, proto, b = await _sender_and_peer()
        try:
            sent = []
            # batch 1: more than the socket takes (sendmsg sends part; the rest is buffered)
            for i in range(40):
                part = bytes([i]) * 7000
                sent.append(part)
                conn._send_parts(part[:3], part[3:])
            await asyncio.sleep(0)
            assert transport.get_write_buffer_size() > 0
            # batch 2 while batch 1 is still buffered: behind it, never before
            for i in range(5):
                part = os.urandom(100)
                sent.append(part)
                conn._send_parts(part[:50], part[50:])
            conn._send(b"tail")
            sent.append(b"tail")
            await asyncio.sleep(0)
            assert proto.paused >= 1  # (the transport's high-water mark was crossed)
            want = b"".join(sent)
            got = await _drain(b, len(want))
            assert got == want
            await asyncio.sleep(0.01)
            assert transport.get_write_buffer_size() == 0 and proto.resumed >= 1
        finally:
            transport.abort()
            b.close()

    await _deferred(run())


@pytest_twisted.ensureDeferred
async def test_a_batch_to_a_closed_socket_or_after_abort_raises_nothing():
    async def run():
        conn, transport, proto, b = await _sender_and_peer()
        b.close()  # the peer is gone: sendmsg fails (EPIPE / ECONNRESET) and write meets it
        await asyncio.sleep(0.01)
        conn._send_parts(b"a" * 10, b"b" * 10)
        conn._send_parts(b"c" * 10)
        await asyncio.sleep(0.01)
        conn._send_parts(b"d", b"e")  # (the transport now lost: dropped as write drops it)
        await asyncio.sleep(0.01)
        transport.abort()
        conn2, transport2, _, b2 = await _sender_and_peer()
        conn2._send_parts(b"first", b"batch")
        transport2.abort()  # aborted before the batch goes: nothing sent, nothing raised
        await asyncio.sleep(0.01)
        assert await _drain(b2, 1) == b""
        b2.close()

    await _deferred(run())
