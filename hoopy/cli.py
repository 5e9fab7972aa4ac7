"""The ``hoopy`` command. See docs/operators.md and INTERFACE.md.

Exit codes: 0 done, 1 refused / unknown / broken, 2 invalid input or config.
Reads go straight to the state store; approve and deny go through the
running gateway's admin API, so the held caller resumes at once.

Who needs what: ``check`` reads the whole configuration and resolves every
secret (it is the gateway's view). The reader commands (approvals, approve,
deny, sessions, show, replay, events, audit, evidence) read only the
``[gateway]`` table (evidence also identities and grants, resolving no
secret): an auditor needs the state store (``state_reader`` where set), the
recordings folder and the signing key's public half, never a connection's
password. Everything they print that someone else wrote is escaped
(hoopy.text).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
from pathlib import Path

from hoopy import __version__
from hoopy.cliutil import AdminClient, fail as _fail, load_config as _config
from hoopy.text import escape, escape_json

# Session and approval ids as hoopy makes them are hex (approvals with "ap-"); anything that
# could change a URL's meaning or a query ("/", "?", "%", "#", ".", space) is never an id.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _print_json(value):
    print(json.dumps(escape_json(value), indent=2, default=str))


def _reader(cfg):
    from hoopy.audit.store import StoreError, open_reader

    try:
        return open_reader(cfg)  # SQLite file, or postgresql:// (state_reader where set)
    except StoreError as e:
        raise SystemExit(_fail(str(e), 1))


def _since(text: str | None, what: str) -> int | None:
    """An ISO 8601 time or date, or a duration back from now (``2h``, ``30m``, ``1d``)."""
    from hoopy.audit.events import parse_time
    from hoopy.units import parse_duration

    if text is None:
        return None
    try:
        return time.time_ns() // 1000 - int(parse_duration(text) * 1_000_000)
    except ValueError:
        pass
    try:
        return parse_time(text)
    except ValueError:
        raise SystemExit(_fail(f"{what} {text!r} is neither an ISO 8601 time or date nor a duration "
                               "such as 2h", 2))


def _time(text: str | None, what: str) -> int | None:
    return _since(text, what)


def _age(us: int | None) -> str:
    if not us:
        return "-"
    s = max(0, int(time.time() - us / 1e6))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _table(rows: list[list[str]], header: list[str]):
    rows = [[escape(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _check_id(given: str, what: str) -> str:
    if not _ID.match(given or ""):
        article = "an" if what[0] in "aeiou" else "a"
        raise SystemExit(_fail(f"{escape(given)!s} is not {article} {what} id (letters, digits, - and _)", 2))
    return given


def _resolve(reader, table: str, given: str) -> str:
    """A whole id, or the one id that begins with ``given``; exit 1 if none or several."""
    what = "session" if table == "sessions" else "approval"
    _check_id(given, what)
    one = reader.session(given) if table == "sessions" else reader.approval(given)
    if one is not None:
        return given
    found = reader.ids_with_prefix(table, given, limit=21)
    if len(found) == 1:
        return found[0]
    if not found:
        raise SystemExit(_fail(f"no {what} {given}", 1))
    more = " (and more)" if len(found) > 20 else ""
    raise SystemExit(_fail(f"{given} is ambiguous: it begins {len(found[:20])} {what} ids{more}:\n  "
                           + "\n  ".join(escape(x) for x in found[:20]), 1))


# --- check and tokens ---------------------------------------------------------------------


def cmd_check(args):
    from hoopy import config as configmod

    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        for p in e.problems:
            print(f"{args.config}: {p}")
        print(f"{len(e.problems)} problem(s)", file=sys.stderr)
        return 2
    from hoopy.eventloop import problem

    loop_problem = problem()  # (the gateway refuses to start on it: so does the check)
    if loop_problem:
        print(f"{args.config}: {loop_problem}: the gateway does not start with it")
        print("1 problem(s)", file=sys.stderr)
        return 2
    print(f"{args.config}: ok: {len(cfg.identities)} identities, {len(cfg.connections)} connections, "
          f"{len(cfg.grants)} grants, {len(cfg.masking)} masking rules")
    if cfg.gateway.signing_key is None:
        print(f"{args.config}: warning: gateway.signing_key is not set: the audit chain is not signed",
              file=sys.stderr)
    if getattr(args, "connect", False):
        from hoopy.checks_connect import main as check_connect

        sys.stdout.flush()
        return check_connect(cfg, args.config)
    return 0


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def cmd_token_new(args):
    from hoopy.config import _NAME
    from hoopy.identity import ScramVerifier, hash_token, new_token

    token = new_token()
    sha = hash_token(token).hex()
    scram = ScramVerifier.make(token)
    if not args.name:
        if args.reviewer or args.auditor:
            return _fail("--reviewer and --auditor go with a NAME: hoopy token new NAME --reviewer", 2)
        print(f"token = {token}")
        print("# give the token to the identity (it is not kept anywhere); put these lines in its table:")
        print(f'token_sha256 = "{sha}"')
        print(f'token_scram = "{scram}"')
        return 0
    name = args.name
    if not _NAME.match(name):
        return _fail(f"{escape(name)!s} is not an identity name (letters, digits, . _ @ -; at most 128)", 2)
    key = name if _BARE_KEY.match(name) else json.dumps(name)
    role = "reviewer" if args.reviewer else "auditor" if args.auditor else None
    print(f"# token for {name} (give it to them; hoopy keeps no copy): {token}")
    print(f"[identities.{key}]")
    print(f'kind = "{"human" if role else "agent"}"')
    if role:
        print(f'roles = ["{role}"]')
    print(f'token_sha256 = "{sha}"')
    print(f'token_scram = "{scram}"')
    return 0


# --- approvals ------------------------------------------------------------------------------


def cmd_approvals(args):
    cfg = _config(args)
    reader = _reader(cfg)
    if args.id:
        return _show_approval(reader, args)
    rows = reader.approvals(None if args.all else "pending")
    if args.json:
        from hoopy.audit.views import approval_json

        _print_json([approval_json(r) for r in rows])
        return 0
    if not rows:
        print("no pending approvals" if not args.all else "no approvals")
        return 0
    _table([[r["id"], r["requester"], r["connection"] or "-", r["state"], _age(r["created_us"]),
             _first_line(escape(r["operation"], keep_newlines=True))] for r in rows],
           ["ID", "IDENTITY", "CONNECTION", "STATE", "AGE", "OPERATION"])
    if any(_first_line(r["operation"]) != r["operation"] for r in rows):
        print("(... : more in `hoopy approvals ID`: parameters, request body, the parts of a command line)")
    return 0


def _first_line(text: str) -> str:
    line, nl, _ = text.partition("\n")
    return line if len(line) < 80 and not nl else line[:76] + " ..."


def _show_approval(reader, args):
    """One approval in full: what the reviewer approves, with its parameters or body."""
    from hoopy.audit.views import approval_json

    aid = _resolve(reader, "approvals", args.id)
    out = approval_json(reader.approval(aid))
    if args.json:
        _print_json(out)
        return 0
    for k in ("id", "state", "requester", "caused_by", "connection", "protocol", "session", "rule", "mode",
              "created", "expires", "decided", "reviewer", "reason", "usable_until", "used", "used_session"):
        if out.get(k) is not None:
            print(f"{k + ':':<12}{escape(out[k])}")
    print("operation:")
    for line in escape(out["operation"], keep_newlines=True).splitlines() or [""]:
        print("    " + line)
    return 0


# --- the admin API, as a careful client -----------------------------------------------------------


def cmd_decide(args):
    cfg = _config(args)
    token = os.environ.get("HOOPY_TOKEN", "").strip()
    verb = "approve" if args.command == "approve" else "deny"
    given = _check_id(args.id, "approval")
    if not token:
        return _fail("set HOOPY_TOKEN to your reviewer token", 1)
    client = AdminClient(cfg, args.admin, token)
    try:
        aid = given
        if not re.fullmatch(r"ap-[0-9a-f]{12}", given):  # a prefix: which approval is it?
            status, found = client.call("GET", "/approvals?" + urllib.parse.urlencode({"prefix": given}))
            if status in (401, 403):
                msg = found.get("error") if isinstance(found, dict) else status
                return _fail(f"{verb} {given}: refused: {escape(msg)}", 1)
            if status == 200 and isinstance(found, list):
                ids = [a.get("id") for a in found if isinstance(a, dict)]
                if not ids:
                    return _fail(f"{verb} {given}: refused: no approval {given}", 1)
                if len(ids) > 1:
                    return _fail(f"{given} is ambiguous: it begins {len(ids)} approval ids:\n  "
                                 + "\n  ".join(escape(x) for x in ids[:20]), 1)
                aid = _check_id(ids[0], "approval")
        status, out = client.call("POST", f"/approvals/{urllib.parse.quote(aid, safe='')}/{verb}",
                                  {"reason": args.reason} if args.reason else {})
    except (urllib.error.URLError, OSError, ssl.SSLError) as e:
        return _fail(f"cannot reach the gateway's admin API at {client.base}: "
                     f"{escape(getattr(e, 'reason', e))}", 1)
    if status != 200 or not isinstance(out, dict):
        msg = out.get("error") if isinstance(out, dict) else None
        return _fail(f"{verb} {aid}: refused: {escape(msg or status)}", 1)
    print(escape(f"{out.get('approval')} {out.get('state')} by {out.get('reviewer')} "
                 f"({out.get('requester')}: {_first_line(str(out.get('operation')))})"))
    return 0


# --- sessions and events ----------------------------------------------------------------------


def cmd_sessions(args):
    from hoopy.audit.views import session_json

    cfg = _config(args)
    reader = _reader(cfg)
    rows = reader.sessions(limit=args.limit)
    if args.json:
        _print_json([session_json(r) for r in rows])
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


def _detail(data: dict) -> str:
    data = dict(data)
    text = data.pop("text", None)
    extra = " ".join(f"{k}={json.dumps(v, default=str, ensure_ascii=False)}" for k, v in data.items()
                     if v is not None)
    return escape((f"{text}  " if text else "") + extra)


def cmd_show(args):
    from hoopy.audit.views import session_json
    from hoopy.audit.store import event_json

    cfg = _config(args)
    reader = _reader(cfg)
    sid = _resolve(reader, "sessions", args.session)
    s = reader.session(sid)
    events = [event_json(e) for e in reader.events(session=sid)]
    if args.json:
        _print_json({"session": session_json(s), "events": events})
        return 0
    sj = session_json(s)
    e_ = escape
    print(f"session {e_(s['id'])}: {e_(s['identity'])} on {e_(s['connection'])} ({e_(s['protocol'])}) "
          f"from {e_(s['peer'])}")
    print(f"  start {sj['start']}  end {sj['end'] or 'open'}"
          + (f"  reason {e_(s['end_reason'])}" if s["end_reason"] else ""))
    attribution = {k: s[k] for k in ("model", "tool_call", "mcp_server", "application_name") if s.get(k)}
    if attribution:
        print("  " + "  ".join(f"{k}={e_(v)}" for k, v in attribution.items()))
    from hoopy.mcp.show import beneath

    links = beneath(reader, s, events)  # the causal link: tool calls and what they caused
    for e in events:
        data = {k: v for k, v in e["data"].items() if k != "caused_by"}
        print(f"{e['seq']:>6} {e['time']} {e_(e['kind']):<18} {e_(e['outcome'] or ''):<9} " + _detail(data))
        for line in links.get(e["seq"], ()):
            print(f"{'':>8}{e_(line)}")
    return 0


def cmd_events(args):
    from hoopy.audit.store import event_json

    cfg = _config(args)
    reader = _reader(cfg)
    session = _resolve(reader, "sessions", args.session) if args.session else None
    kind = args.type
    if kind and kind.endswith("*"):
        kind = kind[:-1]
    rows = reader.events(session=session, since_us=_since(args.since, "--since"),
                         until_us=_since(args.until, "--until"), identity=args.identity,
                         connection=args.connection, kind=kind, limit=args.limit)
    if args.json:
        print("[", end="")
        for i, e in enumerate(rows):
            print(("," if i else "") + "\n  " + json.dumps(escape_json(event_json(e)), default=str), end="")
        print("\n]")
        return 0
    print(f"{'SEQ':>7}  {'TIME':<27}  {'KIND':<20}  {'OUTCOME':<10}  {'IDENTITY':<16}  {'CONNECTION':<14}  "
          f"{'SESSION':<16}  DETAIL")
    n = 0
    for e in rows:
        j = event_json(e)
        detail = _detail(j["data"] if isinstance(j["data"], dict) else {"data": j["data"]})
        print(f"{e['seq']:>7}  {j['time']:<27}  {escape(e['kind']):<20}  {escape(e['outcome'] or '-'):<10}  "
              f"{escape(e['identity'] or '-'):<16}  {escape(e['connection'] or '-'):<14}  "
              f"{escape(e['session'] or '-'):<16}  {detail[:200]}")
        n += 1
    if not n:
        print("no events")
    return 0


def cmd_replay(args):
    from hoopy.audit.asciicast import sha256_file
    from hoopy.audit.replay import play

    cfg = _config(args)
    reader = _reader(cfg)
    sid = _resolve(reader, "sessions", args.session)
    casts = []
    for e in reader.events(session=sid):
        if e["kind"] == "recording.sealed":
            casts.append(json.loads(e["data"]))
    if not casts:
        p = cfg.gateway.recordings / f"{sid}.cast"
        if not p.exists():
            return _fail(f"session {sid} has no terminal recording", 1)
        print(f"hoopy: {p.name} is not sealed yet (the session is open or ended abruptly)", file=sys.stderr)
        casts = [{"path": p.name, "sha256": None}]
    for c in casts:
        name = str(c.get("path") or "")
        if "/" in name or name.startswith(".") or not name:
            return _fail(f"recording path {escape(name)!s} is not a file name", 1)
        path = cfg.gateway.recordings / name
        if c.get("sha256") and sha256_file(path)[0] != c["sha256"]:
            print(f"hoopy: WARNING: {escape(path.name)} was changed after it was sealed", file=sys.stderr)
        play(path, speed=args.speed, idle_limit=args.idle_limit)
    return 0


# --- audit -------------------------------------------------------------------------------------


def _public_key_file(cfg) -> Path:
    p = cfg.gateway.signing_public_key
    if p is None:
        raise SystemExit(_fail("gateway.signing_key is not set: this gateway does not sign its chain", 2))
    return p


def cmd_audit_key(args):
    from hoopy.audit.signing import SigningKeyError, parse_public

    cfg = _config(args)
    p = _public_key_file(cfg)
    try:
        key = parse_public(p.read_text())
    except OSError as e:
        return _fail(f"cannot read {p}: {e.strerror or e} (the gateway writes it when it first starts)", 1)
    except SigningKeyError as e:
        return _fail(f"{p}: {e}", 1)
    print(f"# gateway {escape(cfg.gateway.name)}, key id {key.id}, from {escape(p)}")
    print(key.text)  # the last line: hoopy audit verify --key "$(hoopy audit key | tail -1)"
    return 0


def _keyring(texts):
    from hoopy.audit.signing import Keyring, SigningKeyError, read_public

    keys = []
    for t in texts or ():
        try:
            keys.append(read_public(t))
        except SigningKeyError as e:
            raise SystemExit(_fail(f"--key: {e}", 2))
    return Keyring(keys)


def cmd_verify(args):
    from hoopy.audit.verify import read_anchor, verify

    cfg = _config(args)
    keyring = _keyring(args.key)
    anchor = None
    if args.anchor is not None:
        src = args.anchor
        if not src:
            a = cfg.gateway.audit_anchor
            if not a or not a.startswith("file:"):
                return _fail("--anchor needs a file: give the copy of what the anchor received "
                             "(gateway.audit_anchor is not a file: anchor)", 2)
            src = a[5:]
            if not Path(src).is_absolute():
                src = str(cfg.base_dir / src)
        try:
            anchor = read_anchor(src)
        except OSError as e:
            return _fail(f"--anchor {src}: {e.strerror or e}", 2)
    reader = _reader(cfg)
    stale = args.max_age if args.max_age is not None else max(120.0, 2 * cfg.gateway.heartbeat + 5)
    result = verify(reader, cfg.gateway.recordings, keyring=keyring, anchor=anchor, stale_after=stale)
    if args.max_age is not None and result.ok and result.last_signed_age_s is not None \
            and result.last_signed_age_s > args.max_age:
        result.ok = False
        result.problem = (f"the last signed event ({result.last_signed_seq}) is {result.last_signed_age_s:.0f}s "
                          f"old, more than --max-age: signed events may have been removed from the end")
    if args.json:
        _print_json(result.as_dict())
    else:
        print(escape(str(result), keep_newlines=True))
    return 0 if result.ok else 1


def cmd_export(args):
    from hoopy.audit.evidence import export
    from hoopy.audit.signing import SigningKeyError, Keyring, read_public

    cfg = _config(args, mode="reader")
    if args.key:
        keyring = _keyring(args.key)
    else:  # the operator's own key, to verify at export (auditors re-check with theirs)
        keyring = Keyring()
        pub = cfg.gateway.signing_public_key
        if pub is not None and pub.exists():
            try:
                keyring = Keyring([read_public(str(pub))])
            except SigningKeyError:
                pass
    reader = _reader(cfg)
    since = _time(args.since, "--since")
    until = _time(args.until, "--until")
    manifest = export(cfg, reader, Path(args.output), since, until, keyring=keyring)
    c = manifest["counts"]
    print(f"{args.output}: {c['events']} events, {c['sessions']} sessions, {c['approvals']} approvals, "
          f"{len(manifest['files'])} files")
    return 0


# --- the parser ---------------------------------------------------------------------------------

EPILOG = """\
Run the gateway itself with twistd:
  twistd -n hoopy -c hoopy.toml        (in the foreground; without -n it daemonizes)
A first configuration for your upstreams, with tokens and the client commands to try:
  hoopy init --postgres postgresql://USER@HOST:5432/DB [--ssh USER@HOST --ssh-key FILE] [--http URL]

Reader commands (approvals, approve, deny, sessions, show, replay, events, audit,
evidence) need only the [gateway] table: never a connection's secrets. Session and
approval ids may be given by any unique prefix. See docs/operators.md.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hoopy", description="The hoopy access gateway's command.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"hoopy {__version__}",
                   help="print hoopy's version")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cfg(sp):
        sp.add_argument("-c", "--config", default=os.environ.get("HOOPY_CONFIG", "hoopy.toml"),
                        help="the configuration file (default: $HOOPY_CONFIG or hoopy.toml)")
        return sp

    def json_flag(sp, what="as JSON"):
        sp.add_argument("--json", action="store_true", help=f"print {what} (untrusted text escaped)")

    sp = cfg(sub.add_parser("check", help="validate the configuration (resolves every secret, as the gateway)"))
    sp.add_argument("--connect", action="store_true",
                    help="also reach every upstream with the gateway's credentials: login, TLS, SSH host key, "
                         "masked columns, grants' tables (exit 2 on any problem)")
    sp.set_defaults(fn=cmd_check)
    from hoopy.init import add_parser as add_init

    add_init(sub)
    tok = sub.add_parser("token", help="make tokens").add_subparsers(dest="token_command", required=True,
                                                                    metavar="SUBCOMMAND")
    sp = tok.add_parser("new", help="print a new token, with a NAME as a ready [identities.NAME] block")
    sp.add_argument("name", nargs="?", help="the identity's name: print a whole [identities.NAME] block")
    role = sp.add_mutually_exclusive_group()
    role.add_argument("--reviewer", action="store_true", help="a human who decides held operations")
    role.add_argument("--auditor", action="store_true", help="a human who reads everything, decides nothing")
    sp.set_defaults(fn=cmd_token_new)

    sp = cfg(sub.add_parser("approvals", help="list pending approvals, or show one in full"))
    sp.add_argument("id", nargs="?", help="show this approval in full (id or unique prefix)")
    sp.add_argument("--all", action="store_true", help="decided and expired ones too")
    json_flag(sp)
    sp.set_defaults(fn=cmd_approvals)
    for verb in ("approve", "deny"):
        sp = cfg(sub.add_parser(verb, help=f"{verb} a held operation (reviewer token in HOOPY_TOKEN)"))
        sp.add_argument("id", help="the approval id, or a unique prefix of it")
        sp.add_argument("--reason", help="why (recorded with the decision)")
        sp.add_argument("--admin", help="the admin API: http://LOOPBACK-IP:PORT or https://HOST:PORT "
                                        "(default: from gateway.admin_listen)")
        sp.set_defaults(fn=cmd_decide)
    sp = cfg(sub.add_parser("sessions", help="list sessions, newest first"))
    json_flag(sp)
    sp.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    sp.set_defaults(fn=cmd_sessions)
    sp = cfg(sub.add_parser("show", help="every event of one session"))
    sp.add_argument("session", help="the session id, or a unique prefix of it")
    json_flag(sp)
    sp.set_defaults(fn=cmd_show)
    sp = cfg(sub.add_parser("events", help="list events (failed logins included), oldest first"))
    sp.add_argument("--identity", help="only this identity's events")
    sp.add_argument("--connection", help="only this connection's events")
    sp.add_argument("--type", help="only this kind (operation, auth.failed ...); auth.* for every auth. kind")
    sp.add_argument("--session", help="only this session's events (id or unique prefix)")
    sp.add_argument("--since", help="from this ISO 8601 time or date, or this long ago (2h, 30m, 1d)")
    sp.add_argument("--until", help="up to this ISO 8601 time or date, or this long ago")
    sp.add_argument("--limit", type=int, help="at most this many")
    json_flag(sp)
    sp.set_defaults(fn=cmd_events)
    sp = cfg(sub.add_parser("replay", help="play an SSH session's terminal recording, as it was shown"))
    sp.add_argument("session", help="the session id, or a unique prefix of it")
    sp.add_argument("--speed", type=float, default=1.0, help="playback speed (2 = twice as fast)")
    sp.add_argument("--idle-limit", type=float, default=2.0, help="longest pause, in seconds")
    sp.set_defaults(fn=cmd_replay)

    audit = sub.add_parser("audit", help="the audit trail: verify it, print the signing key").add_subparsers(
        dest="audit_command", required=True, metavar="SUBCOMMAND")
    sp = cfg(audit.add_parser("verify", help="check the event chain, its signatures, every table row and "
                                             "recording"))
    sp.add_argument("--key", action="append", metavar="PUBLIC_KEY",
                    help="a gateway node's public key (ed25519:..., or a file holding it); once per node. "
                         "With keys, every signature is checked")
    sp.add_argument("--anchor", nargs="?", const="", metavar="FILE",
                    help="compare with the signed heads the anchor received (default: gateway.audit_anchor "
                         "when it is a file)")
    sp.add_argument("--max-age", type=float, metavar="SECONDS",
                    help="fail if the last signed event is older than this")
    json_flag(sp, "the result as JSON")
    sp.set_defaults(fn=cmd_verify)
    sp = cfg(audit.add_parser("key", help="print this gateway's public signing key (from its .pub; last line)"))
    sp.set_defaults(fn=cmd_audit_key)

    ev = sub.add_parser("evidence", help="evidence for auditors").add_subparsers(
        dest="evidence_command", required=True, metavar="SUBCOMMAND")
    sp = cfg(ev.add_parser("export", help="write the auditor's archive"))
    sp.add_argument("-o", "--output", required=True, help="the archive to write (OUT.tar.gz)")
    sp.add_argument("--since", help="from this ISO 8601 time or date, or this long ago (2h)")
    sp.add_argument("--until", help="up to this ISO 8601 time or date, or this long ago")
    sp.add_argument("--key", action="append", metavar="PUBLIC_KEY",
                    help="verify signatures at export with this key (default: the gateway's .pub)")
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
