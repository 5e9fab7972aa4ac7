"""Substring search over large buffers: the C library's memmem where there is one.

Every piece of a streamed response is searched for the injected credentials
(an upstream that echoes one must not hand it to the caller). CPython's
``in`` searches a 256 KiB piece for a 14-byte needle at about 4 GB/s on one
core, the same order as copying it through the sockets; glibc's memmem is 2.5
to 4 times faster and, called through ctypes, releases the GIL while it runs.
Small buffers keep ``in``: the foreign call costs about a microsecond.
"""
from __future__ import annotations

import ctypes
import ctypes.util

LARGE = 32 * 1024


def _load():
    try:
        name = ctypes.util.find_library("c")
        f = ctypes.CDLL(name).memmem if name else None
    except (OSError, AttributeError):
        return None
    if f is None:
        return None
    f.restype = ctypes.c_void_p
    f.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    return f


_memmem = _load()


def contains(haystack: bytes, needle: bytes) -> bool:
    if _memmem is not None and type(haystack) is bytes and len(haystack) >= LARGE and needle:
        return _memmem(haystack, len(haystack), needle, len(needle)) is not None
    # (not ``needle in haystack``: bytes' ``in`` first tries the needle as an integer, and the
    # TypeError it makes and drops costs more than a short search; find() does not)
    return haystack.find(needle) != -1
