"""The ``hoopy`` command. See docs/operators.md and INTERFACE.md.

Exit codes: 0 done, 1 refused / unknown / broken, 2 invalid input or config.
Reads go straight to the state store; approve and deny go through the
running gateway's admin API, so the held caller resumes at once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from hoopy import __version__


def _fail(msg: str, code: int = 1):
    print(f"hoopy: {msg}", file=sys.stderr)
    return code


def _config(args):
    from hoopy import config as configmod

    try:
        return configmod.load(args.config)
    except configmod.ConfigError as e:
        for p in e.problems:
            print(f"hoopy: {args.config}: {p}", file=sys.stderr)
        raise SystemExit(2)


def _reader(cfg):
    from hoopy.audit.store import StoreError, open_reader

    try:
        return open_reader(cfg)  # SQLite file or postgresql:// URL
    except StoreError as e:
        raise SystemExit(_fail(str(e), 1))


def _time(text: str | None, what: str) -> int | None:
    from hoopy.audit.events import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError:
        raise SystemExit(_fail(f"{what} {text!r} is not an RFC 3339 time or date", 2))


def _age(us: int | None) -> str:
    if not us:
        return "-"
    s = max(0, int(time.time() - us / 1e6))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _table(rows: list[list[str]], header: list[str]):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


# --- commands ---------------------------------------------------------------


def cmd_check(args):
    from hoopy import config as configmod

    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        for p in e.problems:
            print(f"{args.config}: {p}")
        print(f"{len(e.problems)} problem(s)", file=sys.stderr)
        return 2
    print(f"{args.config}: ok: {len(cfg.identities)} identities, {len(cfg.connections)} connections, "
          f"{len(cfg.grants)} grants, {len(cfg.masking)} masking rules")
    return 0


def cmd_token_new(args):
    from hoopy.identity import ScramVerifier, hash_token, new_token

    token = new_token()
    print(f"token = {token}")
    print("# give the token to the identity (it is not kept anywhere); put these lines in its table:")
    print(f'token_sha256 = "{hash_token(token).hex()}"')
    print(f'token_scram = "{ScramVerifier.make(token)}"')
    return 0


def cmd_approvals(args):
    cfg = _config(args)
    reader = _reader(cfg)
    if args.id:
        return _show_approval(reader, args)
    rows = reader.approvals(None if args.all else "pending")
    if args.json:
        from hoopy.admin.api import approval_json

        print(json.dumps([approval_json(r) for r in rows], indent=2))
        return 0
    if not rows:
        print("no pending approvals" if not args.all else "no approvals")
        return 0
    _table([[r["id"], r["requester"], r["connection"] or "-", r["state"], _age(r["created_us"]),
             _first_line(r["operation"])] for r in rows],
           ["ID", "IDENTITY", "CONNECTION", "STATE", "AGE", "OPERATION"])
    if any(_first_line(r["operation"]) != r["operation"] for r in rows):
        print("(... : more in `hoopy approvals ID`: parameters, request body, the parts of a command line)")
    return 0


def _first_line(text: str) -> str:
    line, nl, _ = text.partition("\n")
    return line if len(line) < 80 and not nl else line[:76] + " ..."


def _show_approval(reader, args):
    """One approval in full: what the reviewer approves, with its parameters or body."""
    from hoopy.admin.api import approval_json

    row = reader.approval(args.id)
    if row is None:
        return _fail(f"no approval {args.id}", 1)
    out = approval_json(row)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for k in ("id", "state", "requester", "caused_by", "connection", "protocol", "session", "rule", "mode",
              "created", "expires", "decided", "reviewer", "reason", "usable_until", "used", "used_session"):
        if out.get(k) is not None:
            print(f"{k + ':':<12}{out[k]}")
    print("operation:")
    for line in out["operation"].splitlines() or [""]:
        print("    " + line)
    return 0


def admin_url(cfg) -> str:
    from twisted.internet.endpoints import serverFromString

    desc = cfg.gateway.admin_listen
    if not desc:
        raise SystemExit(_fail("gateway.admin_listen is not set: the gateway has no admin API", 2))
    ep = serverFromString(None, desc)
    host = getattr(ep, "_interface", "") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if cfg.gateway.admin_tls_cert is not None else "http"
    return f"{scheme}://{host}:{ep._port}"


def _admin_tls(cfg):
    """For an https admin API: the system's CAs, and the listener's own certificate (self-signed or
    not: X509_V_FLAG_PARTIAL_CHAIN lets a leaf be its own anchor)."""
    import ssl

    ctx = ssl.create_default_context()
    if cfg.gateway.admin_tls_cert is not None:
        ctx.load_verify_locations(cadata=cfg.gateway.admin_tls_cert.value)
        ctx.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
    return ctx


def cmd_decide(args):
    cfg = _config(args)
    token = os.environ.get("HOOPY_TOKEN", "").strip()
    if not token:
        return _fail("set HOOPY_TOKEN to your reviewer token", 1)
    base = args.admin or admin_url(cfg)
    verb = "approve" if args.command == "approve" else "deny"
    body = json.dumps({"reason": args.reason} if getattr(args, "reason", None) else {}).encode()
    req = urllib.request.Request(f"{base}/approvals/{args.id}/{verb}", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30, context=_admin_tls(cfg) if base.startswith("https:") else None) as resp:
            out = json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            msg = json.load(e).get("error", e.reason)
        except ValueError:
            msg = e.reason
        return _fail(f"{verb} {args.id}: refused: {msg}", 1)
    except (urllib.error.URLError, OSError) as e:
        return _fail(f"cannot reach the gateway's admin API at {base}: {getattr(e, 'reason', e)}", 1)
    print(f"{out['approval']} {out['state']} by {out['reviewer']} "
          f"({out['requester']}: {out['operation']})")
    return 0


def cmd_sessions(args):
    from hoopy.admin.api import session_json

    cfg = _config(args)
    reader = _reader(cfg)
    rows = reader.sessions(limit=args.limit)
    if args.json:
        print(json.dumps([session_json(r) for r in rows], indent=2))
        return 0
    if not rows:
        print("no sessions")
        return 0
    _table([[s["id"], s["identity"] or "-", s["connection"] or "-", s["protocol"] or "-",
             session_json(s)["start"] or "-", session_json(s)["end"] or "open",
             s["model"] or "-", s["tool_call"] or "-", s["mcp_server"] or "-", s["application_name"] or "-"]
            for s in rows],
           ["ID", "IDENTITY", "CONNECTION", "PROTOCOL", "START", "END", "MODEL", "TOOL CALL", "MCP SERVER",
            "APPLICATION"])
    return 0


def cmd_show(args):
    from hoopy.admin.api import session_json
    from hoopy.audit.store import event_json

    cfg = _config(args)
    reader = _reader(cfg)
    s = reader.session(args.session)
    if s is None:
        return _fail(f"no session {args.session}", 1)
    events = [event_json(e) for e in reader.events(session=args.session)]
    if args.json:
        print(json.dumps({"session": session_json(s), "events": events}, indent=2, default=str))
        return 0
    sj = session_json(s)
    print(f"session {s['id']}: {s['identity']} on {s['connection']} ({s['protocol']}) from {s['peer']}")
    print(f"  start {sj['start']}  end {sj['end'] or 'open'}"
          + (f"  reason {s['end_reason']}" if s["end_reason"] else ""))
    attribution = {k: s[k] for k in ("model", "tool_call", "mcp_server", "application_name") if s[k]}
    if attribution:
        print("  " + "  ".join(f"{k}={v}" for k, v in attribution.items()))
    from hoopy.mcp.show import beneath

    links = beneath(reader, s, events)  # the causal link: tool calls and what they caused
    for e in events:
        data = dict(e["data"])
        text = data.pop("text", None)
        data.pop("caused_by", None)
        extra = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in data.items() if v is not None)
        print(f"{e['seq']:>6} {e['time']} {e['kind']:<18} {e['outcome'] or '':<9} "
              + (f"{text}  " if text else "") + extra)
        for line in links.get(e["seq"], ()):
            print(f"{'':>8}{line}")
    return 0


def cmd_replay(args):
    from hoopy.audit.asciicast import sha256_file
    from hoopy.audit.replay import play

    cfg = _config(args)
    reader = _reader(cfg)
    if reader.session(args.session) is None:
        return _fail(f"no session {args.session}", 1)
    casts = []
    for e in reader.events(session=args.session):
        if e["kind"] == "recording.sealed":
            casts.append(json.loads(e["data"]))
    if not casts:
        p = cfg.gateway.recordings / f"{args.session}.cast"
        if not p.exists():
            return _fail(f"session {args.session} has no terminal recording", 1)
        print(f"hoopy: {p.name} is not sealed yet (the session is open or ended abruptly)", file=sys.stderr)
        casts = [{"path": p.name, "sha256": None}]
    for c in casts:
        path = cfg.gateway.recordings / c["path"]
        if c.get("sha256") and sha256_file(path)[0] != c["sha256"]:
            print(f"hoopy: WARNING: {path.name} was changed after it was sealed", file=sys.stderr)
        play(path, speed=args.speed, idle_limit=args.idle_limit)
    return 0


def cmd_verify(args):
    from hoopy.audit.verify import verify

    cfg = _config(args)
    reader = _reader(cfg)
    result = verify(reader, cfg.gateway.recordings)
    print(json.dumps(result.as_dict(), indent=2) if args.json else str(result))
    return 0 if result.ok else 1


def cmd_export(args):
    from hoopy.audit.evidence import export

    cfg = _config(args)
    reader = _reader(cfg)
    since = _time(args.since, "--since")
    until = _time(args.until, "--until")
    manifest = export(cfg, reader, Path(args.output), since, until)
    c = manifest["counts"]
    print(f"{args.output}: {c['events']} events, {c['sessions']} sessions, {c['approvals']} approvals, "
          f"{len(manifest['files'])} files")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hoopy", description="The hoopy access gateway's command.")
    p.add_argument("--version", action="version", version=f"hoopy {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cfg(sp):
        sp.add_argument("-c", "--config", default=os.environ.get("HOOPY_CONFIG", "hoopy.toml"),
                        help="the configuration file (default: $HOOPY_CONFIG or hoopy.toml)")
        return sp

    cfg(sub.add_parser("check", help="validate the configuration")).set_defaults(fn=cmd_check)
    tok = sub.add_parser("token", help="tokens").add_subparsers(dest="token_command", required=True)
    tok.add_parser("new", help="print a new token and its token_sha256/token_scram lines").set_defaults(
        fn=cmd_token_new)
    sp = cfg(sub.add_parser("approvals", help="list pending approvals, or show one in full"))
    sp.add_argument("id", nargs="?", help="show this approval in full (its parameters, its request body)")
    sp.add_argument("--all", action="store_true", help="decided ones too")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_approvals)
    for verb in ("approve", "deny"):
        sp = cfg(sub.add_parser(verb, help=f"{verb} a held operation (reviewer token in HOOPY_TOKEN)"))
        sp.add_argument("id")
        sp.add_argument("--reason", help="why (recorded)")
        sp.add_argument("--admin", help="the admin API URL (default: from gateway.admin_listen)")
        sp.set_defaults(fn=cmd_decide)
    sp = cfg(sub.add_parser("sessions", help="list sessions"))
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--limit", type=int, default=100)
    sp.set_defaults(fn=cmd_sessions)
    sp = cfg(sub.add_parser("show", help="every event of one session"))
    sp.add_argument("session")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_show)
    sp = cfg(sub.add_parser("replay", help="play an SSH session's terminal recording"))
    sp.add_argument("session")
    sp.add_argument("--speed", type=float, default=1.0)
    sp.add_argument("--idle-limit", type=float, default=2.0, help="longest pause, in seconds")
    sp.set_defaults(fn=cmd_replay)
    audit = sub.add_parser("audit", help="audit trail").add_subparsers(dest="audit_command", required=True)
    sp = cfg(audit.add_parser("verify", help="check the event chain and recordings"))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_verify)
    ev = sub.add_parser("evidence", help="evidence for auditors").add_subparsers(
        dest="evidence_command", required=True)
    sp = cfg(ev.add_parser("export", help="write the auditor's archive"))
    sp.add_argument("-o", "--output", required=True, help="OUT.tar.gz")
    sp.add_argument("--since", help="RFC 3339 time or date")
    sp.add_argument("--until", help="RFC 3339 time or date")
    sp.set_defaults(fn=cmd_export)
    from hoopy.mcp.cli import add_parser as add_mcp

    add_mcp(sub, cfg)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
