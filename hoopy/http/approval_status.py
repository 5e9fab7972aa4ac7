"""Where a caller polls its own approval: the gateway's status path, ``/.hoopy/approvals/ID``.

A request held for a reviewer in retry mode (``Prefer: respond-async``) is answered 202 with this
path; the caller reads it with its own token (``approval_status``, run by the exchange, exchange.py,
instead of forwarding). The path is the gateway's own: it is never forwarded upstream.
"""
from __future__ import annotations

from hoopy.audit.events import iso
from hoopy.http.checks import Refusal
from hoopy.session import Session, StoreError

# Where a caller polls its own approval (retry mode, Prefer: respond-async): on this listener, with
# its own token. Never forwarded upstream.
STATUS_PREFIX = "/.hoopy/approvals/"
STATUS_PREFIX_B = STATUS_PREFIX.encode()


async def approval_status(ex, session: Session, approval_id: str):
    """GET /.hoopy/approvals/ID: the caller's own approval (its token), to poll after a 202."""
    ex.record.outcome = "status"
    if ex.method_b not in (b"GET", b"HEAD"):
        return ex.reply(405, {"error": "only GET reads an approval's status"}, [(b"Allow", b"GET, HEAD")])
    try:
        row = await ex.wait(session.approval_status(approval_id))
    except StoreError:
        raise Refusal(503, "the audit store cannot be read", "error")
    if row is None:
        return ex.reply(404, {"error": f"no approval {approval_id} of yours", "approval": approval_id})
    body = {k: v for k, v in row.items() if not k.endswith("_us")}
    for k in ("created_us", "expires_us", "decided_us", "usable_until_us"):
        if row.get(k) is not None:
            body[k[:-3]] = iso(row[k])
    if body["status"] == "approved":
        body["message"] = "approved: send the identical request again (it runs once)"
    ex.reply(200, body)
