"""The auditor's archive: everything needed to check access offline.

``OUT.tar.gz`` holds (under ``hoopy-evidence/``):

  manifest.json        every other file with its SHA-256 and size
  README.md            what is here and how to check it without hoopy
  report.html          the period on one self-contained page: per NIST 800-53 control what the
                       gateway enforced and the evidence (counts, example event ids), charts
  controls.md          the same figures per control, as markdown (hoopy.audit.figures computes
                       them once; hoopy.audit.report lays out both)
  verification.json    the result of verifying the whole chain and recordings
  events.jsonl         the events in the period, with their chain links
  sessions.jsonl       the sessions in the period
  approvals.jsonl      the approvals in the period
  identities.json      identities (names, kinds, roles, key fingerprints; never tokens)
  grants.json          grants, masking rules and connections in force (no secrets)
  recordings/*.cast    the terminal recordings of the sessions in the period
  verify_events.py     a standalone checker of the chain and its signatures
  public_keys.json     the signing keys seen (informational: take the key to check
                       with from the gateway's operator, never from here)
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

from hoopy import __version__
from hoopy.audit import figures, report
from hoopy.audit.events import iso
from hoopy.audit.store import event_json
from hoopy.audit.verify import verify

ROOT = "hoopy-evidence"

# The standalone checker, shipped as it is in hoopy (tested there).
VERIFY_SCRIPT = (Path(__file__).with_name("verify_events.py")).read_text()


def _jsonl(rows) -> bytes:
    return b"".join(json.dumps(r, default=str, ensure_ascii=False).encode() + b"\n" for r in rows)


def _shown(v, unread: bool):
    """A setting as the archive shows it: a secret as where it lives, never its value."""
    if hasattr(v, "ref"):
        return f"<secret {v.ref}>"
    if unread and isinstance(v, str) and v.startswith(("env:", "file:")):
        return f"<secret {v}>"  # read without resolving (reader mode): a reference, shown as one
    if isinstance(v, dict):
        return {k: _shown(x, unread) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_shown(x, unread) for x in v]
    return str(v) if v is not None else None


def _policy(config) -> dict:
    conns = {}
    unread = getattr(config, "mode", "full") != "full"
    for name, c in config.connections.items():
        s = {k: _shown(v, unread) for k, v in vars_of(c.settings).items()}
        conns[name] = {"type": c.type, "listen": c.listen, "upstream": c.upstream,
                       "approval_timeout_s": c.approval_timeout, "settings": s}
    return {
        "grants": [{"identity": g.identity, "connection": g.connection,
                    "allow": [r.text for r in g.allow], "approve": [r.text for r in g.approve],
                    "deny": [r.text for r in g.deny],
                    "expires": g.expires.isoformat() if g.expires else None} for g in config.grants],
        "masking": [{"connection": m.connection, "columns": list(m.columns), "fields": list(m.fields),
                     "patterns": [d.name for d in m.patterns]} for m in config.masking],
        "connections": conns,
        "gateway": {"approval_timeout_s": config.gateway.approval_timeout},
    }


def vars_of(obj) -> dict:
    import attrs

    if isinstance(obj, dict):
        return dict(obj)
    return attrs.asdict(obj, recurse=False) if attrs.has(type(obj)) else dict(vars(obj))


def _readme(verification, since, until, keys) -> str:
    return f"""# hoopy evidence archive

Exported {iso(time.time_ns() // 1000)} by hoopy {__version__}; period {since or 'the beginning'} to {until or 'the export'}.

- `manifest.json` lists every file here with its SHA-256: `sha256sum` each to check the archive.
- `verification.json`: the whole event chain and every sealed recording were verified at export:
  **{'intact' if verification['ok'] else 'BROKEN: ' + str(verification['problem'])}**
  (signatures {'checked with the key(s) ' + ', '.join(verification['keys']) if verification['signatures_checked'] else 'not checked: no public key at export'}).
- `events.jsonl` is one event per line with `seq`, `prev`, `hash` and, on signed events, the `signature`
  of the chain head: `python3 verify_events.py events.jsonl --key ed25519:...` recomputes every link and
  checks every signature offline. Take each gateway's public key from its operator (`hoopy audit key` on
  the gateway host), never from this archive: `public_keys.json` lists the keys seen
  ({', '.join(keys) or 'none'}), for information only.
- `recordings/*.cast` are asciicast v2: `asciinema play FILE` or `asciinema cat FILE`; their SHA-256 is
  in the `recording.sealed` events.
- `report.html` is the period on one page (open it in any browser, offline: it loads nothing): per NIST
  800-53 control what the gateway enforced and the evidence, with counts and example event ids (`#seq`),
  charts of activity and refusals. `controls.md` has the same figures as markdown, with the files that
  evidence each control. No token, password or key is in this archive.
"""


def _keys_seen(reader, keyring) -> dict:
    """Public keys the chain announced (audit.key.created) and the ones used to verify."""
    keys = {}
    for e in reader.events(kind="audit.key.created"):
        try:
            d = json.loads(e["data"])
        except ValueError:
            continue
        if isinstance(d, dict) and d.get("key_id"):
            keys[d["key_id"]] = {"public_key": d.get("public_key"), "gateway": e["gateway"],
                                 "created": iso(e["time_us"]), "announced_by_event": e["seq"]}
    for kid, k in (keyring.keys.items() if keyring else ()):
        keys.setdefault(kid, {"public_key": k.text})["used_at_export"] = True
    return keys


def export(config, reader, out: Path, since_us: int | None = None, until_us: int | None = None,
           keyring=None) -> dict:
    """Write the archive; return its manifest. ``keyring`` checks the signatures at export."""
    files: list[tuple[str, bytes | Path]] = []
    verification = verify(reader, config.gateway.recordings, keyring=keyring).as_dict()

    events = [dict(event_json(e), data_json=e["data"])
              for e in reader.events(since_us=since_us, until_us=until_us)]
    sessions = [s for s in reader.sessions(since_us=since_us, until_us=until_us)]
    approvals = [a for a in reader.approvals()
                 if (since_us is None or (a["created_us"] or 0) >= since_us)
                 and (until_us is None or (a["created_us"] or 0) <= until_us)]
    since, until = iso(since_us), iso(until_us)
    keys = _keys_seen(reader, keyring)
    signed = [e for e in events if e.get("signature")]

    exported_us = time.time_ns() // 1000
    policy = _policy(config)
    identities = [i.public() for i in config.identities.values()]
    fig = figures.compute(events, identities, policy, verification, since_us, until_us,
                          gateway=config.gateway.name, approvals=approvals, exported_us=exported_us)

    files.append(("events.jsonl", _jsonl(events)))
    files.append(("sessions.jsonl", _jsonl(
        dict(s, start=iso(s["started_us"]), end=iso(s["ended_us"])) for s in sessions)))
    files.append(("approvals.jsonl", _jsonl(
        dict(a, created=iso(a["created_us"]), decided=iso(a["decided_us"])) for a in approvals)))
    files.append(("identities.json", json.dumps(identities, indent=2).encode()))
    files.append(("grants.json", json.dumps(policy, indent=2, default=str).encode()))
    files.append(("verification.json", json.dumps(verification, indent=2).encode()))
    files.append(("report.html", report.render_html(fig).encode()))
    files.append(("controls.md", report.render_markdown(fig).encode()))
    files.append(("README.md", _readme(verification, since, until, list(keys)).encode()))
    files.append(("verify_events.py", VERIFY_SCRIPT.encode()))
    files.append(("public_keys.json", json.dumps(
        {"note": "informational: check signatures with the key the gateway's operator gives you",
         "keys": keys}, indent=2).encode()))
    rec_dir = config.gateway.recordings
    for e in events:
        if e["kind"] == "recording.sealed":
            name = e["data"].get("path")
            if name and "/" not in name and (rec_dir / name).is_file():
                files.append((f"recordings/{name}", rec_dir / name))

    manifest = {"hoopy": __version__, "exported": iso(exported_us),
                "gateway": config.gateway.name, "since": since, "until": until,
                "counts": {"events": len(events), "sessions": len(sessions), "approvals": len(approvals)},
                "chain_head": {"seq": verification["head_seq"], "hash": verification["head_hash"]},
                "signed_head": ({k: signed[-1][k] for k in ("seq", "hash", "time", "gateway", "signature")}
                                if signed else None),
                "files": []}
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for name, content in files:
            h = hashlib.sha256()
            if isinstance(content, Path):
                with open(content, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                size = content.stat().st_size
                tar.add(content, arcname=f"{ROOT}/{name}", recursive=False)
            else:
                h.update(content)
                size = len(content)
                _add_bytes(tar, f"{ROOT}/{name}", content)
            manifest["files"].append({"path": name, "sha256": h.hexdigest(), "size": size})
        _add_bytes(tar, f"{ROOT}/manifest.json", json.dumps(manifest, indent=2).encode())
    tmp.replace(out)
    return manifest


def _add_bytes(tar, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(datetime.now(timezone.utc).timestamp())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
