"""``hoopy audit verify``: the whole chain, then every sealed recording."""
from __future__ import annotations

import json
from pathlib import Path

import attrs

from hoopy.audit.asciicast import sha256_file
from hoopy.audit.chain import Break, verify_rows


@attrs.define
class Result:
    ok: bool
    events: int = 0
    head_seq: int = 0
    head_hash: str = ""
    recordings: int = 0
    problem: str | None = None

    def as_dict(self) -> dict:
        return attrs.asdict(self)

    def __str__(self) -> str:
        if self.ok:
            return (f"ok: {self.events} events, chain intact up to event {self.head_seq} "
                    f"({self.head_hash[:16]}), {self.recordings} sealed recording(s) match their hash")
        return f"broken: {self.problem}"


# Session and approval columns that chained events determine; `hoopy sessions`
# and `hoopy approvals` show these, so they must agree with the chain.
SESSION_FROM_EVENTS = ("identity", "connection", "protocol", "peer", "started_us", "ended_us",
                       "end_reason", "model", "tool_call", "mcp_server", "application_name")
APPROVAL_FROM_EVENTS = ("requester", "session", "operation", "state", "reviewer", "mode", "canonical", "ttl_s")


def _derive(row, sessions: dict, approvals: dict):
    kind, sid = row["kind"], row["session"]
    if kind == "session.start":
        sessions[sid] = {"identity": row["identity"], "connection": row["connection"],
                         "protocol": row["protocol"], "peer": row["peer"], "started_us": row["time_us"],
                         "ended_us": None, "end_reason": None, "model": None, "tool_call": None,
                         "mcp_server": None, "application_name": None, "_seq": row["seq"]}
    elif kind == "session.attribution" and sid in sessions:
        sessions[sid].update({k: v for k, v in json.loads(row["data"]).items() if k in SESSION_FROM_EVENTS})
    elif kind == "session.end" and sid in sessions:
        sessions[sid].update(ended_us=row["time_us"], end_reason=json.loads(row["data"]).get("reason"))
    elif kind == "operation" and row["outcome"] == "held":
        data = json.loads(row["data"])
        approvals[data["approval"]] = {"requester": row["identity"], "session": sid,
                                       "operation": data.get("review", data.get("text")),
                                       "state": "pending",
                                       "reviewer": None, "_seq": row["seq"],
                                       # retry mode: what a later identical operation must match
                                       "mode": data.get("mode"), "canonical": data.get("canonical"),
                                       "ttl_s": data.get("ttl_s")}
    elif kind == "operation" and row["outcome"] == "allowed" and '"approval"' in row["data"]:
        # A retry-mode approval's one run names it: from then on it is used.
        aid = json.loads(row["data"]).get("approval")
        if aid in approvals:
            approvals[aid]["state"] = "used"
    elif kind in ("approval.decided", "approval.expired"):
        data = json.loads(row["data"])
        if data.get("approval") in approvals:
            approvals[data["approval"]].update(state=row["outcome"], reviewer=data.get("reviewer"))


def _compare_table(what, table, verb, rows, derived, columns) -> str | None:
    """Every row the events imply is in the table with the same values, and no other row."""
    rows = {r["id"]: r for r in rows}
    for rid, want in derived.items():
        have = rows.pop(rid, None)
        if have is None:
            return f"{what} {rid} ({verb} by event {want['_seq']}) is missing from the {table} table"
        for col in columns:
            if have.get(col) != want[col]:
                return (f"{what} {rid}: the {table} table says {col}={have.get(col)!r}, "
                        f"its events say {want[col]!r} (edited)")
    if rows:
        return f"{what} {next(iter(rows))} is in the {table} table but no event {verb} it (inserted)"
    return None


def _compare(reader, sessions: dict, approvals: dict) -> str | None:
    return (_compare_table("session", "sessions", "started", reader.sessions(), sessions, SESSION_FROM_EVENTS)
            or _compare_table("approval", "approvals", "held", reader.approvals(), approvals,
                              APPROVAL_FROM_EVENTS))


def verify(reader, recordings_dir: Path) -> Result:
    sealed = []  # (seq, session, file name, sha256)
    sessions: dict = {}
    approvals: dict = {}

    def rows():
        for row in reader.events():
            if row["kind"] == "recording.sealed":
                sealed.append(row)
            _derive(row, sessions, approvals)
            yield row

    try:
        count, last, head = verify_rows(rows())
    except Break as b:
        return Result(False, problem=str(b))
    res = Result(True, count, last, head)
    mismatch = _compare(reader, sessions, approvals)
    if mismatch:
        return Result(False, count, last, head, 0, mismatch)
    for row in sealed:
        data = json.loads(row["data"])
        name = data.get("path")
        if not name or "/" in name or name.startswith("."):
            return Result(False, count, last, head, res.recordings,
                          f"event {row['seq']}: recording path {name!r} is not a file name")
        path = recordings_dir / name
        try:
            digest, size = sha256_file(path)
        except OSError as e:
            return Result(False, count, last, head, res.recordings,
                          f"recording {name} (sealed by event {row['seq']}): missing: {e.strerror or e}")
        if digest != data.get("sha256") or size != data.get("size"):
            return Result(False, count, last, head, res.recordings,
                          f"recording {name} (sealed by event {row['seq']}): changed since it was sealed "
                          f"(sha256 {digest[:16]}..., recorded {str(data.get('sha256'))[:16]}...)")
        res.recordings += 1
    return res
