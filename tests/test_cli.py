"""The `hoopy` command as a reader and a reviewer uses it (issue 10 section 4, issue 15 sections 2
and 3): untrusted text is printed escaped everywhere, readers need only the [gateway] table,
`token new NAME`, `events`, ids by unique prefix, and help for everything. Real CLI
subprocesses against a real store and a real admin API."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from hoopy.policy.rules import Operation, Unit
from tests.gateway_fixtures import ALICE, CAROL, hoopy_cli, request, start_gateway, write_config

# What a hostile caller puts in everything it controls: a screen clear and cursor move that
# draws a fake row, a newline that starts one, a bidi override, zero-width and C1 characters.
EVIL = "x\x1b[2J\x1b[1;1HFAKE alice approved\r\nFAKEROW\u202eesrever\u200b\u2066\x9b31m\x07\x00\u2028"
RAW = ("\x1b", "\r", "\u202e", "\u200b", "\u2066", "\x9b", "\x07", "\x00", "\u2028", "\nFAKEROW")


def assert_clean(text: str, where: str):
    for c in RAW:
        assert c not in text, (where, repr(c), text[:2000])


def evil_op(path="/v1/refunds"):
    text = f"POST {path} {EVIL}"
    return Operation("http", "request", text, (Unit("POST", path),), {"method": "POST", "path": path,
                                                                       "body": EVIL})


@pytest_twisted.async_yield_fixture
async def evil(tmp_path):
    """A gateway whose store holds hostile text in every field a caller or reviewer controls."""
    gw = start_gateway(tmp_path)
    s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40001")
    await s.start()
    await s.attribute(model="claude" + EVIL, tool_call="call" + EVIL, application_name=EVIL)
    await gw.policy.decide(s, request("GET", "/v1/c" + EVIL))
    hold = await gw.policy.decide(s, evil_op())
    yield gw, s, hold
    if gw.running:
        await gw.stopService()


@pytest_twisted.ensureDeferred
async def test_every_command_prints_untrusted_text_escaped(evil):
    gw, s, hold = evil
    cfg = gw.config.path
    r = await hoopy_cli(cfg, "deny", hold.id, "--reason", "no" + EVIL.replace("\x00", ""), token=ALICE.token)
    assert r.returncode == 0, r.stderr
    assert_clean(r.stdout + r.stderr, "deny")
    await s.end()
    for args in (("sessions",), ("sessions", "--json"), ("show", s.id), ("show", s.id, "--json"),
                 ("approvals", "--all"), ("approvals", "--all", "--json"), ("approvals", hold.id),
                 ("approvals", hold.id, "--json"), ("events",), ("events", "--json"), ("audit", "verify")):
        r = await hoopy_cli(cfg, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert_clean(r.stdout + r.stderr, args)
        if "--json" in args:
            # A tool that prints a field (jq -r) is as safe as the table.
            def strings(v):
                if isinstance(v, str):
                    yield v
                elif isinstance(v, dict):
                    for k, x in v.items():
                        yield k
                        yield from strings(x)
                elif isinstance(v, list):
                    for x in v:
                        yield from strings(x)
            for text in strings(json.loads(r.stdout)):
                assert_clean(text, args)
    # Escaped, not dropped: the reader still sees what was sent.
    r = await hoopy_cli(cfg, "sessions")
    assert "claudex\\x1b[2J\\x1b[1;1HFAKE alice approved\\x0d\\x0aFAKEROW\\u202eesrever\\u200b" in r.stdout
    assert len(r.stdout.splitlines()) == 2  # the header and one row: no fake row
    r = await hoopy_cli(cfg, "approvals", hold.id)
    assert "reason:     nox\\x1b[2J" in r.stdout


def test_the_escaping_function():
    from hoopy.text import escape

    assert escape("a\x1b[31mb\u202ec\u200bd\ufeffe\u2028f\x9bg\U000e0041h\ud800i") == \
        "a\\x1b[31mb\\u202ec\\u200bd\\ufeffe\\u2028f\\x9bg\\U000e0041h\\ud800i"
    assert escape("line1\nline2\ttab\r", keep_newlines=True) == "line1\nline2\ttab\\x0d"
    assert escape("line1\nline2") == "line1\\x0aline2"
    # Ordinary text of every script stays as it is.
    for text in ("Grüße, 東京, مرحبا, שלום, 😀, naïve café", "SELECT * FROM t WHERE x = 'é'"):
        assert escape(text) == text
    assert escape("\u3164\u115f") == "\\u3164\\u115f"  # invisible fillers


# --- readers need only [gateway] ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_readers_never_resolve_a_connections_secrets(tmp_path):
    """An auditor without the upstream's password: `check` (the gateway's view) fails, every reader
    command works, and the evidence archive names where the secret lives, never a value."""
    os.environ["HOOPY_TEST_UPSTREAM_AUTH"] = "Bearer s3cr3t-value"
    try:
        p = write_config(tmp_path)
        p.write_text(p.read_text().replace('upstream = "http://127.0.0.1:9"', 'upstream = "http://127.0.0.1:9"\n'
                                           'upstream_headers = { Authorization = "env:HOOPY_TEST_UPSTREAM_AUTH" }'))
        from hoopy import config as cm
        from hoopy.gateway import Gateway
        from twisted.internet import reactor

        gw = Gateway(cm.load(p), reactor)
        gw.add_admin()
        gw.startService()
    finally:
        del os.environ["HOOPY_TEST_UPSTREAM_AUTH"]
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40002")
        await s.start()
        await gw.policy.decide(s, request("GET", "/v1/a"))
        hold = await gw.policy.decide(s, request("POST", "/v1/refunds"))
        r = await hoopy_cli(p, "check")
        assert r.returncode == 2 and "HOOPY_TEST_UPSTREAM_AUTH is not set" in r.stdout
        for args in (("sessions",), ("show", s.id), ("events",), ("approvals",), ("approvals", hold.id),
                     ("audit", "verify"), ("evidence", "export", "-o", str(tmp_path / "e.tar.gz"))):
            r = await hoopy_cli(p, *args)
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        r = await hoopy_cli(p, "approve", hold.id, token=ALICE.token)
        assert r.returncode == 0, r.stderr
        import tarfile

        with tarfile.open(tmp_path / "e.tar.gz") as tar:
            grants = tar.extractfile("hoopy-evidence/grants.json").read().decode()
        assert "<secret env:HOOPY_TEST_UPSTREAM_AUTH>" in grants and "s3cr3t" not in grants
        await s.end()
    finally:
        await gw.stopService()


def test_readers_do_not_even_read_other_tables(tmp_path):
    p = tmp_path / "hoopy.toml"
    p.write_text('[gateway]\nstate = "hoopy.db"\n\n[connections.db]\ntype = "postgres"\nbroken = true\n')
    import sqlite3

    from hoopy.audit.writer import schema_sql

    sqlite3.connect(tmp_path / "hoopy.db").executescript(schema_sql())
    r = subprocess.run([sys.executable, "-m", "hoopy", "sessions", "-c", str(p)], capture_output=True, text=True)
    assert r.returncode == 0 and "no sessions" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "hoopy", "check", "-c", str(p)], capture_output=True, text=True)
    assert r.returncode == 2


# --- token new NAME ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_token_new_prints_a_ready_identities_block(tmp_path):
    cfg = write_config(tmp_path)
    blocks = {}
    for name, flag in (("dave", "--reviewer"), ("ops.erin@corp", "--auditor"), ("bot-7", None)):
        r = subprocess.run([sys.executable, "-m", "hoopy", "token", "new", name] + ([flag] if flag else []),
                           capture_output=True, text=True, check=True)
        token = re.search(r"hpy_[A-Za-z0-9_-]+", r.stdout).group()
        parsed = tomllib.loads(r.stdout)["identities"][name]
        assert all(f'= "{v}"' in r.stdout or isinstance(v, list) for k, v in parsed.items())  # quoted
        role = {"--reviewer": ["reviewer"], "--auditor": ["auditor"]}.get(flag)
        assert parsed.get("roles") == role and parsed["kind"] == ("human" if role else "agent")
        blocks[name] = (r.stdout, token)
    cfg.write_text(cfg.read_text() + "\n" + "\n".join(b for b, _ in blocks.values()))
    r = await hoopy_cli(cfg, "check")
    assert r.returncode == 0, r.stdout
    # The new identities work: the auditor reads, never decides; the reviewer decides.
    from hoopy import config as cm
    from hoopy.gateway import Gateway
    from twisted.internet import reactor

    gw = Gateway(cm.load(cfg), reactor)
    gw.add_admin()
    gw.startService()
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40004")
        await s.start()
        hold = await gw.policy.decide(s, request("POST", "/v1/refunds"))
        r = await hoopy_cli(cfg, "approve", hold.id, token=blocks["ops.erin@corp"][1])
        assert r.returncode == 1 and "not a reviewer" in r.stderr, r.stderr
        r = await hoopy_cli(cfg, "approve", hold.id, token=blocks["dave"][1])
        assert r.returncode == 0 and "approved by dave" in r.stdout, r.stderr
    finally:
        await gw.stopService()
    r = subprocess.run([sys.executable, "-m", "hoopy", "token", "new", "bad name"], capture_output=True, text=True)
    assert r.returncode == 2
    r = subprocess.run([sys.executable, "-m", "hoopy", "token", "new", "x", "--reviewer", "--auditor"],
                       capture_output=True, text=True)
    assert r.returncode == 2


# --- events, prefixes ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_events_lists_filters_and_includes_failed_logins(tmp_path):
    gw = start_gateway(tmp_path)
    try:
        api = gw.config.connections["api"]
        for who in ("agent", "bob"):
            s = gw.new_session(who, api, "127.0.0.1:40005")
            await s.start()
            await gw.policy.decide(s, request("GET", "/v1/a"))
            await s.end()
        await gw.auth_failed(api, "10.1.1.1:5", "mallory", "bearer")
    finally:
        await gw.stopService()
    cfg = gw.config.path

    async def events(*args):
        r = await hoopy_cli(cfg, "events", "--json", *args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    everything = await events()
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    assert {e["kind"] for e in await events("--type", "auth.failed")} == {"auth.failed"}
    assert {e["identity"] for e in await events("--identity", "bob")} == {"bob"}
    assert len(await events("--connection", "api")) == len(everything)
    assert {e["kind"] for e in await events("--type", "session.*")} == {"session.start", "session.end"}
    assert len(await events("--since", "2h")) == len(everything)
    assert await events("--since", "2100-01-01") == []
    assert len(await events("--since", "2000-01-01T00:00:00Z", "--limit", "2")) == 2
    r = await hoopy_cli(cfg, "events", "--type", "auth.failed")
    assert "mallory" in r.stdout and "auth.failed" in r.stdout
    r = await hoopy_cli(cfg, "events", "--since", "yesterday-ish")
    assert r.returncode == 2 and "ISO 8601" in r.stderr


@pytest_twisted.ensureDeferred
async def test_ids_by_unique_prefix_and_ambiguous_ones_list_the_candidates(tmp_path):
    gw = start_gateway(tmp_path)
    try:
        api = gw.config.connections["api"]
        sessions = []
        for _ in range(17):  # 17 sessions: two share a first hex digit
            s = gw.new_session("agent", api, "127.0.0.1:40006")
            await s.start()
            sessions.append(s)
        holds = [await gw.policy.decide(sessions[0], request("POST", "/v1/refunds")) for _ in range(2)]
        cfg = gw.config.path
        s = sessions[0]
        unique = next(s.id[:n] for n in range(1, 17) if sum(x.id.startswith(s.id[:n]) for x in sessions) == 1)
        r = await hoopy_cli(cfg, "show", unique)
        assert r.returncode == 0 and f"session {s.id}:" in r.stdout
        firsts = [x.id[0] for x in sessions]
        shared = next(c for c in firsts if firsts.count(c) > 1)
        r = await hoopy_cli(cfg, "show", shared)
        assert r.returncode == 1 and "ambiguous" in r.stderr
        assert all(x.id in r.stderr for x in sessions if x.id.startswith(shared))
        r = await hoopy_cli(cfg, "replay", shared)
        assert r.returncode == 1 and "ambiguous" in r.stderr
        r = await hoopy_cli(cfg, "approvals", "ap-")
        assert r.returncode == 1 and all(h.id in r.stderr for h in holds)
        h = holds[0]
        short = next(h.id[:n] for n in range(4, 16) if not holds[1].id.startswith(h.id[:n]))
        r = await hoopy_cli(cfg, "approvals", short)
        assert r.returncode == 0 and f"id:         {h.id}" in r.stdout
        r = await hoopy_cli(cfg, "approve", "ap-", token=ALICE.token)
        assert r.returncode == 1 and "ambiguous" in r.stderr and not h.resolution.called
        r = await hoopy_cli(cfg, "approve", short, token=ALICE.token)
        assert r.returncode == 0 and f"{h.id} approved by alice" in r.stdout, r.stderr
        assert (await h.resolution).__class__.__name__ == "Allow"
        r = await hoopy_cli(cfg, "show", "zzz")
        assert r.returncode == 1 and "no session zzz" in r.stderr
        for s in sessions:
            await s.end()
    finally:
        await gw.stopService()


# --- help ---------------------------------------------------------------------------------------


def test_every_option_has_help_and_the_top_help_says_how_to_run_the_gateway():
    import argparse

    from hoopy.cli import parser

    def walk(p, path):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sp in action.choices.items():
                    yield from walk(sp, path + [name])
            elif not isinstance(action, argparse._HelpAction):
                yield path, action

    missing = [(" ".join(path), a.dest) for path, a in walk(parser(), ["hoopy"]) if not a.help]
    assert missing == []
    r = subprocess.run([sys.executable, "-m", "hoopy", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "twistd -n hoopy -c hoopy.toml" in r.stdout
    for cmd in (["events"], ["audit", "verify"], ["token", "new"], ["approve"]):
        r = subprocess.run([sys.executable, "-m", "hoopy", *cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0, cmd
