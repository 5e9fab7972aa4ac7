"""A run of DataRows masked at once for the ``email`` pattern (``RowPlan.mask_rows``).

One C-level pass over the whole run finds every byte that can start something the
pattern or a spelling needs (``@``, ``%``, ``\\``, ``&``, ``+``, non-ASCII); a row
without one is never walked, a value without one is never read, and the rows that
do not change are copied as slices of the run. A value whose only such bytes are
``@`` is masked here, by the same spans as ``_email_spans`` (the domain matched
forward from each ``@``, the local part read backwards from it), clipped to the
value; any other value with a mark goes to ``RowPlan.value``, the per-row code.
Same output bytes and counts as masking row by row (tests/test_postgres_rowbatch.py).

``email_rows`` is the C twin of ``email_rows_py`` (hoopy/postgres/_rowmask.c, built by setup.py
when a compiler is there) when it imports, else ``email_rows_py`` itself; HOOPY_ROWMASK=python
picks the Python code. Same bytes, counts and errors (tests/test_postgres_rowmask_c.py).
"""
from __future__ import annotations

from itertools import accumulate
import os
import re
import struct

from hoopy.policy.masking import _DOMAIN, _LOCAL, MASK
from hoopy.postgres import codec

MASK_B = MASK.encode()
# Every alternative of the email prefilter and of the notation marks holds one of these
# (the float exponent its "+"): a value without any of them cannot change.
_MARKS = re.compile(rb"[@%\\&+\x80-\xff]")
_NOT_OTHER = bytes(c for c in range(128) if c not in b"%\\&+")  # deleted: what is left is a mark but "@"
_MASK_LEN = len(MASK_B)
_AT_DOMAIN_B = re.compile(b"@" + _DOMAIN.encode())
_LOCAL_RUN_B = re.compile(_LOCAL.encode() + b"*+")
_I = struct.Struct("!i")
_H = struct.Struct("!h")
_HI = struct.Struct("!ci")
AT = 64
FAST = 5  # a column masked here (the others' kinds: RowPlan._kinds, read by RowPlan.value)


def _marks(raw, start: int, end: int) -> list:
    """Positions of the mark bytes in ``raw[start:end]``, then ``end`` (a sentinel). Usually the only
    marks are the addresses' "@": found by a split, without a match object each."""
    seg = raw[start:end]
    if seg.translate(None, _NOT_OTHER):
        out = [m.start() for m in _MARKS.finditer(raw, start, end)]
    else:
        lens = list(map(len, seg.split(b"@")))
        lens.pop()
        if lens:
            lens = list(map((1).__add__, lens))
            lens[0] += start - 1
            out = list(accumulate(lens))
        else:
            out = []
    out.append(end)
    return out


def _spans(raw, marks: list, mi: int, vs: int, ve: int):
    """The address spans in the value ``raw[vs:ve]`` whose marks start at ``marks[mi]``, as
    ``_email_spans`` finds them in it; None if a mark other than "@" is in it."""
    spans = []
    rev = None
    last = vs
    m = marks[mi]
    while m < ve:
        if raw[m] != AT:
            return None
        d = _AT_DOMAIN_B.match(raw, m, ve)
        if d is not None:
            if rev is None:
                rev = raw[vs:ve][::-1]
            s = ve - _LOCAL_RUN_B.match(rev, ve - m).end()  # type: ignore[union-attr]  # *+ always matches
            if s >= last and s != m:  # else inside the previous match, or no local part
                last = d.end()
                spans.append((s, last))
        mi += 1
        m = marks[mi]
    return spans


def email_rows_py(plan, raw, start: int, end: int):
    """The run of whole DataRow messages at ``raw[start:]``, up to ``end``: (its bytes masked,
    or None when none changes; where the run stops; how many rows it holds)."""
    marks = _marks(raw, start, end)
    kinds = plan.batch_kinds
    ncols = len(kinds)
    unpack = _I.unpack_from
    hunpack = _HI.unpack_from
    at_domain = _AT_DOMAIN_B.match
    local_run = _LOCAL_RUN_B.match
    out: list = []
    run = pos = start  # run: where the bytes not yet copied start
    mi, mk = 0, marks[0]
    found = rows = 0
    rev = None  # raw[start:end] reversed: the local part of an address is read backwards from its "@"
    try:
        while end - pos >= 5:
            t, n = hunpack(raw, pos)
            nxt = pos + 1 + n
            if t != b"D" or n < 4 or nxt > end:
                break  # the caller reads what ends the run
            rows += 1
            while mk < pos:
                mi += 1
                mk = marks[mi]
            if mk >= nxt:
                pos = nxt  # no mark in this row
                continue
            if n < 6 or (count := _H.unpack_from(raw, pos + 5)[0]) > ncols:
                # no column count, or more values than columns: the per-row code reads it
                new = plan.rewrite(bytes(raw[pos + 5:nxt]))
                if new is not None:
                    if run < pos:
                        out.append(raw[run:pos])
                    out.append(new)
                    run = nxt
                pos = nxt
                continue
            hi = -1  # where this row's new header goes in out, once a value changes
            delta = 0
            p = pos + 7
            for i in range(count):
                (k,) = unpack(raw, p)  # past the row: k > 0 ends past it too (below), or k < -1
                vs = p + 4
                ve = vs + k
                if k < 0:
                    if k != -1 or vs > nxt:
                        raise codec.ProtocolError("bad DataRow")
                    p = vs
                    continue
                if ve > nxt:
                    raise codec.ProtocolError("bad DataRow")
                p = ve
                if mk >= ve:
                    continue  # the usual value: no mark in it
                while mk < vs:
                    mi += 1
                    mk = marks[mi]
                if mk >= ve or not (kind := kinds[i]):
                    continue
                if kind == FAST and raw[mk] == AT and marks[mi + 1] >= ve:
                    # One "@", nothing else: at most one address (the usual masked value).
                    d = at_domain(raw, mk, ve)
                    if d is None:
                        continue
                    if rev is None:
                        rev = raw[start:end][::-1]
                    s = end - local_run(rev, end - mk, end - vs).end()  # type: ignore[union-attr]
                    if s == mk:
                        continue  # no local part
                    e = d.end()
                    spans: list | None = [(s, e)]
                else:
                    spans = _spans(raw, marks, mi, vs, ve) if kind == FAST else None
                    if spans is None:
                        v = bytes(raw[vs:ve])
                        nv = plan.value(i, 4 if kind == FAST else kind, v)
                        if nv is not None and nv == v:
                            continue
                    elif not spans:
                        continue
                if hi < 0:
                    if run < pos:
                        out.append(raw[run:pos])
                    hi = len(out)
                    out.append(b"")
                    run = pos + 5
                if spans is not None:
                    nk = k
                    for s, e in spans:
                        nk += _MASK_LEN - (e - s)
                    out.append(raw[run:ve - k - 4])
                    out.append(_I.pack(nk))
                    c = vs
                    for s, e in spans:
                        out.append(raw[c:s])
                        out.append(MASK_B)
                        c = e
                    found += len(spans)
                    delta += nk - k
                    run = c
                elif nv is None:
                    out.append(raw[run:vs - 4])
                    out.append(b"\xff\xff\xff\xff")
                    delta -= k
                    run = ve
                else:
                    out.append(raw[run:vs - 4])
                    out.append(_I.pack(len(nv)))
                    out.append(nv)
                    delta += len(nv) - k
                    run = ve
            if hi >= 0:
                out[hi] = _HI.pack(b"D", n + delta)
            pos = nxt
    except struct.error:
        raise codec.ProtocolError("bad DataRow")
    if found:
        plan.patterns["email"] = plan.patterns.get("email", 0) + found
    if not out:
        return None, pos, rows
    if run < pos:
        out.append(raw[run:pos])
    return b"".join(out), pos, rows


def _load_c():
    """The C ``email_rows``, or None: not built, turned off, or written for other regexes."""
    if os.environ.get("HOOPY_ROWMASK") == "python":
        return None
    try:
        from hoopy.postgres import _rowmask
    except ImportError:
        return None
    if (_rowmask.DOMAIN, _rowmask.LOCAL) != (_DOMAIN, _LOCAL):
        return None  # masking.py's regexes changed: the C code reproduces the old ones
    c_rows = _rowmask.email_rows
    perr, serr = codec.ProtocolError, struct.error

    def email_rows_c(plan, raw, start: int, end: int):
        if 0 <= start <= end <= len(raw) and type(raw) in (bytes, bytearray):
            return c_rows(plan, raw, start, end, MASK_B, perr, serr)
        return email_rows_py(plan, raw, start, end)  # what the C code does not take: as before

    email_rows_c.__doc__ = email_rows_py.__doc__
    return email_rows_c


email_rows_c = _load_c()
email_rows = email_rows_c or email_rows_py
