"""``[[notify]]`` blocks: where notifications go, which, in what format."""
from __future__ import annotations

from urllib.parse import urlsplit

import attrs

# The events a target may ask for (INTERFACE.md), each the name receivers see.
EVENTS = ("approval.requested", "approval.decided", "approval.expired", "operation.refused", "audit.failed")
FORMATS = ("json", "slack")


@attrs.frozen
class NotifyTarget:
    index: int  # notify[N] in the file: how events and logs name it (the URL may be a secret)
    url: str = attrs.field(repr=False)
    secret: str | None = attrs.field(repr=False)
    events: tuple[str, ...]
    format: str
    url_ref: str  # what the file says: the URL itself, or its env:/file: reference

    @property
    def name(self) -> str:
        return f"notify[{self.index}]"

    @property
    def host(self) -> str:
        """Where it goes, for the record: scheme and host only (a Slack URL's path is its secret)."""
        u = urlsplit(self.url)
        return f"{u.scheme}://{u.hostname}" + (f":{u.port}" if u.port else "")


def parse_target(t, index: int) -> NotifyTarget | None:
    """One [[notify]] table (a hoopy.config.Table); problems are recorded on it."""
    raw = t.string("url", required=True)
    url = None
    if raw is not None:
        if raw.startswith(("env:", "file:")):
            s = t.secret("url")
            url = s.value if s is not None else None
        else:
            url = raw
        if url is not None:
            try:
                u = urlsplit(url)
                ok = u.scheme in ("http", "https") and bool(u.hostname)
            except ValueError:
                ok = False
            if not ok:
                t.problem("url", "must be an http:// or https:// URL (or an env:/file: reference to one)")
                url = None
    fmt = t.string("format", default="json", choices=FORMATS)
    secret = t.secret("secret")
    if fmt == "json" and not t.has("secret"):
        # A receiver can only trust what is signed; an unsigned webhook is anyone's.
        t.problem("secret", "is required for format = \"json\" (it signs each post: Hoopy-Signature)")
    events = t.strings("events", default=EVENTS)
    for i, e in enumerate(events):
        if e not in EVENTS:
            t.problem(f"events[{i}]", f"{e!r} is not one of {', '.join(EVENTS)}")
    if not events:
        t.problem("events", "names no event")
    if url is None or fmt is None or (fmt == "json" and secret is None):
        return None
    return NotifyTarget(index, url, secret.value if secret else None,
                        tuple(e for e in events if e in EVENTS), fmt, raw)
