"""An upstream response's head as the client gets it: hop-by-hop and framing headers that no longer
hold dropped, the credential the gateway injects scrubbed, patterns masked in values; the last
plain head's cleaning kept by the site (``HTTPSite.head_memo``) and given again.
"""
from __future__ import annotations

from hoopy.http import headers as H
from hoopy.http.checks import BODY_DIGESTS
from hoopy.http.redaction import MaskError
from hoopy.policy.masking import MASK

MASK_B = MASK.encode()


def clean_headers(ex, response, must_mask: bool, opaque: bool, scrub):
    """The response headers the client gets ((name, value) pairs) and what patterns masked in them.
    ``scrub``: the site's header scrubber, or None when the head holds no injected credential.
    ``must_mask``: the body goes out rewritten (masked, or decoded to be scrubbed)."""
    site = ex.site
    masker = site.masker
    # Nothing scrubbed nor masked (most heads): what comes out is a function of the header lines,
    # the status, HEAD or not, must_mask, opaque and the masker (its being active), and nothing
    # else: the last such head's cleaning is kept by the site and given again for the same key
    # (tests/test_http_fastpaths.py holds the two to the same headers and record)
    plain = scrub is None and not masker.detectors
    if plain:
        key = (tuple(response.headers.pairs), response.code, ex.method == "HEAD", must_mask, opaque, masker.active)
        memo = site.head_memo
        if memo is not None and memo[0] is masker and memo[1] == key:
            ex.record.response_headers = dict(memo[3])
            return list(memo[2]), {}
    counts: dict = {}
    extra_hop = H.connection_tokens(response.headers.getRawHeaders(b"connection"))

    def clean(values):
        if scrub is not None:
            values = [scrub(v) for v in values]
        if not masker.detectors:
            return values  # (the response's own list when nothing was scrubbed: only read from here on)
        masked = []
        for v in values:  # a pattern's match in a header (a Location's query, a file name) too
            try:
                v, c = masker.mask_text(v)
            except (MaskError, UnicodeError):
                # a value the masker cannot read (structure nested past its bound, bytes it cannot
                # rewrite) may hold what it masks: it goes out whole as the mask, never as it came
                v, c = MASK_B, {"unreadable": 1}
            for k, n in c.items():
                counts[k] = counts.get(k, 0) + n
            masked.append(v)
        return masked

    # A HEAD or 304 answer for a body that may be masked: its Content-Length is the unmasked one
    head_of_masked = (ex.method == "HEAD" or response.code == 304) and masker.active and not opaque
    # Nothing scrubbed nor masked (plain): the headers are read as they came, not copied
    cleaned: list | None = None if plain else []
    out = []
    for n, (name, values) in response.headers.by_lower():  # (read only, as clean() is)
        if cleaned is not None:
            named = scrub(name) if scrub is not None else name
            values = clean(values)
            # A name can hold the credential too (an upstream echoing headers as names): such a header
            # is not forwarded (a scrubbed name is no token), and the record keeps it scrubbed.
            cleaned.append((named, values))
            if named != name:
                continue
        if n in H.HOP_BY_HOP or n in extra_hop:
            continue
        if n == b"content-length":
            if response.code == 204:
                continue  # RFC 9110 8.6: never on a 204 (a client that read it would eat the next answer)
            if not (must_mask or head_of_masked):  # else ours, or none: the unmasked length tells a
                out.append((name, values[0]))      # masked value's size
            continue
        if must_mask and n == b"content-encoding":
            continue
        if (masker.active or must_mask) and n in BODY_DIGESTS:
            continue  # a hash of the unmasked body (Express's ETag is its SHA-1): a guess checked offline
        for v in values:
            out.append((name, v))
    record = ex.record.response_headers = H.for_record(cleaned if cleaned is not None else response.headers.grouped())
    if plain:
        # copies kept: the caller's list goes on to the client's head, the record's dict to the event
        site.head_memo = (masker, key, list(out), dict(record))
    return out, counts
