"""The run of a statement's reply that passes as it is, found in one pass (``scan``).

While a statement's rows are not masked, its DataRows (and a RowDescription nothing reads)
go to the client as the bytes they came as: the gateway needs only where the run ends, how
many rows it held, and what message ends it. ``scan`` walks the message headers from ``pos``
and stops at the first message that is not a DataRow (or a RowDescription, when ``also_t``),
that is not whole before ``end``, or whose length is under 4. It returns (where it stopped,
the DataRows skipped, the type byte of the whole message there, where that message ends); the
type is -1 when no whole, well-framed message starts there (the caller's general loop reads,
or refuses, what is there: no error is raised here).

``scan`` is the C twin (hoopy/postgres/_rowmask.c, ``scan_reply``) when it imports, else
``scan_py``; HOOPY_PGREPLY=python picks the Python code, the reference. Same results
(tests/test_postgres_replyrun.py).
"""
from __future__ import annotations

import os
import struct

_HI = struct.Struct("!Bi")
D, T = 68, 84


def scan_py(buf, pos: int, end: int, also_t: bool) -> tuple[int, int, int, int]:
    rows = 0
    unpack = _HI.unpack_from
    while end - pos >= 5:
        t, n = unpack(buf, pos)
        if n < 4 or n > end - pos - 1:
            break
        if t == D:
            rows += 1
        elif t != T or not also_t:
            return pos, rows, t, pos + 1 + n
        pos += 1 + n
    return pos, rows, -1, pos


def _load_c():
    if os.environ.get("HOOPY_PGREPLY") == "python":
        return None
    try:
        from hoopy.postgres import _rowmask
    except ImportError:
        return None
    return getattr(_rowmask, "scan_reply", None)  # None: a module built before scan_reply


scan_c = _load_c()
scan = scan_c or scan_py
