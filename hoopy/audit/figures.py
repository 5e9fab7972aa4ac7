"""The figures of an evidence archive: what ``report.html`` and ``controls.md`` both show.

One pass over the period's events (and the identities, grants and verification result
exported beside them) gives every count, table and example event id per NIST SP 800-53
control. Both renderers (hoopy.audit.report) only lay these figures out, so the page and
the markdown can never disagree, and every count can be recomputed from ``events.jsonl``:

- sessions: ``session.start`` events, per identity;
- operations: ``operation`` events, by outcome (allowed, refused, held);
- refusals by rule: refused ``operation`` events by the rule that refused them (or, with
  no rule, why: deny by default, not judgeable, refused by the protocol ...);
- approvals: ``approval.decided`` events by reviewer and outcome, the time from the
  ``held`` event (or the approval row) to the decision; ``approval.expired`` events;
- redactions: ``redaction`` events, values masked per rule (a column, a detector, a field);
- failed logins: ``auth.failed`` events (a ``suppressed`` one counts its ``failures``);
- chain and signatures: the export-time verification, and the signed events of the period.

The result is plain JSON-able data; nothing here is escaped (the renderers escape).
"""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from hoopy.audit.events import iso

EXAMPLES = 5  # example event ids per figure
BUCKETS = ((1, "1 second"), (10, "10 seconds"), (60, "1 minute"), (300, "5 minutes"), (900, "15 minutes"),
           (3600, "1 hour"), (6 * 3600, "6 hours"), (86400, "1 day"), (7 * 86400, "1 week"), (30 * 86400, "30 days"))
MAX_BUCKETS = 60
OUTCOMES = ("allowed", "refused", "held")

CONTROL_NAMES = {
    "AC-2": "Account management",
    "AC-3": "Access enforcement",
    "AC-5": "Separation of duties",
    "AC-6": "Least privilege",
    "AU-2": "Event logging",
    "AU-3": "Content of audit records",
    "AU-6": "Audit record review, analysis and reporting",
    "AU-9": "Protection of audit information",
    "AU-10": "Non-repudiation",
    "AU-12": "Audit record generation",
    "SC-7": "Boundary protection",
    "SC-8": "Transmission confidentiality and integrity",
}


def refusal_rule(data: dict) -> str:
    """What refused an operation: its rule, or (deny by default and the like) why."""
    rule = data.get("rule")
    if rule:
        return str(rule)
    reason = str(data.get("reason") or "")
    for start, label in (("no grant allows", "(no grant: deny by default)"),
                         ("cannot judge", "(could not be judged before it ran)"),
                         ("not covered by the calling identity", "(not covered by the calling identity's grants)"),
                         ("refused: the audit store", "(the audit store could not record it)"),
                         ("refused:", "(refused by the protocol gateway)"),
                         ("nothing to judge", "(nothing to judge)")):
        if reason.startswith(start):
            return label
    if reason.startswith("approval") or data.get("approval"):
        return "(approval still pending, denied or expired)"
    return "(other)"


def redaction_rules(data: dict) -> dict:
    """Values masked by rule, from a ``redaction`` event's data (each protocol says it its way)."""
    out: Counter = Counter()
    cols = data.get("columns")
    if isinstance(cols, dict):
        for k, n in cols.items():
            out[f"column {k}"] += _int(n)
    for key in ("patterns", "counts", "detectors"):
        d = data.get(key)
        if isinstance(d, dict):
            for k, n in d.items():
                out[str(k)] += _int(n)
    return dict(out)


def _int(n) -> int:
    try:
        return max(0, int(n))
    except (TypeError, ValueError):
        return 0


def _push(lst: list, seq):
    if len(lst) < EXAMPLES:
        lst.append(seq)


def _ex():
    return defaultdict(list)


def compute(events: list, identities: list, policy: dict, verification: dict, since_us=None, until_us=None,
            gateway: str | None = None, approvals: Sequence = (), exported_us: int | None = None) -> dict:
    """The figures of the period. ``events``: as in events.jsonl (``seq``, ``time_us``, ``kind``,
    ``outcome``, ``identity``, ``connection``, ``data`` a dict ...); ``identities``: identities.json;
    ``policy``: grants.json; ``verification``: verification.json; ``approvals``: approval rows."""
    kinds: Counter = Counter()
    sessions_by_identity: dict = defaultdict(lambda: {"count": 0, "protocols": Counter(), "examples": []})
    sessions_by_connection: Counter = Counter()
    ops = {o: 0 for o in OUTCOMES}
    ops_ex = _ex()
    ops_by_identity: dict = defaultdict(lambda: {o: 0 for o in OUTCOMES})
    refusals: dict = defaultdict(lambda: {"count": 0, "examples": []})
    refused_examples: list = []  # (seq, identity, connection, text, rule) of a few refusals
    held_at: dict = {}  # approval id -> time_us of its held event
    decided: list = []
    expired: dict[str, Any] = {"count": 0, "examples": []}
    redaction: dict[str, Any] = {"events": 0, "values": 0, "examples": []}
    red_rules: dict = defaultdict(lambda: {"values": 0, "events": 0, "examples": []})
    failed: dict[str, Any] = {"logins": 0, "events": 0, "suppressed_events": 0, "examples": []}
    failed_by_conn: dict = defaultdict(lambda: {"count": 0, "examples": []})
    failed_users: Counter = Counter()
    sealed: dict[str, Any] = {"count": 0, "examples": []}
    signed: dict[str, Any] = {"count": 0, "examples": []}
    au3 = {"events": 0, "with_time": 0, "with_gateway": 0, "with_outcome": 0,
           "operations": 0, "operations_with_identity": 0, "operations_with_session": 0,
           "operations_with_peer": 0}
    times: list[int] = []
    all_ex: list = []
    for e in events:
        seq, kind, outcome = e.get("seq"), str(e.get("kind") or ""), e.get("outcome")
        data = e.get("data") if isinstance(e.get("data"), dict) else {}
        t = e.get("time_us")
        kinds[kind] += 1
        _push(all_ex, seq)
        if isinstance(t, int):
            times.append(t)
        au3["events"] += 1
        au3["with_time"] += t is not None
        au3["with_gateway"] += bool(e.get("gateway"))
        au3["with_outcome"] += outcome is not None
        if e.get("signature"):
            signed["count"] += 1
            _push(signed["examples"], seq)
        ident = e.get("identity") or "-"
        if kind == "session.start":
            s = sessions_by_identity[ident]
            s["count"] += 1
            s["protocols"][str(e.get("protocol") or "-")] += 1
            _push(s["examples"], seq)
            sessions_by_connection[str(e.get("connection") or "-")] += 1
        elif kind == "operation":
            au3["operations"] += 1
            au3["operations_with_identity"] += bool(e.get("identity"))
            au3["operations_with_session"] += bool(e.get("session"))
            au3["operations_with_peer"] += bool(e.get("peer"))
            if outcome in ops:
                ops[outcome] += 1
                _push(ops_ex[outcome], seq)
                ops_by_identity[ident][outcome] += 1
            if outcome == "refused":
                r = refusals[refusal_rule(data)]
                r["count"] += 1
                _push(r["examples"], seq)
                if len(refused_examples) < 10:
                    refused_examples.append({"seq": seq, "time": iso(t), "identity": e.get("identity"),
                                             "connection": e.get("connection"),
                                             "text": str(data.get("text") or "")[:300],
                                             "rule": refusal_rule(data), "reason": str(data.get("reason") or "")[:300]})
            elif outcome == "held" and data.get("approval"):
                held_at[str(data["approval"])] = t
        elif kind == "approval.decided":
            decided.append((seq, t, data, outcome))
        elif kind == "approval.expired":
            expired["count"] += 1
            _push(expired["examples"], seq)
        elif kind == "redaction":
            redaction["events"] += 1
            _push(redaction["examples"], seq)
            for rule, n in redaction_rules(data).items():
                r = red_rules[rule]
                r["values"] += n
                r["events"] += 1
                _push(r["examples"], seq)
                redaction["values"] += n
        elif kind == "auth.failed":
            n = _int(data.get("failures")) if outcome == "suppressed" else 1
            failed["logins"] += n
            failed["events"] += 1
            failed["suppressed_events"] += outcome == "suppressed"
            _push(failed["examples"], seq)
            c = failed_by_conn[str(e.get("connection") or "-")]
            c["count"] += n
            _push(c["examples"], seq)
            if outcome == "suppressed" and isinstance(data.get("users"), dict):
                for u, k in data["users"].items():
                    failed_users[str(u)[:256]] += _int(k)
            else:
                failed_users[str(data.get("user") or "-")[:256]] += 1
        elif kind == "recording.sealed":
            sealed["count"] += 1
            _push(sealed["examples"], seq)

    # Approvals: by reviewer, with the time from the request to the decision.
    created = {str(a.get("id")): a.get("created_us") for a in approvals or ()}
    by_reviewer: dict = defaultdict(lambda: {"approved": 0, "denied": 0, "waits": [], "examples": []})
    self_decided = []
    for seq, t, data, outcome in decided:
        reviewer = str(data.get("reviewer") or "-")
        r = by_reviewer[reviewer]
        if outcome in ("approved", "denied"):
            r[outcome] += 1
        _push(r["examples"], seq)
        start = held_at.get(str(data.get("approval"))) or created.get(str(data.get("approval")))
        if isinstance(start, int) and isinstance(t, int):
            r["waits"].append(max(0.0, (t - start) / 1e6))
        if data.get("requester") and data.get("requester") == data.get("reviewer"):
            self_decided.append(seq)
    reviewers = []
    for name, r in sorted(by_reviewer.items()):
        w = r.pop("waits")
        reviewers.append({"reviewer": name, **r, "decisions": r["approved"] + r["denied"],
                          "median_s": statistics.median(w) if w else None, "max_s": max(w) if w else None,
                          "timed": len(w)})
    approvals_fig = {
        "requested": sum(1 for _ in held_at), "held_events": ops["held"],
        "decided": len(decided), "approved": sum(r["approved"] for r in reviewers),
        "denied": sum(r["denied"] for r in reviewers), "expired": expired["count"],
        "expired_examples": expired["examples"], "by_reviewer": reviewers,
        "self_decided": len(self_decided), "self_decided_examples": self_decided[:EXAMPLES],
    }

    first = min(times) if times else None
    last = max(times) if times else None
    activity = _activity(events, since_us if since_us is not None else first,
                         until_us if until_us is not None else last)

    # What was in force: identities, grants, connections (from identities.json and grants.json).
    ident_fig = {"declared": len(identities), "agents": sum(1 for i in identities if i.get("kind") == "agent"),
                 "humans": sum(1 for i in identities if i.get("kind") == "human"),
                 "reviewers": sorted(i["name"] for i in identities if "reviewer" in (i.get("roles") or ())),
                 "auditors": sorted(i["name"] for i in identities if "auditor" in (i.get("roles") or ())),
                 "with_token": sum(1 for i in identities if i.get("has_token")),
                 "with_ssh_keys": sum(1 for i in identities if i.get("ssh_keys"))}
    grants = policy.get("grants") or []
    grant_fig = {"grants": len(grants), "allow_rules": sum(len(g.get("allow") or ()) for g in grants),
                 "approve_rules": sum(len(g.get("approve") or ()) for g in grants),
                 "deny_rules": sum(len(g.get("deny") or ()) for g in grants),
                 "expiring": sum(1 for g in grants if g.get("expires")),
                 "masking_rules": len(policy.get("masking") or ())}
    connections = []
    for name, c in sorted((policy.get("connections") or {}).items()):
        s = c.get("settings") if isinstance(c.get("settings"), dict) else {}
        connections.append({"name": name, "type": c.get("type"), "listen": c.get("listen"),
                            "upstream": c.get("upstream"), "sessions": sessions_by_connection.get(name, 0),
                            "tls": _tls(c.get("type"), c.get("upstream"), s)})

    v = verification or {}
    chain = {"ok": bool(v.get("ok")), "problem": v.get("problem"), "events": v.get("events"),
             "head_seq": v.get("head_seq"), "head_hash": v.get("head_hash"),
             "signatures": v.get("signatures"), "signatures_checked": bool(v.get("signatures_checked")),
             "keys": dict(v.get("keys") or {}), "last_signed_seq": v.get("last_signed_seq"),
             "last_signed_time": v.get("last_signed_time"), "unsigned": v.get("unsigned"),
             "recordings": v.get("recordings"), "rows_checked": v.get("rows_checked"),
             "signed_in_period": signed["count"], "signed_examples": signed["examples"]}

    fig = {
        "gateway": gateway, "since": iso(since_us), "until": iso(until_us),
        "exported": iso(exported_us), "first_event": iso(first), "last_event": iso(last),
        "events": {"total": len(events), "kinds": dict(sorted(kinds.items())), "examples": all_ex},
        "sessions": {"total": sum(s["count"] for s in sessions_by_identity.values()),
                     "by_identity": [{"identity": k, "count": s["count"], "protocols": dict(s["protocols"]),
                                      "examples": s["examples"]}
                                     for k, s in sorted(sessions_by_identity.items())]},
        "operations": {**ops, "examples": {o: ops_ex[o] for o in OUTCOMES},
                       "by_identity": [{"identity": k, **v} for k, v in sorted(ops_by_identity.items())]},
        "refusals_by_rule": sorted(({"rule": k, **r} for k, r in refusals.items()),
                                   key=lambda r: (-r["count"], r["rule"])),
        "refused_examples": refused_examples,
        "approvals": approvals_fig,
        "redactions": {**redaction, "by_rule": sorted(({"rule": k, **r} for k, r in red_rules.items()),
                                                      key=lambda r: (-r["values"], r["rule"]))},
        "failed_logins": {**failed,
                          "by_connection": [{"connection": k, **c} for k, c in sorted(failed_by_conn.items())],
                          "by_user": [{"user": u, "count": n} for u, n in failed_users.most_common(10)]},
        "recordings": sealed,
        "chain": chain,
        "activity": activity,
        "identities": ident_fig,
        "grants": grant_fig,
        "connections": connections,
        "au3": au3,
    }
    fig["controls"] = controls(fig)
    return fig


def _tls(ctype, upstream, s: dict) -> dict:
    """What the connection's settings say about encryption, towards callers and the upstream."""
    def on(key):
        return bool(s.get(key)) and s.get(key) not in ("None",)

    if ctype == "postgres":
        return {"callers": "TLS offered" if on("tls_cert") else "no TLS offered",
                "upstream": f"upstream_tls = {s.get('upstream_tls') or 'prefer'}"}
    if ctype == "http":
        return {"callers": "https" if on("tls_cert") else "plain http",
                "upstream": "https" if str(upstream or "").startswith("https:") else "plain http"}
    if ctype == "ssh":
        return {"callers": "SSH (always encrypted)", "upstream": "SSH, host key pinned (upstream_known_hosts)"}
    if ctype == "mcp":
        up = str(upstream or s.get("upstream") or "")
        return {"callers": "https" if on("tls_cert") else "plain http",
                "upstream": "https" if up.startswith("https:") else ("stdio child" if not up else "plain http")}
    return {"callers": "-", "upstream": "-"}


def _activity(events, start_us, end_us) -> dict:
    """Operations by outcome, and sessions started, per time bucket over the period."""
    if start_us is None or end_us is None:
        return {"bucket_s": 0, "bucket": "", "start": None, "end": None, "buckets": []}
    span = max(1, (end_us - start_us) / 1e6)
    size, label = next(((s, n) for s, n in BUCKETS if span / s <= MAX_BUCKETS), BUCKETS[-1])
    while span / size > MAX_BUCKETS:  # a period of years: wider than the widest named bucket
        size *= 2
        label = f"{size // 86400} days"
    base = start_us - start_us % (size * 1_000_000)
    n = int((end_us - base) // (size * 1_000_000)) + 1
    buckets: list[dict[str, Any]] = [{"start": iso(base + i * size * 1_000_000), "allowed": 0, "refused": 0, "held": 0, "sessions": 0}
               for i in range(n)]
    for e in events:
        t = e.get("time_us")
        if not isinstance(t, int) or t < base:
            continue
        i = int((t - base) // (size * 1_000_000))
        if i >= n:
            continue
        if e.get("kind") == "operation" and e.get("outcome") in OUTCOMES:
            buckets[i][e["outcome"]] += 1
        elif e.get("kind") == "session.start":
            buckets[i]["sessions"] += 1
    return {"bucket_s": size, "bucket": label, "start": iso(base), "end": iso(end_us), "buckets": buckets}


def _ev(label, count, key, examples=(), note=None) -> dict:
    return {"label": label, "count": count, "key": key, "examples": list(examples)[:EXAMPLES], "note": note}


def _dur(s) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def controls(f: dict) -> list:
    """Per control: what the gateway enforced, and this period's evidence (counts, example ids)."""
    ops, ap, red, fl, ch = f["operations"], f["approvals"], f["redactions"], f["failed_logins"], f["chain"]
    idf, gf, au3 = f["identities"], f["grants"], f["au3"]
    sess = f["sessions"]
    c = []

    def add(cid, enforced, evidence, files):
        c.append({"id": cid, "name": CONTROL_NAMES[cid], "enforced": enforced, "evidence": evidence, "files": files})

    add("AC-2", "Every caller is a named identity (agent or human) with its own token or SSH key; nobody "
                "connects anonymously or with the upstream's credential, and every session names its identity.",
        [_ev(f"identities in force (agents {idf['agents']}, humans {idf['humans']}; reviewers "
             f"{', '.join(idf['reviewers']) or 'none'})", idf["declared"],
             "identities.declared"),
         _ev("sessions, each naming its identity", sess["total"], "sessions.total",
             [x for s in sess["by_identity"] for x in s["examples"]]),
         *[_ev(f"sessions of {s['identity']}", s["count"], f"sessions.identity.{s['identity']}", s["examples"])
           for s in sess["by_identity"]],
         _ev("failed logins (unknown identity or bad credential), on the record", fl["logins"],
             "failed_logins.logins", fl["examples"])],
        ["identities.json", "sessions.jsonl", "events.jsonl"])
    add("AC-3", "Every operation (SQL statement, shell command, HTTP request, MCP tool call) was judged by the "
                "policy before it reached the target, and its event was durable before it ran; deny by default.",
        [_ev("operations allowed", ops["allowed"], "operations.allowed", ops["examples"]["allowed"]),
         _ev("operations refused (never reached the target)", ops["refused"], "operations.refused",
             ops["examples"]["refused"]),
         _ev("operations held for a reviewer", ops["held"], "operations.held", ops["examples"]["held"]),
         *[_ev(f"refused by {r['rule']}", r["count"], f"refusals.{r['rule']}", r["examples"])
           for r in f["refusals_by_rule"]]],
        ["events.jsonl", "grants.json"])
    add("AC-5", "A held operation runs only after a reviewer approves it; the requester (and any identity "
                "that caused it) can never decide its own request.",
        [_ev("approvals decided", ap["decided"], "approvals.decided"),
         _ev("approved", ap["approved"], "approvals.approved"),
         _ev("denied", ap["denied"], "approvals.denied"),
         _ev("expired undecided (refused)", ap["expired"], "approvals.expired", ap["expired_examples"]),
         *[_ev(f"decided by {r['reviewer']} ({r['approved']} approved, {r['denied']} denied; time to "
               f"decision median {_dur(r['median_s'])}, longest {_dur(r['max_s'])})", r["decisions"],
               f"approvals.reviewer.{r['reviewer']}", r["examples"]) for r in ap["by_reviewer"]],
         _ev("decisions by the requester itself", ap["self_decided"], "approvals.self_decided",
             ap["self_decided_examples"])],
        ["approvals.jsonl", "events.jsonl", "identities.json"])
    add("AC-6", "Grants are deny-by-default allow, approve and deny rules per identity and connection, "
                "optionally expiring; anything no rule allows is refused; masking keeps sensitive values "
                "from callers.",
        [_ev("grants in force", gf["grants"], "grants.grants"),
         _ev("allow rules", gf["allow_rules"], "grants.allow_rules"),
         _ev("approve rules (held for a reviewer)", gf["approve_rules"], "grants.approve_rules"),
         _ev("deny rules", gf["deny_rules"], "grants.deny_rules"),
         _ev("grants with an expiry", gf["expiring"], "grants.expiring"),
         _ev("masking rules", gf["masking_rules"], "grants.masking_rules"),
         _ev("values masked before they reached a caller", red["values"], "redactions.values", red["examples"]),
         *[_ev(f"masked by {r['rule']} (in {r['events']} events)", r["values"], f"redactions.{r['rule']}",
               r["examples"]) for r in red["by_rule"]]],
        ["grants.json", "events.jsonl"])
    add("AU-2", "Session starts and ends, each operation and its outcome, approvals, redactions, failed "
                "logins and sealed recordings are logged as events, by the gateway.",
        [_ev("events in the period", f["events"]["total"], "events.total", f["events"]["examples"]),
         *[_ev(f"{k} events", n, f"events.kind.{k}") for k, n in f["events"]["kinds"].items()]],
        ["events.jsonl"])
    add("AU-3", "Each event records what (kind, data), when (time), where (gateway, connection, peer), "
                "who (identity, session) and the outcome.",
        [_ev("events with a time", au3["with_time"], "au3.with_time"),
         _ev("events naming the gateway node", au3["with_gateway"], "au3.with_gateway"),
         _ev("events with an outcome", au3["with_outcome"], "au3.with_outcome"),
         _ev("operations naming their identity", au3["operations_with_identity"], "au3.operations_with_identity"),
         _ev("operations naming their session", au3["operations_with_session"], "au3.operations_with_session"),
         _ev("operations naming the caller's address", au3["operations_with_peer"], "au3.operations_with_peer")],
        ["events.jsonl", "sessions.jsonl"])
    add("AU-6", "The record is readable for review: this report, JSON lines of events, sessions and "
                "approvals, replayable terminal recordings; hoopy events and the web console filter it.",
        [_ev("sessions to review", sess["total"], "sessions.total_review"),
         _ev("refusals to review", ops["refused"], "operations.refused_review", ops["examples"]["refused"]),
         _ev("failed logins to review", fl["logins"], "failed_logins.review", fl["examples"]),
         _ev("terminal recordings (asciinema play)", f["recordings"]["count"], "recordings.sealed",
             f["recordings"]["examples"])],
        ["report.html", "events.jsonl", "sessions.jsonl", "approvals.jsonl", "recordings/"])
    add("AU-9", "Events are hash-chained; each node signs the chain head with its Ed25519 key; every row of "
                "the sessions and approvals tables is replayed from the chain; verified at export.",
        [_ev("events in the chain, intact at export" if ch["ok"]
             else f"events in the chain, BROKEN at export: {ch['problem']}",
             ch["events"] or 0, "chain.events"),
         _ev("table rows compared with the chain", ch["rows_checked"] or 0, "chain.rows_checked"),
         _ev("sealed recordings matching their hash", ch["recordings"] or 0, "chain.recordings")],
        ["verification.json", "verify_events.py", "manifest.json"])
    add("AU-10", "A signed event carries an Ed25519 signature over the chain head by the node that wrote it; "
                 "the signature covers every event before it.",
        [_ev("signatures in the chain" + (" (checked with the operator's key)" if ch["signatures_checked"]
                                          else " (NOT checked at export: no public key)"),
             ch["signatures"] or 0, "chain.signatures"),
         _ev("signed events in the period", ch["signed_in_period"], "chain.signed_in_period", ch["signed_examples"]),
         _ev("events after the last signature (unsigned yet)", ch["unsigned"] or 0, "chain.unsigned")],
        ["events.jsonl", "verify_events.py"])
    add("AU-12", "Records are made by the gateway on the connection, outside the agent: the agent cannot "
                 "skip or edit them; terminal sessions are recorded as they run.",
        [_ev("events generated by the gateway", f["events"]["total"], "events.generated"),
         _ev("sessions recorded", sess["total"], "sessions.recorded"),
         _ev("terminal recordings sealed", f["recordings"]["count"], "recordings.sealed_au12",
             f["recordings"]["examples"])],
        ["events.jsonl", "recordings/"])
    add("SC-7", "Callers reach the targets only through the gateway's listeners; the gateway holds the "
                "upstream credentials; a refused operation never reached the target.",
        [_ev("connections (listener to upstream)", len(f["connections"]), "connections.count"),
         *[_ev(f"sessions through {x['name']} ({x['type']}: {x['listen']} to {x['upstream']})", x["sessions"],
               f"connections.{x['name']}") for x in f["connections"]],
         _ev("operations stopped at the boundary", ops["refused"], "operations.refused_boundary",
             ops["examples"]["refused"])],
        ["grants.json", "events.jsonl"])
    add("SC-8", "Each connection's TLS settings, towards callers and towards the upstream; SSH is always "
                "encrypted and the upstream host key pinned.",
        [_ev(f"sessions through {x['name']}: callers {x['tls']['callers']}; upstream {x['tls']['upstream']}",
             x["sessions"],
             f"tls.{x['name']}") for x in f["connections"]],
        ["grants.json"])
    return c
