"""From a recorded event to a notification: which one it is, and its body in each format.

The JSON body is signed (``Hoopy-Signature: t=UNIX_TIME,v1=HEX``, HEX the hex
HMAC-SHA256 of ``"{t}.{body}"`` with the target's secret), so a receiver can
check that hoopy sent it and when. Slack gets an incoming-webhook message: the
operation as a code block, escaped as Slack asks (``&``, ``<``, ``>``; a fence
inside the text cannot end the block), and a link to the approval in the console.
"""
from __future__ import annotations

import hashlib
import hmac
import json

from hoopy.audit.events import iso

MAX_SLACK_OPERATION = 2500  # Slack cuts a section's text at 3000 characters


def notification_for(stored) -> tuple[str, dict] | None:
    """(event name, payload) for a stored event that notifications cover, else None."""
    ev = stored.event
    data = ev.data
    if ev.kind == "operation" and ev.outcome == "held":
        name = "approval.requested"
    elif ev.kind == "approval.decided":
        name = "approval.decided"
    elif ev.kind == "approval.expired":
        name = "approval.expired"
    elif ev.kind == "operation" and ev.outcome == "refused" and not data.get("approval"):
        # (a retry-mode caller asking again while its approval is pending is not news)
        name = "operation.refused"
    else:
        return None
    payload = {
        "event": name, "time": iso(ev.time_us), "seq": stored.seq, "hash": stored.hash,
        "session": ev.session, "identity": ev.identity, "connection": ev.connection,
        "protocol": ev.protocol, "peer": ev.peer,
    }
    if name == "approval.requested":
        payload.update(approval=data.get("approval"), requester=ev.identity, rule=data.get("rule"),
                       operation=data.get("review", data.get("text")), mode=data.get("mode") or "hold",
                       expires=iso(data.get("expires_us")))
    elif name in ("approval.decided", "approval.expired"):
        payload.update(approval=data.get("approval"), state=ev.outcome, requester=data.get("requester") or ev.identity,
                       reviewer=data.get("reviewer"), reason=data.get("reason"), operation=data.get("operation"))
    else:
        payload.update(rule=data.get("rule"), reason=data.get("reason"),
                       operation=data.get("text") or data.get("sql"))
    if data.get("caused_by"):
        payload["caused_by"] = data["caused_by"]
    return name, payload


def audit_failed(gateway: str, error: str, time_us: int) -> dict:
    return {"event": "audit.failed", "time": iso(time_us), "gateway": gateway, "error": error}


def json_body(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Hoopy-Signature`` header value."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, now: int, tolerance: int = 300) -> bool:
    """What a receiver does (and the docs show): recompute, compare in constant time, refuse stale."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    want = signature(secret, t, body).split("v1=", 1)[1]
    return abs(now - t) <= tolerance and hmac.compare_digest(want, parts.get("v1", ""))


def approval_link(console_url: str | None, approval: str | None) -> str | None:
    if not console_url or not approval:
        return None
    return console_url.rstrip("/") + "/approvals/" + approval


def slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code_block(text: str) -> str:
    text = text or ""
    if len(text) > MAX_SLACK_OPERATION:
        text = text[:MAX_SLACK_OPERATION] + f"\n... ({len(text) - MAX_SLACK_OPERATION} more characters)"
    # A fence inside would end the block: break every run of backticks with zero-width spaces.
    text = slack_escape(text).replace("`", "`\u200b")
    return f"```{text}```"


def _inline(text) -> str:
    return "`" + slack_escape(str(text)).replace("`", "'") + "`"


_TITLES = {"approval.requested": "Approval requested", "approval.decided": "Approval decided",
           "approval.expired": "Approval expired", "operation.refused": "Operation refused",
           "audit.failed": "The audit store cannot write: operations are refused"}


def slack_body(payload: dict, console_url: str | None) -> bytes:
    name = payload["event"]
    title = _TITLES[name]
    if name == "audit.failed":
        text = f"*{title}* on gateway {_inline(payload['gateway'])}: {slack_escape(payload['error'])}"
        return json_body({"text": f"{title}: {payload['error']}",
                          "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]})
    who = _inline(payload.get("requester") or payload.get("identity") or "-")
    where = _inline(payload.get("connection") or "-")
    head = f"*{title}*"
    if payload.get("approval"):
        head += f" {_inline(payload['approval'])}"
    if payload.get("state"):
        head += f": *{slack_escape(payload['state'])}*"
    if payload.get("reviewer"):
        head += f" by {_inline(payload['reviewer'])}"
    lines = [head, f"{who} on {where} ({slack_escape(str(payload.get('protocol') or '-'))})"]
    if payload.get("rule"):
        lines.append(f"rule {_inline(payload['rule'])}")
    if payload.get("reason"):
        lines.append(f"reason: {slack_escape(str(payload['reason']))}")
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
              {"type": "section", "text": {"type": "mrkdwn", "text": _code_block(payload.get("operation") or "")}}]
    link = approval_link(console_url, payload.get("approval"))
    if link:
        label = "Review in the hoopy console" if name == "approval.requested" else "Open in the hoopy console"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"<{slack_escape(link)}|{label}>"}})
    fallback = f"{title}: {payload.get('approval') or ''} {payload.get('requester') or payload.get('identity')}"
    return json_body({"text": fallback.strip(), "blocks": blocks})
