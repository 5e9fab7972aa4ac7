"""The sans-IO SFTP reader (hoopy.ssh.sftp): packets in, audit actions out."""
import hashlib
import struct

import pytest
from hypothesis import given, settings, strategies as st

from hoopy.ssh import sftp


def s(b) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack(">I", len(b)) + b


def pkt(t, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, t) + body


def rid(n):
    return struct.pack(">I", n)


def test_open_write_close_is_recorded_with_byte_counts():
    tr = sftp.Tracker()
    out = tr.requests(pkt(sftp.INIT, struct.pack(">I", 3)))
    assert out[0][1] is None
    (p, a), = tr.requests(pkt(sftp.OPEN, rid(1) + s("/tmp/x") + struct.pack(">I", 0x1A) + struct.pack(">I", 0)))
    assert a == sftp.Action("sftp.open", {"path": "/tmp/x", "mode": "write,create,truncate"})
    tr.responses(pkt(sftp.HANDLE, rid(1) + s(b"h1")))
    data = b"z" * 1000
    w = pkt(sftp.WRITE, rid(2) + s(b"h1") + struct.pack(">Q", 0) + s(data))
    # Split anywhere: whole packets only come out, and nothing is lost.
    assert tr.requests(w[:7]) == []
    (p, a), = tr.requests(w[7:])
    assert p == w and a is None
    (p, a), = tr.requests(pkt(sftp.CLOSE, rid(3) + s(b"h1")))
    assert a.kind == "sftp.close"
    assert a.data == {"path": "/tmp/x", "mode": "write,create,truncate", "bytes_read": 0, "bytes_written": 1000,
                      "sha256": hashlib.sha256(data).hexdigest()}


def test_reads_are_counted_from_the_data_replies():
    tr = sftp.Tracker()
    tr.requests(pkt(sftp.OPEN, rid(1) + s("/etc/hosts") + struct.pack(">II", 1, 0)))
    tr.responses(pkt(sftp.HANDLE, rid(1) + s(b"H")))
    tr.requests(pkt(sftp.READ, rid(2) + s(b"H") + struct.pack(">QI", 0, 32768)))
    # The reply may arrive in pieces.
    reply = pkt(sftp.DATA, rid(2) + s(b"a" * 500))
    tr.responses(reply[:3])
    tr.responses(reply[3:])
    (_, a), = tr.requests(pkt(sftp.CLOSE, rid(3) + s(b"H")))
    assert a.data["bytes_read"] == 500 and a.data["mode"] == "read"


def test_rename_remove_mkdir_symlink_and_posix_rename():
    tr = sftp.Tracker()
    cases = [
        (pkt(sftp.RENAME, rid(1) + s("/a") + s("/b")), ("sftp.rename", {"path": "/a", "to": "/b"})),
        (pkt(sftp.REMOVE, rid(2) + s("/b")), ("sftp.remove", {"path": "/b"})),
        (pkt(sftp.MKDIR, rid(3) + s("/d") + rid(0)), ("sftp.mkdir", {"path": "/d"})),
        (pkt(sftp.RMDIR, rid(4) + s("/d")), ("sftp.rmdir", {"path": "/d"})),
        (pkt(sftp.SYMLINK, rid(5) + s("/target") + s("/link")),
         ("sftp.symlink", {"path": "/link", "target": "/target"})),
        (pkt(sftp.EXTENDED, rid(6) + s("posix-rename@openssh.com") + s("/x") + s("/y")),
         ("sftp.rename", {"path": "/x", "to": "/y"})),
    ]
    got = tr.requests(b"".join(p for p, _ in cases))
    assert [(a.kind, a.data) for _, a in got] == [want for _, want in cases]


def test_files_left_open_are_reported():
    tr = sftp.Tracker()
    tr.requests(pkt(sftp.OPEN, rid(1) + s("/f") + struct.pack(">II", 2, 0)))
    tr.responses(pkt(sftp.HANDLE, rid(1) + s(b"h")))
    (a,) = tr.unclosed()
    assert a.data["unclosed"] is True and a.data["path"] == "/f"


def test_garbage_is_an_error_not_a_crash():
    with pytest.raises(sftp.SFTPError):
        sftp.Tracker().requests(b"\xff\xff\xff\xff" + b"x" * 10)
    with pytest.raises(sftp.SFTPError):
        sftp.Tracker().requests(pkt(sftp.OPEN, rid(1) + b"\x00\x00\x10\x00abc"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_only_sftp_errors(data):
    tr = sftp.Tracker()
    try:
        tr.requests(data)
        tr.responses(data)
    except sftp.SFTPError:
        pass


def test_unknown_requests_and_extensions_are_recorded_by_name():
    tr = sftp.Tracker()
    got = tr.requests(pkt(sftp.EXTENDED, rid(1) + s("frobnicate@example.com") + s("/x"))
                      + pkt(21, rid(2) + s("/a") + s("/b") + b"\x01")  # v6 LINK
                      + pkt(sftp.EXTENDED, rid(3) + s("statvfs@openssh.com") + s("/"))
                      + pkt(sftp.EXTENDED, rid(4) + s("lsetstat@openssh.com") + s("/l") + rid(0)))
    assert [(a.kind, a.data) if a else None for _, a in got] == [
        ("sftp.extended", {"name": "frobnicate@example.com"}), ("sftp.request", {"type": 21}), None,
        ("sftp.setstat", {"path": "/l"})]


def test_an_upstream_speaking_another_sftp_version_ends_the_channel():
    tr = sftp.Tracker()
    tr.responses(pkt(sftp.VERSION, struct.pack(">I", 3)))
    with pytest.raises(sftp.SFTPError):
        sftp.Tracker().responses(pkt(sftp.VERSION, struct.pack(">I", 6)))
