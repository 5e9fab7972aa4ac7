"""A record nobody can rewrite (issue 10 section 5): the chain head signed with the node's
Ed25519 key, every row replayed from the chain, the anchor, and the attacks that the unkeyed
chain let through, tried against a real `twistd -n hoopy` store with the real `hoopy` command.

The attacker has write access to the state store (not the gateway's private key): they
delete an event and recompute every link after it, cut the tail off with its signatures,
forge signatures, sign with a key of their own, edit any column of any table."""
from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted

from hoopy.audit.chain import GENESIS, link
from hoopy.audit.signing import Signer, format_signature, head_message
from tests.support import HoopyProcess, free_port, ident
from tests.test_http_gateway import Upstream

AGENT = ident("agent")
ALICE = ident("alice")
SECRET = "Bearer upstream-0451"
ESC = "\x1b[2J\x1b[1;1Hfake\u202e"


def body_toml(upstream_port: int, listen: int) -> str:
    return AGENT.toml(scram=False) + ALICE.toml(kind="human", roles=["reviewer"], scram=False) + f"""
[connections.api]
type = "http"
listen = "tcp:{listen}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{upstream_port}"
upstream_headers = {{ Authorization = "env:API_AUTH" }}

[[grants]]
identity = "agent"
connection = "api"
allow = ["GET /v1/customers/*"]
approve = ["POST /v1/refunds"]
"""


def signed_process(workdir: Path, upstream_port: int, extra: str = "") -> HoopyProcess:
    listen = free_port()
    p = HoopyProcess(workdir, body_toml(upstream_port, listen), env={"API_AUTH": SECRET})
    (workdir / "keys").mkdir(exist_ok=True)
    text = p.config.read_text().replace(
        'store_busy_timeout = "1s"\n',
        'store_busy_timeout = "1s"\nsigning_key = "file:keys/gw.key"\naudit_anchor = "file:anchor.jsonl"\n'
        'heartbeat = "1s"\nsign_interval = "0.2s"\n' + extra, 1)
    p.config.write_text(text)
    p.url = f"http://127.0.0.1:{listen}"
    return p


def curl(url, *args, token=AGENT.token):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                          "-H", f"Authorization: Bearer {token}", *args, url],
                         capture_output=True, text=True, timeout=30)
    return int(out.stdout or 0)


def hoopy(config, *args, env=None, token=None):
    env = {k: v for k, v in (env or os.environ).items() if k not in ("HOOPY_TOKEN", "API_AUTH")}
    if token:
        env["HOOPY_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "hoopy", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    up = Upstream(tmp_path_factory.mktemp("upstream"))
    yield up
    up.stop()


@pytest.fixture(scope="module")
def pristine(upstream, tmp_path_factory):
    """A real gateway's workdir, after: key made, requests allowed, refused and held, a
    decision with an escape sequence in its reason, wrong tokens, a restart, a clean stop."""
    d = tmp_path_factory.mktemp("signed")
    p = signed_process(d, upstream.port)
    p.start()
    try:
        assert curl(p.url + "/v1/customers/1") == 200
        assert curl(p.url + "/v1/customers/2", "-X", "DELETE") == 403
        assert curl(p.url + "/v1/customers/3", token="wrong") == 401
        held = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                                 "-H", f"Authorization: Bearer {AGENT.token}", "--data", '{"amount": 5}',
                                 p.url + "/v1/refunds"], stdout=subprocess.PIPE, text=True)
        pending = p.wait_pending(ALICE.token)
        r = hoopy(p.config, "deny", pending[0]["id"], "--reason", "no" + ESC, token=ALICE.token)
        assert r.returncode == 0, r.stderr
        assert held.communicate(timeout=20)[0] == "403"
    finally:
        p.stop()
    first_log = p.log_text()
    p.start()  # the same key again: no new key, no second creation event
    time.sleep(1.5)  # at least one idle heartbeat
    p.stop()
    p.first_log = first_log
    return p


def copy_of(pristine, tmp_path) -> tuple[Path, Path]:
    """A copy of the pristine workdir to attack: (config, database)."""
    d = tmp_path / "copy"
    shutil.copytree(pristine.workdir, d)
    return d / "hoopy.toml", d / "hoopy.db"


def public_key(pristine) -> str:
    return (pristine.workdir / "keys" / "gw.key.pub").read_text().strip()


def rows(db) -> list[dict]:
    c = sqlite3.connect(db)
    c.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in c.execute("SELECT * FROM events ORDER BY seq")]
    finally:
        c.close()


def rewrite(db, new_rows):
    """Replace the events table with ``new_rows`` (as an attacker with write access would)."""
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("BEGIN")
    c.execute("DELETE FROM events")
    cols = list(new_rows[0])
    for r in new_rows:
        c.execute(f"INSERT INTO events ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                  [r[k] for k in cols])
    c.execute("COMMIT")
    c.close()


def cut_tail(db, last):
    """Remove every event after ``last``, and the rows only they wrote (a careful attacker)."""
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("DELETE FROM events WHERE seq > ?", (last["seq"],))
    c.execute("DELETE FROM sessions WHERE started_us > ?", (last["time_us"],))
    c.execute("DELETE FROM approvals WHERE created_us > ?", (last["time_us"],))
    c.close()


def relink(rs, start=0):
    """Renumber from 1 and recompute every link (what the unkeyed chain could not detect)."""
    prev = rs[start - 1]["hash"] if start else GENESIS
    out = list(rs[:start])
    for i, r in enumerate(rs[start:], start):
        r = dict(r, seq=i + 1, prev=prev)
        r["hash"] = link(prev, r)
        prev = r["hash"]
        out.append(r)
    return out


# --- the key ----------------------------------------------------------------------------------


def test_the_key_is_made_once_announced_loudly_and_recorded(pristine):
    key = public_key(pristine)
    assert key.startswith("ed25519:")
    assert "NEW SIGNING KEY" in pristine.first_log and key in pristine.first_log
    later = pristine.log_text()[len(pristine.first_log):]
    assert "NEW SIGNING KEY" not in later and "signing the audit chain with key" in later
    created = [e for e in pristine.events("audit.key.created")]
    assert len(created) == 1 and created[0]["data"]["public_key"] == key
    assert oct((pristine.workdir / "keys" / "gw.key").stat().st_mode & 0o777) == "0o600"


def test_audit_key_prints_the_public_half_without_the_private_key(pristine, tmp_path):
    cfg, _ = copy_of(pristine, tmp_path)
    (cfg.parent / "keys" / "gw.key").unlink()  # an auditor's copy: the .pub only
    r = hoopy(cfg, "audit", "key")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == public_key(pristine)


def test_every_event_is_signed_after_a_clean_stop_and_verifies(pristine):
    r = hoopy(pristine.config, "audit", "verify", "--key", public_key(pristine))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 event(s) after it unsigned" in r.stdout and " valid, keys " in r.stdout
    evs = pristine.events()
    kinds = [e["kind"] for e in evs]
    assert "audit.heartbeat" in kinds and "session.end" in kinds and "auth.failed" in kinds
    # Every session end, decision and heartbeat carries the signature (the batch's last event).
    for e in evs:
        if e["kind"] in ("session.end", "approval.decided", "audit.heartbeat"):
            batch_end = next(x for x in evs if x["seq"] >= e["seq"] and x["signature"])
            assert batch_end["time_us"] - e["time_us"] < 1_000_000, e
    # The anchor received every signed head.
    heads = [json.loads(x) for x in (pristine.workdir / "anchor.jsonl").read_text().splitlines()]
    assert [h["seq"] for h in heads] == [e["seq"] for e in evs if e["signature"]]
    r = hoopy(pristine.config, "audit", "verify", "--key", public_key(pristine), "--anchor")
    assert r.returncode == 0 and "anchor: " in r.stdout and "found in the chain" in r.stdout, r.stdout


def test_verify_json_reports_the_last_signed_event(pristine):
    r = hoopy(pristine.config, "audit", "verify", "--key", public_key(pristine), "--json")
    out = json.loads(r.stdout)
    assert out["ok"] and out["signatures_checked"] and out["last_signed_seq"] == out["head_seq"]
    assert out["unsigned"] == 0 and out["last_signed_age_s"] >= 0


# --- the attacks -------------------------------------------------------------------------------


def test_delete_an_event_and_relink_every_link_after_it(pristine, tmp_path):
    cfg, db = copy_of(pristine, tmp_path)
    rs = rows(db)
    refused = next(i for i, r in enumerate(rs) if r["kind"] == "operation" and r["outcome"] == "refused")
    forged = relink(rs[:refused] + rs[refused + 1:], start=refused)
    rewrite(db, forged)
    # The hash chain alone is satisfied: that was the hole.
    r = hoopy(cfg, "audit", "verify")
    assert r.returncode == 0, r.stdout
    # With the key it is not: the first signature after the cut was over another hash.
    r = hoopy(cfg, "audit", "verify", "--key", public_key(pristine))
    assert r.returncode == 1
    assert "its signature does not verify" in r.stdout, r.stdout


def test_edit_one_event_and_relink_from_there(pristine, tmp_path):
    cfg, db = copy_of(pristine, tmp_path)
    rs = rows(db)
    i = next(i for i, r in enumerate(rs) if r["kind"] == "operation" and r["outcome"] == "refused")
    rs[i]["outcome"] = "allowed"
    rewrite(db, relink(rs, start=i))
    r = hoopy(cfg, "audit", "verify", "--key", public_key(pristine))
    assert r.returncode == 1 and "signature does not verify" in r.stdout, r.stdout


def test_cutting_the_tail_with_its_signatures_shows_in_the_age_and_the_anchor(pristine, tmp_path):
    cfg, db = copy_of(pristine, tmp_path)
    rs = rows(db)
    keep = next(i for i, r in enumerate(rs) if r["kind"] == "session.end")  # cut after the first session
    cut_tail(db, rs[keep])
    key = public_key(pristine)
    r = hoopy(cfg, "audit", "verify", "--key", key)
    # Nothing left is broken, but the report says how old the last signature is.
    assert f"last signed event {rs[keep]['seq']} at " in r.stdout
    r = hoopy(cfg, "audit", "verify", "--key", key, "--max-age", "0.001")
    assert r.returncode == 1 and "more than --max-age" in r.stdout
    # The anchor saw later heads: they are missing now.
    r = hoopy(cfg, "audit", "verify", "--key", key, "--anchor")
    assert r.returncode == 1 and "events were removed from the end" in r.stdout, r.stdout


def test_cut_tail_then_forged_unsigned_events_are_reported_unsigned_and_the_anchor_disagrees(pristine, tmp_path):
    cfg, db = copy_of(pristine, tmp_path)
    rs = rows(db)
    keep = next(i for i, r in enumerate(rs) if r["kind"] == "session.end")
    tail = [dict(r, signature=None) for r in rs[keep + 1:]]
    for r in tail:  # the refused DELETE now "allowed", the denial now an approval
        if r["kind"] == "operation" and r["outcome"] == "refused":
            r["outcome"] = "allowed"
    rewrite(db, relink(rs[:keep + 1] + tail, start=keep + 1))
    key = public_key(pristine)
    r = hoopy(cfg, "audit", "verify", "--key", key)
    assert r.returncode == 0 and f"{len(tail)} event(s) after it unsigned" in r.stdout, r.stdout
    r = hoopy(cfg, "audit", "verify", "--key", key, "--anchor")
    assert r.returncode == 1 and "rewritten after it was anchored" in r.stdout, r.stdout


def test_forged_signatures(pristine, tmp_path):
    key = public_key(pristine)
    cfg, db = copy_of(pristine, tmp_path)
    rs = rows(db)
    i = next(i for i, r in enumerate(rs) if r["signature"])
    kid = rs[i]["signature"].split(":")[1]
    for forged in (format_signature(kid, os.urandom(64)),  # random bytes under the real key id
                   rs[-1]["signature"],  # a real signature, moved to another event
                   "ed25519:" + kid + ":not-base64!"):
        c = sqlite3.connect(db, isolation_level=None)
        c.execute("UPDATE events SET signature = ? WHERE seq = ?", (forged, rs[i]["seq"]))
        c.close()
        r = hoopy(cfg, "audit", "verify", "--key", key)
        assert r.returncode == 1 and f"event {rs[i]['seq']}" in r.stdout, (forged, r.stdout)


def test_a_chain_resigned_with_a_key_of_the_attackers(pristine, tmp_path):
    cfg, db = copy_of(pristine, tmp_path)
    rs = rows(db)
    i = next(i for i, r in enumerate(rs) if r["kind"] == "operation" and r["outcome"] == "refused")
    forged = relink(rs[:i] + rs[i + 1:], start=0)
    mallory = Signer.generate()
    for r in forged:
        r["signature"] = mallory.sign(r["seq"], r["hash"]) if r["signature"] else None
    rewrite(db, forged)
    r = hoopy(cfg, "audit", "verify", "--key", public_key(pristine))
    assert r.returncode == 1 and f"signed by key {mallory.key_id}, which is not among the keys given" in r.stdout
    # The same key id as the real one does not help either.
    real_kid = rs[-1]["signature"].split(":")[1]
    for r_ in forged:
        if r_["signature"]:
            r_["signature"] = format_signature(real_kid, base64.b64decode(r_["signature"].split(":")[2]))
    rewrite(db, forged)
    r = hoopy(cfg, "audit", "verify", "--key", public_key(pristine))
    assert r.returncode == 1 and "signature does not verify" in r.stdout


def test_all_signatures_stripped(pristine, tmp_path):
    cfg, db = copy_of(pristine, tmp_path)
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("UPDATE events SET signature = NULL")
    c.close()
    r = hoopy(cfg, "audit", "verify", "--key", public_key(pristine))
    assert r.returncode == 1 and "no event is signed by the key(s) given" in r.stdout


EDITS = [
    ("approvals", "reason", "'fine'"), ("approvals", "rule", "'GET /v1/customers/*'"),
    ("approvals", "expires_us", "expires_us + 3600000000"), ("approvals", "decided_us", "decided_us - 1"),
    ("approvals", "operation", "'GET /v1/customers/1'"), ("approvals", "state", "'approved'"),
    ("approvals", "reviewer", "'mallory'"), ("approvals", "created_us", "created_us + 1"),
    ("approvals", "gateway", "'elsewhere'"), ("approvals", "connection", "'other'"),
    ("sessions", "peer", "'10.9.9.9:1'"), ("sessions", "end_reason", "'closed by peer'"),
    ("sessions", "ended_us", "NULL"), ("sessions", "recording", "'x.cast'"), ("sessions", "gateway", "'x'"),
    ("sessions", "application_name", "'psql'"), ("sessions", "identity", "'alice'"),
]


@pytest.mark.parametrize("table,column,value", EDITS, ids=[f"{t}.{c}" for t, c, _ in EDITS])
def test_every_column_of_every_row_is_covered(pristine, tmp_path, table, column, value):
    cfg, db = copy_of(pristine, tmp_path)
    c = sqlite3.connect(db, isolation_level=None)
    n = c.execute(f"UPDATE {table} SET {column} = {value} WHERE rowid = (SELECT min(rowid) FROM {table})").rowcount
    c.close()
    assert n == 1
    r = hoopy(cfg, "audit", "verify")
    assert r.returncode == 1 and f"the {table} table says {column}=" in r.stdout, r.stdout


def test_rows_deleted_or_inserted_are_caught(pristine, tmp_path):
    cfg, db = copy_of(pristine, tmp_path)
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("DELETE FROM approvals")
    c.close()
    r = hoopy(cfg, "audit", "verify")
    assert r.returncode == 1 and "is missing from the approvals table (deleted)" in r.stdout
    cfg, db = copy_of(pristine, tmp_path / "2")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("INSERT INTO approvals (id, gateway, requester, operation, state, created_us) "
              "VALUES ('ap-000000000000', 'g', 'agent', 'x', 'approved', 1)")
    c.close()
    r = hoopy(cfg, "audit", "verify")
    assert r.returncode == 1 and "ap-000000000000 is in the approvals table but no event wrote it" in r.stdout


def test_a_stripped_writes_column_is_an_edit(pristine, tmp_path):
    """Turning a v2 event into a v1-looking one (writes NULL) changes what its hash covers."""
    cfg, db = copy_of(pristine, tmp_path)
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("UPDATE events SET writes = NULL WHERE kind = 'approval.decided'")
    c.close()
    r = hoopy(cfg, "audit", "verify")
    assert r.returncode == 1 and "does not match its hash (edited)" in r.stdout


# --- evidence -----------------------------------------------------------------------------------


def test_the_evidence_archive_carries_the_signatures_and_its_checker_takes_the_key_from_you(pristine, tmp_path):
    cfg, _ = copy_of(pristine, tmp_path)
    out = tmp_path / "ev.tar.gz"
    r = hoopy(cfg, "evidence", "export", "-o", str(out))
    assert r.returncode == 0, r.stderr
    x = tmp_path / "x"
    with tarfile.open(out) as tar:
        tar.extractall(x, filter="data")
    root = x / "hoopy-evidence"
    verification = json.loads((root / "verification.json").read_text())
    assert verification["ok"] and verification["signatures_checked"] and verification["unsigned"] == 0
    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    assert sum(1 for e in events if e.get("signature")) == verification["signatures"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["signed_head"]["seq"] == events[-1]["seq"]
    key = public_key(pristine)

    def check(*args, cwd=root, env=None):
        return subprocess.run([sys.executable, "verify_events.py", "events.jsonl", *args], cwd=cwd,
                              capture_output=True, text=True, env=env, timeout=120)

    r = check("--key", key)
    assert r.returncode == 0 and "every link holds" in r.stdout and "valid" in r.stdout, r.stdout
    r = check()
    assert r.returncode == 0 and "NOT checked" in r.stdout
    # The same check with no cryptography package: the plain-Python Ed25519 gives the same answers.
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "cryptography.py").write_text("raise ImportError('blocked for the test')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker))
    r = check("--key", key, env=env)
    assert r.returncode == 0 and "valid" in r.stdout, r.stdout + r.stderr
    # An attacker who re-links the archive (and swaps public_keys.json) is caught with the real key.
    forged = [dict(e) for e in events]
    i = next(i for i, e in enumerate(forged) if e["kind"] == "operation" and e["outcome"] == "refused")
    del forged[i]
    prev = forged[i - 1]["hash"]
    for e in forged[i:]:
        e["seq"] -= 1
        e["prev"] = prev
        e["hash"] = link(prev, dict(e, data=e["data_json"]))
        prev = e["hash"]
    (root / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in forged))
    mallory = Signer.generate()
    (root / "public_keys.json").write_text(json.dumps({"keys": {mallory.key_id: mallory.public.text}}))
    assert check().returncode == 0  # links alone: satisfied, as the README warns
    for e2 in (env, None):
        r = check("--key", key, env=e2)
        assert r.returncode == 1 and "signature does not verify" in r.stdout, r.stdout
    # Readable data that differs from what the hash covers is refused too.
    events[1]["data"] = {"forged": True}
    (root / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    r = check("--key", key)
    assert r.returncode == 1 and "differs from the data its hash covers" in r.stdout


# --- the key file's rules -------------------------------------------------------------------


def test_a_mistyped_key_path_is_refused_not_a_new_identity(tmp_path):
    from tests.support import TWISTD

    p = HoopyProcess(tmp_path, AGENT.toml())
    text = p.config.read_text().replace('store_busy_timeout = "1s"\n',
                                        'store_busy_timeout = "1s"\nsigning_key = "file:no/such/dir/gw.key"\n')
    p.config.write_text(text)
    r = subprocess.run([sys.executable, "-m", "hoopy", "check", "-c", str(p.config)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "gateway.signing_key: folder" in r.stdout and "does not exist" in r.stdout
    r = subprocess.run([TWISTD, "-n", "--pidfile=", "hoopy", "-c", str(p.config)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "signing_key" in r.stdout + r.stderr
    assert not (tmp_path / "no").exists()


def test_key_files_that_do_not_match_are_refused(tmp_path):
    from hoopy.audit.signing import SigningKeyError, load_signer

    path = tmp_path / "gw.key"
    signer, created = load_signer(path)
    assert created and (tmp_path / "gw.key.pub").read_text().strip() == signer.public.text
    again, created = load_signer(path)
    assert not created and again.key_id == signer.key_id
    (tmp_path / "gw.key.pub").write_text(Signer.generate().public.text + "\n")
    with pytest.raises(SigningKeyError, match="holds another key"):
        load_signer(path)
    path.unlink()
    with pytest.raises(SigningKeyError, match="is missing but gw.key.pub is there"):
        load_signer(path)  # a deleted key is not silently replaced
    path.write_text("not a key")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        load_signer(path)


# --- when the store signs ----------------------------------------------------------------------


def _sig_store(tmp_path, **kw):
    from twisted.internet import reactor

    from hoopy.audit.store import SQLiteEventStore

    s = SQLiteEventStore(tmp_path / "s.db", "n", reactor)
    s.signer = Signer.generate()
    for k, v in kw.items():
        setattr(s, k, v)
    s.start()
    return s


@pytest_twisted.ensureDeferred
async def test_events_never_stay_unsigned_longer_than_the_interval(tmp_path):
    from twisted.internet import task
    from twisted.internet import reactor

    from hoopy.audit.events import Event

    s = _sig_store(tmp_path, sign_interval=0.2, heartbeat=60.0)
    try:
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:  # a steady flow, one event every 20 ms
            await s.append(Event("test.flow", "ok"))
            await task.deferLater(reactor, 0.02, lambda: None)
        await task.deferLater(reactor, 0.5, lambda: None)  # the flow stops: the tail is signed soon
    finally:
        await s.stop()
    rs = rows(tmp_path / "s.db")
    signed = [r for r in rs if r["signature"]]
    assert rs[-1]["signature"]  # the last event of the flow, or a heartbeat after it
    flow = [r for r in rs if r["kind"] == "test.flow"]
    for r in flow:  # every event is covered by a signature made soon after it
        by = next(x for x in signed if x["seq"] >= r["seq"])
        assert by["time_us"] - r["time_us"] < 600_000, (r["seq"], by["seq"])
    assert len(signed) < len(flow) / 3  # but not one signature per event


@pytest_twisted.ensureDeferred
async def test_an_idle_store_signs_a_heartbeat(tmp_path):
    from twisted.internet import reactor, task

    s = _sig_store(tmp_path, heartbeat=0.3)
    try:
        await task.deferLater(reactor, 1.1, lambda: None)
    finally:
        await s.stop()
    rs = rows(tmp_path / "s.db")
    assert len(rs) >= 2 and all(r["kind"] == "audit.heartbeat" and r["signature"] for r in rs)
    assert json.loads(rs[0]["data"])["why"] == "idle"


@pytest_twisted.ensureDeferred
async def test_session_ends_and_sealed_recordings_are_signed_at_once(tmp_path):
    from hoopy.audit.asciicast import AsciicastRecorder
    from tests.gateway_fixtures import request, write_config

    from hoopy import config as cm
    from hoopy.gateway import Gateway
    from twisted.internet import reactor

    p = write_config(tmp_path)
    p.write_text(p.read_text().replace('state = "hoopy.db"', 'state = "hoopy.db"\nsigning_key = "file:gw.key"\n'
                                                              'sign_interval = "10s"'))
    gw = Gateway(cm.load(p), reactor)
    gw.startService()
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:1")
        await s.start()
        await gw.policy.decide(s, request("GET", "/v1/a"))
        rec = AsciicastRecorder(gw.recordings / f"{s.id}.cast", s, 80, 24)
        rec.output(b"hello\r\n")
        sealed = await rec.seal()
        ended = await s.end()
        db = gw.config.gateway.state
        by_seq = {r["seq"]: r for r in rows(db)}
        assert by_seq[sealed.seq]["signature"] and by_seq[ended.seq]["signature"]
        assert not by_seq[ended.seq - 2]["signature"]  # the operation waited for the next signature
    finally:
        await gw.stopService()


# --- older stores ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_store_written_by_hoopy_0_1_still_verifies_and_is_continued(tmp_path):
    """The 0.1 schema (13 columns, v1 links, no writes): opened, upgraded, appended, verified;
    an edit of what its events determine is still caught."""
    db = tmp_path / "hoopy.db"
    c = sqlite3.connect(db, isolation_level=None)
    from hoopy.audit.writer import schema_sql

    old = schema_sql().replace("    writes TEXT,\n", "").replace(",\n    signature TEXT\n", "\n")
    c.executescript(old)
    prev, seq = GENESIS, 0
    sid = "0123456789abcdef"

    def add(kind, outcome, data, **kw):
        nonlocal prev, seq
        seq += 1
        r = dict(seq=seq, time_us=1_700_000_000_000_000 + seq, gateway="old", session=sid, identity="agent",
                 connection="api", protocol="http", peer="127.0.0.1:1", kind=kind, outcome=outcome,
                 data=json.dumps(data, sort_keys=True, separators=(",", ":")))
        r["prev"], r["hash"] = prev, link(prev, r)
        prev = r["hash"]
        c.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", list(r.values()))
        return r

    start = add("session.start", "ok", {})
    add("session.attribution", "ok", {"model": "m1"})
    end = add("session.end", "ok", {"reason": "closed"})
    c.execute("INSERT INTO sessions (id, gateway, identity, connection, protocol, peer, started_us, ended_us, "
              "end_reason, model) VALUES (?,?,?,?,?,?,?,?,?,?)",
              (sid, "old", "agent", "api", "http", "127.0.0.1:1", start["time_us"], end["time_us"], "closed", "m1"))
    c.close()
    cfg = tmp_path / "hoopy.toml"
    cfg.write_text('[gateway]\nstate = "hoopy.db"\nsigning_key = "file:gw.key"\n')
    r = hoopy(cfg, "audit", "verify")
    assert r.returncode == 0 and r.stdout.startswith("ok: 3 events"), r.stdout + r.stderr

    # The new gateway continues the same chain (and signs it), and all of it verifies.
    from hoopy import config as cm
    from hoopy.gateway import Gateway
    from twisted.internet import reactor

    gw = Gateway(cm.load(cfg), reactor)
    gw.startService()  # a new key: its creation is a signed event
    await gw.stopService()
    assert [x["kind"] for x in rows(db)][3:] == ["audit.key.created"]
    key = (tmp_path / "gw.key.pub").read_text().strip()
    r = hoopy(cfg, "audit", "verify", "--key", key)
    assert r.returncode == 0 and "0 event(s) after it unsigned" in r.stdout, r.stdout + r.stderr
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("UPDATE sessions SET model = 'someone-else'")
    c.close()
    r = hoopy(cfg, "audit", "verify", "--key", key)
    assert r.returncode == 1 and "model='someone-else'" in r.stdout


# --- anchors over the network ---------------------------------------------------------------


def test_anchor_to_syslog_and_http(upstream, tmp_path):
    import socket
    from http.server import BaseHTTPRequestHandler, HTTPServer

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    received = []

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    http = HTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    datagrams = []

    def listen():
        while not stop.is_set():
            try:
                datagrams.append(udp.recv(65536).decode())
            except OSError:
                pass

    stop = threading.Event()
    t = threading.Thread(target=listen, daemon=True)
    t.start()
    try:
        for target, where in ((f"syslog://127.0.0.1:{udp.getsockname()[1]}", datagrams),
                              (f"http://127.0.0.1:{http.server_port}/heads", received)):
            d = tmp_path / target.split(":")[0]
            d.mkdir()
            p = signed_process(d, upstream.port)
            p.config.write_text(p.config.read_text().replace('audit_anchor = "file:anchor.jsonl"',
                                                             f'audit_anchor = "{target}"'))
            p.start()
            assert curl(p.url + "/v1/customers/9") == 200
            p.stop()
            copy = d / "anchor-copy.log"
            copy.write_text("".join(x + "\n" for x in where))  # what the log host kept
            signed = [e for e in p.events() if e["signature"]]
            assert len(where) == len(signed) >= 2, (target, where)
            r = hoopy(p.config, "audit", "verify", "--key", public_key(p), "--anchor", str(copy))
            assert r.returncode == 0 and f"{len(signed)} found in the chain" in r.stdout, r.stdout
            if target.startswith("syslog"):
                assert all(x.startswith("<86>1 ") and "hoopy-anchor: {" in x for x in where)
            where.clear()
    finally:
        stop.set()
        http.shutdown()
        udp.close()


@pytest_twisted.ensureDeferred
async def test_retry_mode_columns_are_covered_too(tmp_path):
    """Columns another part of hoopy added to the approvals table (retry mode: mode, canonical,
    ttl_s, used_us, used_session) are covered without verify knowing them: the chain holds
    every row write as written."""
    from hoopy.policy.verdicts import Allow
    from tests.gateway_fixtures import ALICE as AL, hoopy_cli, request, start_gateway

    gw = start_gateway(tmp_path, api_extra='approvals = "retry"')
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:1")
        await s.start()
        op = request("POST", "/v1/refunds", body='{"amount": 5}')
        aid = (await s.decide(op)).approval
        r = await hoopy_cli(gw.config.path, "approve", aid, token=AL.token)
        assert r.returncode == 0, r.stderr
        assert isinstance(await s.decide(request("POST", "/v1/refunds", body='{"amount": 5}')), Allow)
        await s.end()
    finally:
        await gw.stopService()
    cfg, db = gw.config.path, gw.config.gateway.state
    assert (await hoopy_cli(cfg, "audit", "verify")).returncode == 0
    original = sqlite3.connect(db).execute("SELECT * FROM approvals").fetchone()
    for column, value in (("mode", "'hold'"), ("canonical", "'x'"), ("ttl_s", "ttl_s + 1"),
                          ("used_us", "used_us + 1"), ("used_session", "'other'"), ("state", "'approved'")):
        c = sqlite3.connect(db, isolation_level=None)
        c.execute(f"UPDATE approvals SET {column} = {value}")
        c.close()
        r = await hoopy_cli(cfg, "audit", "verify")
        assert r.returncode == 1 and f"the approvals table says {column}=" in r.stdout, (column, r.stdout)
        c = sqlite3.connect(db, isolation_level=None)
        c.execute("DELETE FROM approvals")
        c.execute(f"INSERT INTO approvals VALUES ({', '.join('?' * len(original))})", original)
        c.close()
    assert (await hoopy_cli(cfg, "audit", "verify")).returncode == 0
