"""Request-target normalization, sans-IO.

The path is normalized once and that one form is both judged by the policy
and forwarded upstream, so a rule sees exactly what the upstream will see.
Normalizing: percent-encoded unreserved characters are decoded (RFC 3986
6.2.2.2), other escapes upper-cased, repeated slashes collapsed and dot
segments removed. Anything whose meaning an upstream could read differently
from us is refused instead of guessed: encoded slashes, backslashes, dots
and NULs, ``;`` path parameters, bytes outside ASCII, a ``..`` that climbs
above the root, and any target that is not origin-form (``/path?query``).
"""
from __future__ import annotations

import re

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar plus "/" (and "%", checked separately); ";" is refused on purpose.
_PATH_OK = re.compile(rb"^[A-Za-z0-9\-._~!$&'()*+,=:@/%]*$")
_QUERY_OK = re.compile(rb"^[A-Za-z0-9\-._~!$&'()*+,;=:@/?%\[\]|{}^`\"<>\\]*$")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_HIGH_ESCAPE = re.compile(rb"%[89A-F]")  # compiled once (every request's path)
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
# Escapes that would let an upstream see a different path than the one judged.
_FORBIDDEN_ESCAPES = {b"2F": "an encoded slash", b"5C": "an encoded backslash",
                      b"00": "an encoded NUL", b"3B": "an encoded semicolon"}


class PathError(ValueError):
    """The request target is refused; the message says why (shown to the caller)."""


def split_target(target: bytes) -> tuple[bytes, bytes | None]:
    """(path, query or None) of an origin-form target; refuses every other form."""
    if not target.startswith(b"/"):
        if target == b"*":
            raise PathError("asterisk-form request targets are not forwarded")
        raise PathError("only origin-form request targets (/path?query) are accepted, "
                        "not absolute-form or authority-form")
    path, sep, query = target.partition(b"?")
    if target.find(b"#") != -1:  # (find(), not ``in``: see hoopy/bytesearch.py)
        raise PathError("a request target cannot carry a fragment")
    if sep and not _QUERY_OK.match(query):
        raise PathError("the query string has characters that must be percent-encoded")
    return path, (query if sep else None)


def _decode_segment(seg: bytes) -> bytes:
    if b"%" not in seg:
        return seg
    out = bytearray()
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        if c != 0x25:  # "%"
            out.append(c)
            i += 1
            continue
        esc = seg[i + 1:i + 3]
        if len(esc) != 2 or esc[0] not in _HEX or esc[1] not in _HEX:
            raise PathError("the path has a malformed percent-escape")
        esc = esc.upper()
        if esc == b"25" and len(seg) >= i + 5 and seg[i + 3] in _HEX and seg[i + 4] in _HEX:
            raise PathError("the path has a double-encoded escape (%25XX), which upstreams that decode "
                            "twice read differently")
        why = _FORBIDDEN_ESCAPES.get(esc)
        if why:
            raise PathError(f"the path has {why} (%{esc.decode()}), which upstreams read differently")
        value = int(esc, 16)
        if value in _UNRESERVED:
            out.append(value)
        else:
            out += b"%" + esc
        i += 3
    if _HIGH_ESCAPE.search(out):
        # Escaped bytes outside ASCII must be UTF-8: an overlong form (%C0%AF is "/") is refused.
        try:
            _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), seg).decode("utf-8")
        except UnicodeDecodeError:
            raise PathError("the path has percent-escaped bytes that are not UTF-8 (overlong forms "
                            "such as %C0%AF are read as '/' by some upstreams)")
    return bytes(out)


def normalize_path(path: bytes) -> str:
    """The one normalized form of a path; raises PathError if it must be refused."""
    if not path.startswith(b"/"):
        raise PathError("the path must start with /")
    if not _PATH_OK.match(path):
        if b"\\" in path:
            raise PathError("the path has a backslash, which some upstreams read as a slash")
        if b";" in path:
            raise PathError("the path has a ';' parameter, which some upstreams strip before routing")
        raise PathError("the path has characters that must be percent-encoded")
    if path.find(b"%") == -1 and path.find(b"//") == -1 and path.find(b"/.") == -1:
        return path.decode("ascii")  # no escape, empty or dot segment: already its normal form
    return _normalize_segments(path)


def _normalize_segments(path: bytes) -> str:
    """normalize_path's work, segment by segment (``path`` already passed its character check)."""
    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    last = len(segments) - 1
    for i, raw in enumerate(segments):
        seg = _decode_segment(raw)
        if seg in (b".", b"..") and raw != seg:
            raise PathError("the path has an encoded dot segment, which upstreams read differently")
        if seg == b"" or seg == b".":
            if i == last:  # "/a/" and "/a/." keep their trailing slash
                out.append(b"")
            continue
        if seg == b"..":
            if not out or out == [b""]:
                raise PathError("the path climbs above the root with '..'")
            if out[-1] == b"":
                out.pop()
            out.pop()
            if i == last:
                out.append(b"")
            continue
        if out and out[-1] == b"":
            out.pop()
        out.append(seg)
    return "/" + "/".join(s.decode("ascii") for s in out)


def normalize_target(target: bytes) -> tuple[str, str | None]:
    """(normalized path, raw query or None) of a request target."""
    path, query = split_target(target)
    return normalize_path(path), (query.decode("ascii") if query is not None else None)
