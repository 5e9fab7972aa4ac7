"""What a reviewer reads and approves: the operation and what it carries.

"UPDATE accounts SET balance = $1" or "POST /v1/refunds" says little about what would
happen: the bind parameters and the request body are part of what is approved. The
approvals row keeps this text, and the held event records it too (``review``) so that
``hoopy audit verify`` can check the row.

The text is the caller's: control characters (a terminal escape that redraws the line a
reviewer reads, a NUL a PostgreSQL text column refuses), bidirectional overrides (which
reorder what is displayed) and other invisible characters are shown escaped, never acted
on (hoopy.text.escape, the one function every command shows untrusted text with).
"""
from __future__ import annotations

from hoopy.text import escape


def review_text(text: str, detail: dict) -> str:
    params = detail.get("params")
    if params:
        text += "\n-- parameters: " + ", ".join(f"${i} = {_sql_literal(v)}" for i, v in enumerate(params, 1))
    for prepared in detail.get("prepared") or ():
        # EXECUTE of a prepared name: the statement the name holds is what runs.
        text += "\n-- prepared as: " + _one_line(prepared)
    body = detail.get("body")
    if body is not None:
        text += "\n\n" + body
    parts = detail.get("parts")
    if parts:
        # A line of several commands: each part with what judged it, so the reviewer approves
        # what will run, not only the line as typed.
        # One line per part: a line break inside a part (a quoted argument) is shown escaped, or
        # it could draw more parts, "allowed", in the list the reviewer reads.
        text += "\n-- parts:" + "".join(
            f"\n   {_one_line(p['unit'])}  ({p['outcome']}: {_one_line(p.get('rule') or p.get('reason') or '-')})"
            for p in parts)
    for h in detail.get("heredocs") or ():
        text += f"\n-- here-document: {h['bytes']} bytes, sha256 {h['sha256']}"
        if h.get("writes"):
            text += " -> " + ", ".join(h["writes"])
    return escape(text, keep_newlines=True)


def _one_line(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("\n", "\\n")


def escape_controls(text: str) -> str:
    """Control characters, bidirectional overrides and other invisible characters shown as
    ``\\x1b``, ``\\u202e``; tab and newline kept (hoopy.text.escape)."""
    return escape(text, keep_newlines=True)


def _sql_literal(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"
