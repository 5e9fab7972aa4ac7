"""``hoopy audit verify``: the whole chain, its signatures, every row of every
table, every sealed recording, and (given one) the anchor.

- The chain: every link (hoopy.audit.chain).
- Signatures (with a keyring): every one checks with a key the auditor
  trusts; the last signed event and its age are reported, and events after
  it are unsigned: not broken, but vouched for by nothing yet.
- Tables: each event's ``writes`` holds the session and approval rows its
  transaction wrote; replaying them in chain order gives every column of
  every row, which must be what the tables hold: an edited reason, rule or
  expiry, a row removed or inserted, is found. Events written before hoopy
  chained its row writes (``writes`` NULL) still determine the columns they
  always did (identity, times, state, reviewer ...), which are checked.
- Recordings: each sealed file still has the SHA-256 its sealing event says.
- The anchor (signed heads sent where the gateway cannot rewrite them): each
  must still be in the chain with the same hash; a chain cut short or
  rewritten after a head was anchored no longer matches.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import attrs

from hoopy.audit.asciicast import sha256_file
from hoopy.audit.chain import Break, Walker
from hoopy.audit.events import iso

_TABLE = re.compile(r"^[a-z_]{1,40}$")
BASE_TABLES = ("sessions", "approvals")


@attrs.define
class Result:
    ok: bool
    events: int = 0
    head_seq: int = 0
    head_hash: str = ""
    recordings: int = 0
    problem: str | None = None
    signatures: int = 0  # signatures in the chain
    signatures_checked: bool = False  # checked against a keyring
    keys: dict = attrs.field(factory=dict)  # key id -> signatures made with it
    last_signed_seq: int | None = None
    last_signed_time: str | None = None
    last_signed_age_s: float | None = None
    last_signed_key: str | None = None
    unsigned: int = 0  # events after the last signed one
    rows_checked: int = 0  # session and approval rows compared with the chain
    legacy_rows: int = 0  # of which some columns predate chained row writes
    anchor: dict | None = None
    warnings: list = attrs.field(factory=list)

    def as_dict(self) -> dict:
        return attrs.asdict(self)

    def __str__(self) -> str:
        if not self.ok:
            return f"broken: {self.problem}"
        lines = [f"ok: {self.events} events, chain intact up to event {self.head_seq} "
                 f"({self.head_hash[:16]}), {self.recordings} sealed recording(s) match their hash"]
        if self.events:
            lines.append(self.signature_line())
        if self.anchor is not None:
            a = self.anchor
            lines.append(f"anchor: {a['heads']} signed head(s), {a['matched']} found in the chain"
                         + (f", the newest is event {a['newest_seq']}" if a.get("newest_seq") else ""))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def signature_line(self) -> str:
        if not self.signatures:
            return (f"signatures: none: all {self.events} events are unsigned"
                    + ("" if self.signatures_checked else " (give the gateway's public key with --key)"))
        keys = ", ".join(f"{k} ({n})" for k, n in self.keys.items())
        how = "valid" if self.signatures_checked else "NOT checked (give the public key with --key)"
        age = _age(self.last_signed_age_s)
        return (f"signatures: {self.signatures} {how}, keys {keys}; last signed event {self.last_signed_seq} "
                f"at {self.last_signed_time} ({age} ago); {self.unsigned} event(s) after it unsigned")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


class _Problem(Exception):
    pass


class Tables:
    """The session and approval rows the chain says were written."""

    def __init__(self):
        self.rows: dict[str, dict] = {t: {} for t in BASE_TABLES}
        self.partial: set = set()  # (table, id): rows with history from before writes were chained
        self.origin: dict = {}  # (table, id) -> seq of the first event that wrote it

    def apply(self, row):
        writes = row.get("writes")
        if writes is None:
            self._legacy(row)
            return
        try:
            w = json.loads(writes)
        except ValueError:
            raise _Problem(f"event {row['seq']}: its writes are not JSON")
        if not isinstance(w, dict):
            raise _Problem(f"event {row['seq']}: its writes are not an object")
        expect = w.pop("expect", {}) or {}
        for table, values in w.items():
            if not _TABLE.match(table) or not isinstance(values, dict) or "id" not in values:
                raise _Problem(f"event {row['seq']}: a write names no row ({table!r})")
            rows = self.rows.setdefault(table, {})
            rid = values["id"]
            cond = expect.get(table)
            if cond is not None:
                have = rows.get(rid)
                if have is None or any(have.get(k) != v for k, v in cond.items()
                                       if (table, rid) not in self.partial or k in have):
                    raise _Problem(f"event {row['seq']} updates {table} row {rid} only where "
                                   f"{cond}, but the chain before it says otherwise")
                have.update(values)
            else:
                if rid not in rows:
                    rows[rid] = {}
                    self.origin[(table, rid)] = row["seq"]
                rows[rid].update(values)

    def _legacy(self, row):
        """What events from before chained row writes determine (hoopy 0.1)."""
        kind, sid = row["kind"], row["session"]
        sessions, approvals = self.rows["sessions"], self.rows["approvals"]
        try:
            data = json.loads(row["data"])
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if kind == "session.start":
            sessions[sid] = {"id": sid, "identity": row["identity"], "connection": row["connection"],
                             "protocol": row["protocol"], "peer": row["peer"], "started_us": row["time_us"],
                             "ended_us": None, "end_reason": None, "model": None, "tool_call": None,
                             "mcp_server": None, "application_name": None}
            self.partial.add(("sessions", sid))
            self.origin[("sessions", sid)] = row["seq"]
        elif kind == "session.attribution" and sid in sessions:
            sessions[sid].update({k: v for k, v in data.items()
                                  if k in ("model", "tool_call", "mcp_server", "application_name")})
        elif kind == "session.end" and sid in sessions:
            sessions[sid].update(ended_us=row["time_us"], end_reason=data.get("reason"))
        elif kind == "operation" and row["outcome"] == "held" and data.get("approval"):
            aid = data["approval"]
            approvals[aid] = {"id": aid, "requester": row["identity"], "session": sid,
                              "operation": data.get("review", data.get("text")), "state": "pending",
                              "reviewer": None}
            self.partial.add(("approvals", aid))
            self.origin[("approvals", aid)] = row["seq"]
        elif kind in ("approval.decided", "approval.expired") and data.get("approval") in approvals:
            approvals[data["approval"]].update(state=row["outcome"], reviewer=data.get("reviewer"))

    def compare(self, reader) -> tuple[str | None, int, int]:
        """(the first difference or None, rows compared, of which partial)."""
        checked = partial = 0
        for table in self.rows:
            try:
                have = {r["id"]: r for r in reader.table(table)}
            except ValueError:
                return f"the chain writes rows of a table {table!r} the store does not have", checked, partial
            verb = "started" if table == "sessions" else "wrote"
            what = {"sessions": "session", "approvals": "approval"}.get(table, f"{table} row")
            for rid, want in self.rows[table].items():
                got = have.pop(rid, None)
                if got is None:
                    return (f"{what} {rid} (written by event {self.origin.get((table, rid), '?')}) is missing "
                            f"from the {table} table (deleted)", checked, partial)
                is_partial = (table, rid) in self.partial
                cols = [c for c in want if c in got] if is_partial else list(got)
                for col in cols:
                    if got.get(col) != want.get(col):
                        return (f"{what} {rid}: the {table} table says {col}={got.get(col)!r}, "
                                f"its events say {want.get(col)!r} (edited)", checked, partial)
                checked += 1
                partial += is_partial
            if have:
                rid = next(iter(have))
                return (f"{what} {rid} is in the {table} table but no event {verb} it (inserted)",
                        checked, partial)
        return None, checked, partial


def read_anchor(path) -> list[dict]:
    """Signed heads from an anchor file (the gateway's, or a copy of what syslog or an
    HTTP endpoint received): one JSON object a line, anything before its first ``{``
    (a syslog prefix) ignored; lines that are not heads are skipped."""
    heads = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            i = line.find("{")
            if i < 0:
                continue
            try:
                obj = json.loads(line[i:])
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("hoopy") == "chain-head" and isinstance(obj.get("seq"), int):
                heads.append(obj)
    return heads


def verify(reader, recordings_dir: Path, keyring=None, anchor: list[dict] | None = None,
           now_us: int | None = None, stale_after: float | None = None) -> Result:
    """Check everything; ``keyring`` (hoopy.audit.signing.Keyring) checks every
    signature; ``anchor`` (from read_anchor) is compared with the chain."""
    sealed = []
    tables = Tables()
    walker = Walker()
    res = Result(True)
    res.signatures_checked = bool(keyring)
    anchored = {h["seq"] for h in anchor or ()}
    hashes = {}
    last_signed = None
    try:
        for row in reader.events():
            walker.step(row)
            seq = row["seq"]
            if seq in anchored:
                hashes[seq] = row["hash"]
            sig = row.get("signature")
            if sig is not None:
                if keyring:
                    status, kid = keyring.check(seq, row["hash"], sig)
                    if status == "unknown":
                        raise Break(seq, f"it is signed by key {kid}, which is not among the keys given "
                                         "(a key of another node of yours? add it with --key; otherwise "
                                         "someone signed with a key of their own)")
                    if status != "ok":
                        raise Break(seq, "its signature does not verify with the key that signed it "
                                         "(forged, or the chain was re-linked after it was signed)")
                else:
                    kid = sig.split(":")[1] if sig.count(":") >= 2 else "?"
                res.signatures += 1
                res.keys[kid] = res.keys.get(kid, 0) + 1
                last_signed = (seq, row["time_us"], kid)
            if row["kind"] == "recording.sealed":
                sealed.append(row)
            tables.apply(row)
    except Break as b:
        return attrs.evolve(res, ok=False, problem=str(b), events=walker.count, head_seq=walker.last)
    except _Problem as p:
        return attrs.evolve(res, ok=False, problem=str(p), events=walker.count, head_seq=walker.last)
    res.events, res.head_seq, res.head_hash = walker.count, walker.last, walker.head
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    if last_signed is not None:
        res.last_signed_seq, t, res.last_signed_key = last_signed
        res.last_signed_time = iso(t)
        res.last_signed_age_s = round((now_us - t) / 1e6, 3)
        res.unsigned = res.head_seq - res.last_signed_seq
        if stale_after is not None and res.last_signed_age_s > stale_after:
            res.warnings.append(
                f"the last signed event is {_age(res.last_signed_age_s)} old: a running gateway signs at "
                "least every minute, so either it was stopped since, or signed events were removed from "
                "the end (compare with the anchor: --anchor)")
    else:
        res.unsigned = res.events
        if keyring and res.events:
            res.ok = False
            res.problem = (f"no event is signed by the key(s) given: all {res.events} events are unsigned "
                           "(signatures removed, or a gateway that does not sign)")
            return res
    problem, res.rows_checked, res.legacy_rows = tables.compare(reader)
    if problem:
        res.ok, res.problem = False, problem
        return res
    if anchor is not None:
        problem = _compare_anchor(res, anchor, hashes, keyring)
        if problem:
            res.ok, res.problem = False, problem
            return res
    for row in sealed:
        data = json.loads(row["data"])
        name = data.get("path")
        if not name or "/" in name or name.startswith("."):
            res.ok, res.problem = False, f"event {row['seq']}: recording path {name!r} is not a file name"
            return res
        path = recordings_dir / name
        try:
            digest, size = sha256_file(path)
        except OSError as e:
            res.ok, res.problem = False, (f"recording {name} (sealed by event {row['seq']}): missing: "
                                          f"{e.strerror or e}")
            return res
        if digest != data.get("sha256") or size != data.get("size"):
            res.ok, res.problem = False, (
                f"recording {name} (sealed by event {row['seq']}): changed since it was sealed "
                f"(sha256 {digest[:16]}..., recorded {str(data.get('sha256'))[:16]}...)")
            return res
        res.recordings += 1
    return res


def _compare_anchor(res: Result, heads: list[dict], hashes: dict, keyring) -> str | None:
    matched = 0
    newest = None
    for h in sorted(heads, key=lambda h: h["seq"]):
        seq, want = h["seq"], h.get("hash")
        if keyring:
            status, kid = keyring.check(seq, str(want), str(h.get("signature")))
            if status != "ok":
                return (f"the anchor's head for event {seq} ({h.get('time')}) has a signature that "
                        f"{'is by key ' + str(kid) + ', not given' if status == 'unknown' else 'does not verify'}")
        if seq > res.head_seq:
            return (f"the anchor holds event {seq}, signed at {h.get('time')} by {h.get('gateway')}, but the "
                    f"chain ends at event {res.head_seq}: events were removed from the end")
        if hashes.get(seq) != want:
            return (f"event {seq}: the anchor says its hash was {str(want)[:16]}... (signed at {h.get('time')}), "
                    f"the chain has {str(hashes.get(seq))[:16]}...: the chain was rewritten after it was anchored")
        matched += 1
        newest = seq
    res.anchor = {"heads": len(heads), "matched": matched, "newest_seq": newest}
    return None
