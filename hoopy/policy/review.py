"""What a reviewer reads and approves: the operation and what it carries.

"UPDATE accounts SET balance = $1" or "POST /v1/refunds" says little about what would
happen: the bind parameters and the request body are part of what is approved. The
approvals row keeps this text, and ``hoopy audit verify`` rebuilds it from the held
event to check the row, so both sides must use this one function.
"""
from __future__ import annotations


def review_text(text: str, detail: dict) -> str:
    params = detail.get("params")
    if params:
        text += "\n-- parameters: " + ", ".join(f"${i} = {_sql_literal(v)}" for i, v in enumerate(params, 1))
    body = detail.get("body")
    if body is not None:
        text += "\n\n" + body
    return text


def _sql_literal(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"
