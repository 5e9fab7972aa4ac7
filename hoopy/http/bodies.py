"""Body framing for masking, sans-IO: what a body is, server-sent events, echoed secrets, decoding.

``body_kind`` names a body's format from its Content-Type; ``SSEMasker`` masks an event stream
one event at a time as it arrives; ``Scrubber`` replaces the injected upstream credentials in a
stream; ``Decoder`` undoes a Content-Encoding (gzip, deflate, br) with an output limit. The
masking itself is hoopy.http.masker (JSON, text) and hoopy.http.formats (CSV, XML, HTML).
"""
from __future__ import annotations

import codecs
import re
import zlib

from hoopy.bytesearch import contains
from hoopy.http.masker import Masker
from hoopy.http.redaction import MaskError, add_count, check_ascii_compatible, looks_like_json

__all__ = ["MaskError", "Masker", "SSEMasker", "Scrubber", "Decoder", "body_kind", "charset_ok", "codings",
           "decodable", "looks_like_json", "check_ascii_compatible"]

_CSV = frozenset(("text/csv", "application/csv", "text/x-csv", "text/comma-separated-values",
                  "text/tab-separated-values", "text/tsv"))
_HTML = frozenset(("text/html", "application/xhtml+xml"))
_XML = frozenset(("application/xml", "text/xml"))
_TEXT = frozenset(("application/x-www-form-urlencoded", "application/javascript", "application/x-javascript",
                   "application/ecmascript", "application/graphql", "application/x-ndjson", "application/ndjson",
                   "application/jsonl", "application/x-jsonlines", "application/yaml", "application/x-yaml",
                   "application/toml", "application/sql", "application/x-sh", "application/jwt"))


def body_kind(content_type: str | bytes | None) -> str:
    """json | sse | csv | xml | html | text | other, from a Content-Type value."""
    if not content_type:
        return "other"
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct == "text/event-stream":
        return "sse"
    if ct == "application/json" or ct.endswith("+json") or ct == "application/json-seq":
        return "json"
    if ct in _CSV:
        return "csv"
    if ct in _HTML:
        return "html"
    if ct in _XML or ct.endswith("+xml"):
        return "xml"
    if ct.startswith("text/") or ct in _TEXT:
        return "text"
    return "other"


# Charsets in which the ASCII text the patterns and field names look for is plain ASCII bytes.
_ASCII_CHARSETS = re.compile(r"^(utf-?8|us-ascii|ascii|iso-?8859-\d+|latin-?1|(windows|cp)-?125\d|shift_jis|"
                             r"euc-jp|euc-kr|gb2312|gbk|gb18030|big5|koi8-[ru])$")


def charset_ok(content_type) -> bool:
    """False when a Content-Type names a charset the masker cannot read (utf-16, utf-7, EBCDIC ...)."""
    if not content_type:
        return True
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    for param in content_type.split(";")[1:]:
        k, _, v = param.partition("=")
        if k.strip().lower() == "charset":
            return bool(_ASCII_CHARSETS.match(v.strip().strip('"').lower()))
    return True


_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEMasker:
    """Masks a text/event-stream as it arrives, one event at a time.

    The stream is read as its reader reads it (the WHATWG parser): lines end at CRLF, LF or CR, an
    event ends at an empty line, a leading BOM is dropped, a ``data`` line without a colon is an empty
    data line. An event's ``data`` values are joined, masked as JSON when they hold JSON (else by
    patterns), and the event is written back with LF line ends. An event longer than ``limit``
    raises MaskError: it is never passed unmasked.
    """

    def __init__(self, masker: Masker, limit: int):
        self.masker = masker
        self.limit = limit
        self.counts: dict = {}
        self._buf = b""
        self._lines: list = []
        self._size = 0
        self._start = True

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        if self._start:
            if len(self._buf) < 3 and codecs.BOM_UTF8.startswith(self._buf):
                return b""
            if self._buf.startswith(codecs.BOM_UTF8):
                self._buf = self._buf[3:]
            self._start = False
        return self._lines_out(final=False)

    def _lines_out(self, final: bool) -> bytes:
        out, pos, buf = [], 0, self._buf
        while True:
            m = _LINE_END.search(buf, pos)
            if m is None:
                break
            if m.group() == b"\r" and m.end() == len(buf) and not final:
                break  # a CR at the end may be the first half of a CRLF
            line, pos = buf[pos:m.start()], m.end()
            if line:
                self._lines.append(line)
                self._size += len(line) + 1
            elif self._lines:
                out.append(self._event(self._lines) + b"\n\n")
                self._lines, self._size = [], 0
            else:
                out.append(b"\n")
        self._buf = buf[pos:]
        if self._size + len(self._buf) > self.limit:
            raise MaskError(f"a server-sent event is larger than mask_limit ({self.limit} bytes)")
        return b"".join(out)

    def close(self) -> bytes:
        out = self._lines_out(final=True)
        if self._buf:
            self._lines.append(self._buf)
            self._buf = b""
        if self._lines:  # a last event without its blank line
            out += self._event(self._lines) + b"\n"
            self._lines, self._size = [], 0
        return out

    def _event(self, lines: list) -> bytes:
        data, others = [], []
        for ln in lines:
            if ln == b"data" or ln.startswith(b"data:"):
                v = ln[5:]
                data.append(v[1:] if v[:1] == b" " else v)
            else:
                others.append(ln)
        if not data:
            return b"\n".join(lines)
        payload = b"\n".join(data)
        masked, counts = self.masker.mask_sniffed(payload)
        if not counts:
            return b"\n".join(lines)
        for k, n in counts.items():
            add_count(self.counts, k, n)
        return b"\n".join(others + [b"data: " + m for m in masked.split(b"\n")])

    def take_counts(self) -> dict:
        c, self.counts = self.counts, {}
        return c


def mask_body(masker: Masker, kind: str, data: bytes) -> tuple[bytes, dict]:
    """A whole body of ``kind`` (``body_kind``) masked: (bytes, counts), the input itself when
    nothing matched. MaskError: refuse it. An event stream is masked event by event, as it is
    when streamed; every other kind by the masker."""
    if kind == "sse":
        s = SSEMasker(masker, limit=max(len(data), 1))
        return s.feed(data) + s.close(), s.counts
    return masker.mask(kind, data)


class Scrubber:
    """Replaces secrets in a stream with as many ``*`` (so a Content-Length stays true).

    Only a tail that could be the start of a secret is held back until the next piece.
    """

    __slots__ = ("secrets", "cores", "starts", "tail")

    def __init__(self, secrets):
        self.secrets = tuple(sorted(secrets, key=len, reverse=True))  # longest first
        # A secret that holds another ("Bearer TOKEN" holds TOKEN) cannot be in a buffer the other is
        # not in: only these are searched for in every piece (one pass over a download, not two).
        self.cores = tuple(s for s in self.secrets if not any(o != s and o in s for o in self.secrets))
        # The secrets by their first byte (the case and escape spellings of one credential share a
        # few): a piece's end is searched once a first byte, not once a secret.
        by_first: dict = {}
        for s in self.secrets:
            by_first.setdefault(s[:1], []).append(s)
        self.starts = tuple((first, len(group[0]), tuple(group)) for first, group in by_first.items())
        self.tail = b""

    def fresh(self) -> "Scrubber":
        """A scrubber of the same secrets with a tail of its own: one per response, without sorting
        the secrets and finding their cores again (quadratic in their number: 7% of a small GET)."""
        s = Scrubber.__new__(Scrubber)
        s.secrets, s.cores, s.starts, s.tail = self.secrets, self.cores, self.starts, b""
        return s

    def feed(self, data: bytes) -> bytes:
        buf = self.tail + data if self.tail else data
        if not buf:
            return buf
        for c in self.cores:
            if contains(buf, c):
                for s in self.secrets:
                    if s in buf:
                        buf = buf.replace(s, b"*" * len(s))
                break
        hold = 0
        n = len(buf)
        for first, longest, group in self.starts:
            # the longest end of buf that begins a secret: look only where a first byte is, leftmost first
            i = buf.find(first, n - longest + 1 if n >= longest else 0)
            while i != -1 and n - i > hold:
                end = buf[i:]
                if any(s.startswith(end) for s in group):
                    hold = n - i
                    break
                i = buf.find(first, i + 1)
        if hold:
            buf, self.tail = buf[:-hold], buf[-hold:]
        else:
            self.tail = b""
        return buf

    def close(self) -> bytes:
        t, self.tail = self.tail, b""
        return t


def codings(encoding: str | None) -> list[str]:
    """The content codings of a Content-Encoding value (all its headers joined), without identity."""
    if not encoding:
        return []
    return [c.strip().lower() for c in (encoding or "").split(",") if c.strip().lower() not in ("", "identity")]


class Decoder:
    """Undoes a Content-Encoding (gzip, deflate, br) with an output limit (a bomb is refused early)."""

    def __init__(self, encoding: str, limit: int):
        found = codings(encoding)
        enc = found[0] if len(found) == 1 else encoding.strip().lower()
        self._br = None
        self._z = None
        if enc in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self._z = None  # zlib-wrapped as the RFC says, or raw as some servers send: the first byte tells
        elif enc == "br":
            import brotli

            self._br = brotli.Decompressor()
        else:
            raise MaskError(f"cannot decode Content-Encoding {encoding!r} to mask it")
        self._deflate = enc == "deflate"
        self._gzip = self._z is not None
        self.limit = limit
        self.total = 0

    def feed(self, data: bytes) -> bytes:
        if self._br is not None:
            return self._feed_br(self._br, data)
        if self._z is None:
            if not data:
                return b""
            raw = (data[0] & 0x0F) != 8  # a zlib header starts with the deflate method, 8
            self._z = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        out = self._inflate(data)
        # gzip members one after another are one body (RFC 1952 2.2; clients decode them all):
        # a member left unread would be a part never scrubbed nor masked, and one a client reads
        while self._gzip and self._z.eof and self._z.unused_data:
            rest = self._z.unused_data
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += self._inflate(rest)
        return out

    def _inflate(self, data: bytes) -> bytes:
        assert self._z is not None
        try:
            out = self._z.decompress(data, self.limit + 1 - self.total)
        except zlib.error as e:
            raise MaskError(f"the compressed body is corrupt: {e}")
        self.total += len(out)
        if self.total > self.limit or self._z.unconsumed_tail:
            raise MaskError(f"the decoded body is larger than mask_limit ({self.limit} bytes)")
        return out

    def _feed_br(self, br, data: bytes) -> bytes:
        import brotli

        out = []
        try:
            piece = br.process(data, output_buffer_limit=self.limit + 1 - self.total)
            while True:
                self.total += len(piece)
                out.append(piece)
                if self.total > self.limit:
                    raise MaskError(f"the decoded body is larger than mask_limit ({self.limit} bytes)")
                if br.can_accept_more_data():
                    break
                piece = br.process(b"", output_buffer_limit=self.limit + 1 - self.total)
        except brotli.error as e:
            raise MaskError(f"the compressed body is corrupt: {e}")
        return b"".join(out)

    def close(self) -> bytes:
        if self._br is not None:
            if not self._br.is_finished():
                raise MaskError("the compressed body is cut short")
            return b""
        if self._z is None:
            return b""
        try:
            out = self._z.flush()
        except zlib.error as e:
            raise MaskError(f"the compressed body is corrupt: {e}")
        if not self._z.eof:
            raise MaskError("the compressed body is cut short")
        return out


def decodable(encoding: str | None) -> bool:
    """One coding at most (``gzip, gzip`` is not undone twice) and one this module decodes."""
    found = codings(encoding)
    return not found or (len(found) == 1 and found[0] in ("gzip", "x-gzip", "deflate", "br"))
