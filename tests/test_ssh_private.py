"""The private asyncssh APIs hoopy uses (hoopy/ssh/private.py) are still there.

An asyncssh upgrade that renames or removes one must fail here, loudly, rather
than change what a client sees (a lost exit status, unbounded env requests,
refusals that leave no event).
"""
import inspect

import asyncssh
import pytest

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
