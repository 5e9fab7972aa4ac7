"""The hash chain: each event's SHA-256 covers its content and the hash before it.

Editing an event changes its hash; removing, inserting or reordering one
breaks the next event's link; both are found by ``verify``. Signatures
(hoopy.audit.signing) make the chain keyed: a re-linked chain no longer
matches what the gateway signed.

The bytes each hash covers are defined here, by hand, and pinned by test
vectors (tests/test_chain_vectors.py): they never depend on a JSON library's
choices, so a store written today verifies with whatever encoder hoopy uses
later. ``data`` and ``writes`` are hashed as the strings stored, whatever
produced them.

Two link formats, told apart by the ``writes`` column:

- v1 (stores written before row writes were chained; ``writes`` is NULL):
  ``sha256(prev + "\\n" + A([seq, time_us, gateway, session, identity,
  connection, protocol, peer, kind, outcome, data]))``
- v2 (``writes`` is a string, ``"{}"`` when the event wrote no row):
  ``sha256("hoopy-chain-v2\\n" + prev + "\\n" + A([... the same ..., writes]))``

where ``A`` is a JSON array with no spaces, integers in decimal, ``null`` for
NULL, and strings in double quotes escaping only ``"``, ``\\``, ``\\b \\f \\n
\\r \\t`` and the other characters below U+0020 (``\\u00XX``, lower-case hex);
every other character is itself, and the whole is UTF-8. A v2 hash can never
equal a v1 hash of other content (the prefix), so a stripped ``writes`` is an
edit like any other.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

GENESIS = "0" * 64

# The columns, in this order, that each link covers.
FIELDS_V1 = ("seq", "time_us", "gateway", "session", "identity", "connection",
             "protocol", "peer", "kind", "outcome", "data")
FIELDS = FIELDS_V1 + ("writes",)
FIELDS_V2 = FIELDS
V2_PREFIX = "hoopy-chain-v2\n"
NO_WRITES = "{}"

# One encoder, made once: json.dumps with options builds a new one per call.
# Used for what the store writes (event data, row writes); never for the
# bytes a hash covers.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
_CANONICAL_ASCII = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


_DUMPS: Callable[..., bytes] | None
try:
    import orjson as _orjson

    _DUMPS = _orjson.dumps
    _SORTED = _orjson.OPT_SORT_KEYS
except ImportError:  # pragma: no cover (a dependency; the standard library gives the same bytes)
    _DUMPS = None

_I64, _U64 = -2 ** 63, 2 ** 64 - 1
_INF = float("inf")


def _plain(o, depth: int = 0) -> bool:
    """True when orjson writes exactly the standard library's bytes for ``o``: dicts with string
    keys, lists, tuples, strings, booleans, None, integers of 64 bits, and floats that both print
    the same way (not NaN, not infinite, none below 1e-4 but zero: orjson writes 1e-5 as 0.00001).
    Anything else (a subclass, bytes, a date: ``default=str``) takes the standard library."""
    if depth > 32:
        return False
    t = type(o)
    if t is dict:
        for k in o:
            if type(k) is not str:
                return False
        values = o.values()
    elif t is list or t is tuple:
        values = o
    else:
        return False
    for v in values:  # the leaves inline: this runs for every event
        t = type(v)
        if t is str or v is None or t is bool:
            continue
        if t is int:
            if _I64 <= v <= _U64:
                continue
            return False
        if t is float:
            if v == 0.0 or 1e-4 <= abs(v) < _INF:
                continue
            return False
        if not _plain(v, depth + 1):
            return False
    return True


def _load_canon():
    """hoopy/audit/_canon.c's (dumps, link, ascii), or Nones: not built, or turned off
    (HOOPY_CANON=python: the Python code, the reference it is held to)."""
    if os.environ.get("HOOPY_CANON") == "python":
        return None, None, None
    try:
        from hoopy.audit import _canon
    except ImportError:
        return None, None, None
    return _canon.dumps, _canon.link, getattr(_canon, "ascii", None)


# dumps and link return None (never raise) for what they do not write exactly as the Python path
# below: that path then writes it, or refuses it, as before (tests/test_chain_vectors.py holds
# both). ascii: the writer's _clean_event's common case in one call.
_C_DUMPS, _C_LINK, _C_ASCII = _load_canon()


def canonical_json(obj) -> str:
    """JSON for the store: sorted keys, no spaces. A string that cannot be
    UTF-8 (a lone surrogate from bytes decoded with surrogateescape) is written
    \\u-escaped instead, so one odd value can never make a batch unwritable.

    hoopy/audit/_canon.c writes it where built (one pass in C; None for anything but exact
    dicts, lists, tuples, strings, numbers, booleans and None), else orjson whenever its bytes
    are the standard library's (``_plain``; frozen by tests/test_chain_vectors.py); orjson
    refuses a lone surrogate, which then takes the standard library's path."""
    if _C_DUMPS is not None:
        text = _C_DUMPS(obj)
        if text is not None:
            return text
    return _canonical_python(obj)


def _canonical_python(obj) -> str:
    """canonical_json without the C module: the reference the C module is held to."""
    if _DUMPS is not None and _plain(obj):
        try:
            return _DUMPS(obj, option=_SORTED).decode()
        except TypeError:  # orjson.JSONEncodeError: a lone surrogate
            pass
    text = _CANONICAL.encode(obj)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return _CANONICAL_ASCII.encode(obj)
    return text


# --- the frozen encoding -----------------------------------------------------------------

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = {chr(i): _SHORT.get(chr(i), f"\\u{i:04x}") for i in range(0x20)}
_ESCAPES['"'] = '\\"'
_ESCAPES["\\"] = "\\\\"
_TABLE = str.maketrans(_ESCAPES)


def _value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, str):
        return '"' + v.translate(_TABLE) + '"'
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    raise TypeError(f"a chained column holds {type(v).__name__}, not an integer, a string or NULL")


def chain_array(values) -> str:
    """The frozen array encoding ``A`` (see the module's docstring)."""
    return "[" + ",".join(_value(v) for v in values) + "]"


# For integers, strings and NULLs the standard library's C encoder writes exactly ``A`` (the test
# vectors and a property test hold it to chain_array), and does it several times faster; any
# other value (which the gateway never writes) goes through chain_array, which refuses it.
_ARRAY = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode
_SIMPLE = (str, int, type(None))


def _array(values: list) -> str:
    for v in values:
        if type(v) not in _SIMPLE:
            return chain_array(values)
    return _ARRAY(values)


def _array_bytes(values: list) -> bytes:
    """``_array(values)`` as UTF-8. orjson writes the same bytes for integers of 64 bits, strings
    and NULLs (the vectors and a property test hold it to chain_array); it refuses a larger integer
    and a lone surrogate, which then take the standard library (and a surrogate fails to encode,
    as before)."""
    for v in values:
        if type(v) not in _SIMPLE:
            return chain_array(values).encode()
    if _DUMPS is not None:
        try:
            return _DUMPS(values)
        except TypeError:
            pass
    return _ARRAY(values).encode()


_V2_PREFIX_BYTES = V2_PREFIX.encode()


def link_bytes(prev_hash: str, row: dict) -> bytes:
    """Exactly the bytes whose SHA-256 is ``row``'s hash."""
    if row.get("writes") is None:
        return prev_hash.encode() + b"\n" + _array_bytes([row[f] for f in FIELDS_V1])
    return _V2_PREFIX_BYTES + prev_hash.encode() + b"\n" + _array_bytes([row[f] for f in FIELDS_V2])


def link(prev_hash: str, row: dict) -> str:
    if _C_LINK is not None:
        if row.get("writes") is None:
            h = _C_LINK(b"", prev_hash, [row[f] for f in FIELDS_V1])
        else:
            h = _C_LINK(_V2_PREFIX_BYTES, prev_hash, [row[f] for f in FIELDS_V2])
        if h is not None:
            return h
    return hashlib.sha256(link_bytes(prev_hash, row)).hexdigest()


def link_v2(prev_hash: str, values: list) -> str:
    """``link`` of a v2 row given as its FIELDS_V2 values in order (the writer's own rows); the
    C module hashes it in one call where built (the same bytes: the vectors and a property)."""
    if _C_LINK is not None:
        h = _C_LINK(_V2_PREFIX_BYTES, prev_hash, values)
        if h is not None:
            return h
    return _link_v2_python(prev_hash, values)


def _link_v2_python(prev_hash: str, values: list) -> str:
    return hashlib.sha256(_V2_PREFIX_BYTES + prev_hash.encode() + b"\n" + _array_bytes(values)).hexdigest()


class Break(Exception):
    def __init__(self, seq, message):
        self.seq = seq
        self.message = message
        super().__init__(f"event {seq}: {message}")


class Walker:
    """Checks rows one at a time, in seq order, from the first event or from
    a known point (an archive that starts mid-chain)."""

    def __init__(self, prev: str | None = GENESIS, next_seq: int | None = 1):
        self.prev = prev  # None: take the first row's prev as given
        self.next_seq = next_seq  # None: take the first row's seq as given
        self.count = 0
        self.last = 0

    def step(self, row) -> None:
        """Raise Break if ``row`` does not follow the rows before it."""
        seq = row["seq"]
        if self.next_seq is not None and seq != self.next_seq:
            if seq > self.next_seq:
                raise Break(self.next_seq,
                            f"missing: the chain jumps from event {self.next_seq - 1} to {seq} (removed)")
            raise Break(seq, "out of order")
        prev = row["prev"] if self.prev is None else self.prev
        if row["prev"] != prev:
            raise Break(seq, "its link to the event before does not match "
                             "(an event was removed, inserted or reordered)")
        try:
            h = link(prev, row)
        except (TypeError, UnicodeEncodeError) as e:
            raise Break(seq, f"a column holds what the gateway never writes ({e}) (edited)")
        if h != row["hash"]:
            raise Break(seq, "its content does not match its hash (edited)")
        self.prev = row["hash"]
        self.next_seq = seq + 1
        self.count += 1
        self.last = seq

    @property
    def head(self) -> str:
        return self.prev if self.prev is not None else GENESIS


def verify_rows(rows):
    """Walk rows in seq order; return (count, last seq, head hash) or raise Break."""
    w = Walker()
    for row in rows:
        w.step(row)
    return w.count, w.last, w.head
