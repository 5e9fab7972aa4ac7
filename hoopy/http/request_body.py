"""What is read of a request body before (and while) it goes upstream.

Most bodies stream through untouched (``BodyPipe``). Read whole, up to ``mask_limit``: a body a
masking rule applies to (masked first), a urlencoded form (checked for a method override), the
body of a held request (shown to the reviewer, and exactly it goes upstream), and, where fields are
masked, an untyped body that looks like JSON (checked for GraphQL aliases). Watched as they stream:
a multipart body (method-override fields; a GraphQL ``operations``/``query`` part, held until it
ends) and a JSON body (a ``_method`` key). Every watcher is linear in the bytes it sees, however
they are split.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from urllib.parse import parse_qsl

from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH

from hoopy.http import headers as H
from hoopy.http.bodies import MaskError, body_kind, looks_like_json
from hoopy.http.checks import Refusal
from hoopy.http.graphql import TooLong, documents_in_body, documents_in_form, documents_in_json, renamed_masked_field
from hoopy.http.upload import BodyTooLarge

SNIFF = 512  # first bytes of an untyped request body that tell whether it looks like JSON
REVIEW_BODY_SHOWN = 16 * 1024  # of a held request's body, in the approval a reviewer reads


def check_graphql(documents, field_keys):
    """A GraphQL alias renames a response key: one that renames a masked field would unmask it."""
    try:
        hit = renamed_masked_field(documents, field_keys)
    except TooLong as e:
        raise Refusal(413, f"{e} is not checked for aliases of masked fields, so it is refused")
    if hit is not None:
        raise Refusal(403, f"the GraphQL alias {hit[0]!r} renames the masked field {hit[1]!r}: "
                           "ask for it under its own name", "refused", rule=None, approval=None)


def check_query(query: str | None, field_keys):
    """GET /graphql?query={...}: the query string holds a document too."""
    if query is not None and field_keys:
        check_graphql(documents_in_form(query), field_keys)


class RequestBody:
    """The request body of one exchange: streamed, watched, or read whole (see the module doc)."""

    def __init__(self, exchange):
        self.ex = exchange
        self.kind = None  # body_kind of its Content-Type, once looked at
        self.data = None  # the bytes read whole (masked), as a reviewer saw them / they went upstream
        self.refusal = None  # set when a watcher refused the streaming body
        self.caller_token = b""  # the caller's token (set once known): never in a body that goes on
        self._read = False
        self._body = None

    @property
    def present(self) -> bool:
        h, pipe = self.ex.hdrs, self.ex.pipe
        return b"transfer-encoding" in h or (b"content-length" in h and pipe is not None and pipe.length != 0)

    def absent(self) -> bool:
        """True (and the body read: None, its pipe discarded) when the request has no body at all:
        what ``get`` would find first, without a coroutine (most requests)."""
        if self._read:
            return False
        h = self.ex.hdrs
        if b"content-length" in h or b"transfer-encoding" in h:
            return False
        self._read = True
        self.ex.pipe.discard()
        self._body = None
        # Nothing here needs its exchange again (no body: no watcher, no refusal, nothing read), and
        # the exchange holds this: let go, so a request frees by reference count, not by the
        # garbage collector (a cycle a request)
        self.ex = None
        return True

    async def get(self, whole: bool = False):
        """What goes upstream: None, the BodyPipe (streamed), or bytes (read whole)."""
        if not self._read:
            self._read = True
            self._body = await self._get(whole)
        return self._body

    async def _get(self, whole: bool):
        ex = self.ex
        h, pipe, masker = ex.hdrs, ex.pipe, ex.site.masker
        if not (b"content-length" in h or b"transfer-encoding" in h):
            pipe.discard()
            return None
        ct = h.get(b"content-type", [None])[0]
        kind = self.kind = body_kind(ct)
        media = (ct or b"").split(b";", 1)[0].strip().lower()
        # A form field "_method" makes Rails, Laravel and Symfony run another method than the judged one.
        form = media == b"application/x-www-form-urlencoded"
        field_keys = masker.field_keys
        watches: list[Callable[[bytes], bool]] = []
        if self.caller_token:  # the caller's own token goes nowhere but here, a body included
            watches.append(TokenWatch(self.caller_token, self._token_refused))
        if media.startswith(b"multipart/"):
            watches.append(MultipartOverrideWatch(self._refused))
            if field_keys:  # the GraphQL multipart request spec: the document is in a part
                watches.append(MultipartGraphQLWatch(ct, self._graphql_part, self._refused))
        elif kind == "json":  # Laravel reads _method from a JSON body too
            watches.append(JSONOverrideWatch(self._refused))
        if watches:
            pipe.set_watch(watches[0] if len(watches) == 1 else AnyWatch(watches))
        if self.refusal is not None:
            raise self.refusal
        mask = masker.applies(kind)
        sniffed_json = False
        if field_keys and kind == "other" and not media.startswith(b"multipart/") and not whole:
            # GraphQL servers parse JSON sent with no type, or another: such a body is read whole
            # and checked for aliases; anything else streams as it comes.
            sniffed_json = looks_like_json(await ex.wait(pipe.sniff(SNIFF), cancel=True))
        if not mask and not form and not whole and not sniffed_json:
            pipe.on_progress = ex.progress
            return pipe
        limit = ex.settings.mask_limit
        if b"content-encoding" in h:
            raise Refusal(415, "a request body that must be masked (or a form, checked for a method "
                               "override, or one a reviewer reads) cannot be content-encoded")
        why = ("must be masked" if mask else "is a form, read whole to check for a method override,"
               if form else "needs approval, and is read whole to be shown to the reviewer,"
               if whole else "looks like JSON, read whole to check GraphQL aliases of masked fields,")
        too_big = Refusal(413, f"the request body {why} and is larger than mask_limit ({limit} bytes)")
        if pipe.length is not UNKNOWN_LENGTH and pipe.length > limit:
            raise too_big
        try:
            data = await ex.wait(pipe.collect(limit), cancel=True)
        except BodyTooLarge:
            raise too_big
        if field_keys:
            check_graphql(documents_in_body(data, media.decode("latin-1")), field_keys)
        if form:
            for key, _ in parse_qsl(data.decode("latin-1"), keep_blank_values=True):
                if key.strip().lower() in H.METHOD_OVERRIDE_PARAMS:
                    raise Refusal(400, f"method-override parameters ({key.strip()}) are refused: "
                                       "send the real method")
        if mask:
            try:
                data, counts = await ex.mask(kind, data)
            except MaskError as e:
                raise Refusal(400, f"the request body cannot be masked: {e}")
            await ex.record_redactions("request", counts)
        ex.record.keep("request_body", data)
        self.data = data
        ex.progress()
        return data

    def for_review(self) -> dict:
        """The (masked) body read whole for a reviewer: its text up to REVIEW_BODY_SHOWN, or what it is."""
        data = self.data
        out = {"body_bytes": len(data), "body_sha256": hashlib.sha256(data).hexdigest()}
        if self.kind in (None, "other"):
            ct = (self.ex.hdrs.get(b"content-type", [b"no content type"])[0]).decode("latin-1")[:200]
            out["body"] = f"[{len(data)} bytes of {ct}, sha256 {out['body_sha256']}]"
        else:
            text = data[:REVIEW_BODY_SHOWN].decode("utf-8", "replace")
            if len(data) > REVIEW_BODY_SHOWN:
                text += (f"\n[... {len(data) - REVIEW_BODY_SHOWN} more bytes, {len(data)} in all, "
                         f"sha256 {out['body_sha256']}]")
            out["body"] = text
        return out

    def _graphql_part(self, name: str, data: bytes):
        """A multipart part that may hold a GraphQL document ("operations": JSON; "query": the text)."""
        keys = self.ex.site.masker.field_keys
        if name == "query":
            check_graphql([data.decode("utf-8", "replace")], keys)
        elif looks_like_json(data):
            try:
                check_graphql(documents_in_json(json.loads(data)), keys)
            except ValueError:
                raise Refusal(400, "the multipart part 'operations' is not JSON")

    def _token_refused(self, refusal: Refusal):
        self.ex.token = self.caller_token.decode("latin-1")  # kept out of the record (see Exchange._record)
        self._refused(refusal)

    def _refused(self, refusal: Refusal):
        """A streaming body turned out to be refused (a multipart method override): stop it going on."""
        if self.refusal is None:
            self.refusal = refusal
            if self.ex.pipe is not None:
                self.ex.pipe.abort(Failure(refusal))


class AnyWatch:
    """Several watchers of one stream: True (stop it) as soon as one says so."""

    def __init__(self, watches):
        self.watches = watches

    def __call__(self, data: bytes) -> bool:
        return any(w(data) for w in self.watches)


_OVERRIDE_WORD = re.compile(rb"(?i)(?:_|%5f)method|x-http-method|x-method-override")


class MultipartOverrideWatch:
    """Looks through a streaming multipart body for a method-override field (``name="_method"``).

    Header lines are found at line starts only (each byte is looked at a bounded number of times,
    however the pieces are cut); the unfinished last line is carried to the next piece."""

    LINE = re.compile(rb"(?im)^content-disposition:([^\r\n]*)")
    CARRY = 16384  # of an unfinished line; a part's header line is no longer

    def __init__(self, refuse):
        self.refuse = refuse
        self.tail = b"\n"

    def __call__(self, data: bytes) -> bool:
        buf = self.tail + data
        cut = buf.rfind(b"\n")
        self.tail = buf[cut:][-self.CARRY:] if cut >= 0 else buf[-self.CARRY:]
        for m in self.LINE.finditer(buf):
            if _OVERRIDE_WORD.search(m.group(1)):
                self.refuse(Refusal(400, "method-override fields (_method) in the body are refused: "
                                         "send the real method"))
                return True
        return False


class TokenWatch:
    """The caller's own token in its request body (an agent talked into posting it): refused before
    the piece holding it goes on. A token split over two reads may have sent its first bytes on in
    the request that is then aborted (never completed)."""

    def __init__(self, token: bytes, refuse):
        self.token, self.refuse = token, refuse
        self.tail = b""

    def __call__(self, data: bytes) -> bool:
        n = len(self.token) - 1  # only the edge between two pieces is joined (no copy of a large piece)
        found = self.token in data or self.token in self.tail + data[:n]
        self.tail = (self.tail + data)[-n:] if len(data) < n else data[-n:]
        if found:
            self.refuse(Refusal(400, "the caller's token is in the request body, and would reach the upstream"))
            return True
        return False


class JSONOverrideWatch:
    """A JSON body with a "_method" key (Laravel runs it as that method), or with an ASCII letter
    written as an escape (\\u005fmethod is the same key, and no encoder writes letters so)."""

    PATTERN = re.compile(rb'"_method"|\\u00(?:4[1-9a-fA-F]|5[0-9aAfF]|6[1-9a-fA-F]|7[0-9aA])')
    CARRY = 16

    def __init__(self, refuse):
        self.refuse = refuse
        self.tail = b""

    def __call__(self, data: bytes) -> bool:
        buf = self.tail + data
        self.tail = buf[-self.CARRY:]
        if self.PATTERN.search(buf):
            self.refuse(Refusal(400, "method-override fields (_method) in the body are refused: send the real method"))
            return True
        return False


class MultipartGraphQLWatch:
    """Finds the parts of a streaming multipart body named "operations" or "query" (the GraphQL
    multipart request spec; form posts), holds each (up to MAX_PART) until it ends, and has it
    checked before the piece that ends it goes on. Other parts stream through unheld."""

    MAX_PART = 1 << 20
    NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*?;\s*name\s*=\s*(?:"([^"]*)"|([^;\s]+))')

    def __init__(self, content_type: bytes, check, refuse):
        m = re.search(rb'(?i);\s*boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', content_type or b"")
        self.delim = b"\r\n--" + (m.group(1) or m.group(2)) if m else None
        self.check, self.refuse = check, refuse
        self.buf = bytearray(b"\r\n")  # the first delimiter comes without the CRLF before it
        self.scanned = 0  # where the search for the next delimiter (or blank line) goes on from
        self.state = "seek"  # seek a delimiter | head (a part's headers) | hold (a checked part) | end
        self.name = None

    def __call__(self, data: bytes) -> bool:
        if self.delim is None:
            self.refuse(Refusal(400, "a multipart body without a boundary"))
            return True
        if self.state == "end":
            return False
        self.buf += data
        try:
            self._parse()
        except Refusal as r:
            self.refuse(r)
            return True
        return False

    def _take(self, n: int):
        del self.buf[:n]
        self.scanned = 0

    def _parse(self):
        d = self.delim
        while True:
            if self.state == "end":
                self.buf.clear()
                return
            if self.state in ("seek", "hold"):
                i = self.buf.find(d, self.scanned)
                if i < 0:
                    self.scanned = max(0, len(self.buf) - len(d) + 1)
                    if self.state == "seek":
                        self._take(self.scanned)
                    elif len(self.buf) > self.MAX_PART:
                        raise Refusal(413, f"the multipart part {self.name!r} (a GraphQL document) is larger "
                                           f"than {self.MAX_PART} bytes and cannot be checked")
                    return
                if self.state == "hold":
                    self.check(self.name, bytes(self.buf[:i]))
                self._take(i + len(d))
                self.state = "head"
            if self.state == "head":
                if self.buf[:2] == b"--":
                    self.state = "end"
                    continue
                if len(self.buf) < 2:
                    return  # not yet known whether this is the closing delimiter
                # the part's headers end at a blank line; the CRLF after the delimiter starts them
                j = self.buf.find(b"\r\n\r\n", self.scanned)
                if j < 0:
                    self.scanned = max(0, len(self.buf) - 3)
                    if len(self.buf) > 16384:
                        raise Refusal(400, "a multipart part's headers are longer than 16 KiB")
                    return
                m = self.NAME.search(bytes(self.buf[:j + 2]))
                self.name = (m.group(1) or m.group(2) or b"").decode("latin-1").lower() if m else ""
                self._take(j + 4)
                self.state = "hold" if self.name in ("operations", "query") else "seek"
