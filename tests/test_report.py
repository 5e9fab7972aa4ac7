"""The auditor's page, ``report.html``, and ``controls.md``: both from one set of figures.

Unit tests of the figures and of the escaping (the record is written by callers: an identity,
a statement, a user name a client sent at login, a rule), then the whole path with real peers:
a real gateway in front of the real PostgreSQL, psql reads, refusals, held writes approved and
denied with ``hoopy approve``/``deny``, masked values, failed logins with HTML for a user name;
``hoopy evidence export``; the page opened in headless Chromium (Debian's ``chromium``), whose
displayed counts must be those recomputed here from the archive's own ``events.jsonl``, and
which must have made no network request and run nothing."""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import threading
import time
from collections import Counter
from html.parser import HTMLParser

import pytest

from hoopy.audit import figures, report
from tests.support import admin_sql, free_port, ident

EVIL = [
    '<script>alert(1)</script>',
    '"><img src=x onerror=alert(2)>',
    "' onmouseover='alert(3)",
    "</style><script>alert(4)</script>",
    "</title></svg><iframe src=//evil.example></iframe>",
    "a|b`c`*d*[e](http://evil.example/x.png)",
    "\x1b[2J\u202eevil\x00",
]

TAGS = {"html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "h3", "p", "b", "code", "span",
        "div", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "svg", "line", "text", "rect", "i", "br"}
ATTRS = {"lang", "charset", "http-equiv", "content", "name", "class", "id", "data-count", "data-card", "xmlns",
         "role", "width", "height", "viewbox", "aria-label", "x1", "y1", "x2", "y2", "stroke", "x", "y",
         "text-anchor", "font-size", "fill", "style"}


class Page(HTMLParser):
    """Every tag and attribute of a page, and its text."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.text, self.counts = Counter(), [], [], {}
        self._key = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        self.attrs += [(tag, k, v) for k, v in attrs]
        d = dict(attrs)
        self._key = d.get("data-count") or d.get("data-card")

    def handle_data(self, data):
        self.text.append(data)
        if self._key is not None:
            self.counts.setdefault(self._key, []).append(data)
            self._key = None


def evil_world():
    t0 = 1_780_000_000_000_000
    ev = []

    def add(kind, outcome=None, t=0, **kw):
        data = kw.pop("data", {})
        ev.append({"seq": len(ev) + 1, "time_us": t0 + t, "gateway": kw.pop("gateway", "gw"), "kind": kind,
                   "outcome": outcome, "data": data, **kw})

    for i, s in enumerate(EVIL):
        add("session.start", "ok", t=i * 10_000_000, identity=s, connection=s, protocol="postgres", session=f"s{i}",
            peer=s)
        add("operation", "refused", t=i * 10_000_000 + 1, identity=s, connection=s, session=f"s{i}", peer=s,
            data={"text": f"SELECT '{s}'", "rule": s, "reason": s})
        add("operation", "refused", t=i * 10_000_000 + 2, identity=s, data={"text": s, "reason": f"no grant allows {s}"})
        add("auth.failed", "refused", t=i * 10_000_000 + 3, connection=s,
            data={"user": s, "method": "password"})
        add("redaction", "masked", t=i * 10_000_000 + 4, identity=s,
            data={"columns": {s: 2}, "patterns": {"email": 1}, "sql": s})
        add("operation", "held", t=i * 10_000_000 + 5, identity=s, data={"approval": f"ap-{i}", "text": s})
        add("approval.decided", "approved" if i % 2 else "denied", t=i * 10_000_000 + 90_000_005, identity=s,
            data={"approval": f"ap-{i}", "reviewer": s, "requester": "someone", "operation": s})
        add(s, s, t=i * 10_000_000 + 6, gateway=s)
    identities = [{"name": s, "kind": "agent", "roles": ["reviewer"], "ssh_keys": [], "has_token": True} for s in EVIL]
    policy = {"grants": [{"identity": s, "connection": s, "allow": [s], "approve": [], "deny": [s], "expires": None}
                         for s in EVIL],
              "masking": [], "connections": {s: {"type": "postgres", "listen": s, "upstream": s,
                                                 "settings": {"tls_cert": s, "upstream_tls": s}} for s in EVIL}}
    verification = {"ok": False, "problem": EVIL[0], "events": len(ev), "head_seq": len(ev), "head_hash": EVIL[1],
                    "signatures": 1, "signatures_checked": True, "keys": {EVIL[2]: 1}, "unsigned": 0}
    return ev, identities, policy, verification


def test_everything_from_the_record_is_escaped_in_the_page():
    ev, identities, policy, verification = evil_world()
    f = figures.compute(ev, identities, policy, verification, gateway=EVIL[0], exported_us=ev[-1]["time_us"])
    page = report.render_html(f)
    p = Page(page)
    assert set(p.tags) <= TAGS, set(p.tags) - TAGS
    assert p.tags["script"] == 0 and p.tags["img"] == 0 and p.tags["iframe"] == 0
    assert p.tags["style"] == 1 and p.tags["html"] == 1 and p.tags["body"] == 1
    for tag, k, v in p.attrs:
        assert k in ATTRS, (tag, k, v)
        if k == "style":
            assert re.fullmatch(r"background:#[0-9a-f]{6}", v), v
    # shown, as text: every evil string (controls made visible), in many places
    text = "".join(p.text)
    for s in EVIL[:6]:
        assert text.count(s) >= 5, s
    assert "\\x1b[2J\\u202eevil\\x00" in text and "\x1b" not in page and "\u202e" not in page
    # every count a data-count attribute names is a number, the keys with evil names included
    assert p.counts[f"sessions.identity.{EVIL[1]}"] == ["1"]
    assert all(re.fullmatch(r"\d+", v[0]) for v in p.counts.values())


def test_controls_md_escapes_what_markdown_would_render():
    ev, identities, policy, verification = evil_world()
    f = figures.compute(ev, identities, policy, verification, gateway=EVIL[0])
    md = report.render_markdown(f)
    assert "<script" not in md and "<img" not in md and "<iframe" not in md and "\x1b" not in md
    assert "&lt;script&gt;" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(rows) == 1 + len(figures.CONTROL_NAMES)
    for row in rows:  # a | from the record never adds a column
        assert len(re.findall(r"(?<!\\)\|", row)) == 6, row
    assert "](http" not in md.replace("\\](http", "")


def test_the_page_loads_nothing():
    ev, identities, policy, verification = evil_world()
    page = report.render_html(figures.compute(ev, identities, policy, verification))
    meta = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page).group(1)
    assert "default-src 'none'" in meta and "script-src" not in meta
    # Tags with their quoted values emptied (text from the record has no raw "<" or '"': escaped)
    tags = [re.sub(r'"[^"]*"', '""', t) for t in re.findall(r"<[^>]*>", page)]
    assert not [t for t in tags if re.search(r"\b(src|href|action|srcset|poster|xlink:href|background)\s*=", t)]
    raw = re.findall(r"<[^>]*>", page)
    assert [t for t in raw if "://" in t and "evil.example" not in t] == \
        [t for t in raw if 'xmlns="http://www.w3.org/2000/svg"' in t]
    style = re.search(r"<style>(.*?)</style>", page, flags=re.S).group(1)
    assert "url(" not in style and "@import" not in style and "@font-face" not in style
    for tag, k, v in Page(page).attrs:
        assert "url(" not in (v or "") and not (v or "").startswith(("javascript:", "data:")), (tag, k, v)


def test_the_figures():
    t0 = 1_780_000_000_000_000
    s = 1_000_000
    ev = [
        {"seq": 1, "time_us": t0, "kind": "session.start", "outcome": "ok", "identity": "a", "protocol": "ssh",
         "connection": "web", "session": "s1", "gateway": "g", "data": {}},
        {"seq": 2, "time_us": t0 + s, "kind": "session.start", "outcome": "ok", "identity": "a", "protocol": "postgres",
         "connection": "db", "session": "s2", "gateway": "g", "data": {}},
        {"seq": 3, "time_us": t0 + 2 * s, "kind": "session.start", "outcome": "ok", "identity": "b",
         "protocol": "http", "connection": "api", "session": "s3", "gateway": "g", "data": {}},
        {"seq": 4, "time_us": t0 + 3 * s, "kind": "operation", "outcome": "allowed", "identity": "a", "data": {}},
        {"seq": 5, "time_us": t0 + 4 * s, "kind": "operation", "outcome": "refused", "identity": "a",
         "data": {"rule": "exec rm *", "reason": "denied"}},
        {"seq": 6, "time_us": t0 + 5 * s, "kind": "operation", "outcome": "refused", "identity": "b",
         "data": {"rule": None, "reason": "no grant allows write (for b on db)"}},
        {"seq": 7, "time_us": t0 + 6 * s, "kind": "operation", "outcome": "refused", "identity": "b",
         "data": {"reason": "cannot judge $(x)"}},
        {"seq": 8, "time_us": t0 + 7 * s, "kind": "operation", "outcome": "held", "identity": "a",
         "data": {"approval": "ap-1"}},
        {"seq": 9, "time_us": t0 + 97 * s, "kind": "approval.decided", "outcome": "approved", "identity": "a",
         "data": {"approval": "ap-1", "reviewer": "r", "requester": "a"}},
        {"seq": 10, "time_us": t0 + 98 * s, "kind": "operation", "outcome": "held", "identity": "a",
         "data": {"approval": "ap-2"}},
        {"seq": 11, "time_us": t0 + 128 * s, "kind": "approval.decided", "outcome": "denied", "identity": "a",
         "data": {"approval": "ap-2", "reviewer": "r", "requester": "a"}},
        {"seq": 12, "time_us": t0 + 129 * s, "kind": "approval.decided", "outcome": "approved", "identity": "x",
         "data": {"approval": "ap-old", "reviewer": "q", "requester": "x"}},  # held before the period
        {"seq": 13, "time_us": t0 + 130 * s, "kind": "approval.expired", "outcome": "expired", "data": {}},
        {"seq": 14, "time_us": t0 + 131 * s, "kind": "redaction", "outcome": "masked",
         "data": {"columns": {"public.c.ssn": 3}, "patterns": {"email": 2}}},  # postgres
        {"seq": 15, "time_us": t0 + 132 * s, "kind": "redaction", "outcome": "masked",
         "data": {"counts": {"email": 1, "ssn": 4}}},  # http
        {"seq": 16, "time_us": t0 + 133 * s, "kind": "redaction", "outcome": "masked",
         "data": {"detectors": {"credit_card": 5}}},  # mcp
        {"seq": 17, "time_us": t0 + 134 * s, "kind": "redaction", "outcome": "masked",
         "data": {"patterns": {"email": "x"}}},  # not a number: counts nothing
        {"seq": 18, "time_us": t0 + 135 * s, "kind": "auth.failed", "outcome": "refused", "connection": "db",
         "data": {"user": "eve"}},
        {"seq": 19, "time_us": t0 + 136 * s, "kind": "auth.failed", "outcome": "suppressed", "connection": "db",
         "data": {"failures": 40, "users": {"eve": 39, "mallory": 1}}},
        {"seq": 20, "time_us": t0 + 137 * s, "kind": "recording.sealed", "outcome": "ok", "data": {},
         "signature": "sig"},
    ]
    approvals = [{"id": "ap-old", "created_us": t0 - 3600 * s}]
    f = figures.compute(ev, [], {}, {"ok": True, "signatures": 1, "signatures_checked": False},
                        approvals=approvals)
    assert f["sessions"]["total"] == 3
    assert f["sessions"]["by_identity"] == [
        {"identity": "a", "count": 2, "protocols": {"ssh": 1, "postgres": 1}, "examples": [1, 2]},
        {"identity": "b", "count": 1, "protocols": {"http": 1}, "examples": [3]}]
    o = f["operations"]
    assert (o["allowed"], o["refused"], o["held"]) == (1, 3, 2)
    assert o["examples"]["refused"] == [5, 6, 7]
    assert {r["rule"]: r["count"] for r in f["refusals_by_rule"]} == {
        "exec rm *": 1, "(no grant: deny by default)": 1, "(could not be judged before it ran)": 1}
    a = f["approvals"]
    assert (a["decided"], a["approved"], a["denied"], a["expired"]) == (3, 2, 1, 1)
    r = {x["reviewer"]: x for x in a["by_reviewer"]}
    assert (r["r"]["approved"], r["r"]["denied"], r["r"]["median_s"], r["r"]["max_s"]) == (1, 1, 60.0, 90.0)
    assert r["q"]["max_s"] == 3600 + 129  # from the approval row: its request predates the period
    assert a["self_decided"] == 0
    red = f["redactions"]
    assert red["values"] == 3 + 2 + 1 + 4 + 5 and red["events"] == 4
    assert {x["rule"]: x["values"] for x in red["by_rule"]} == {
        "column public.c.ssn": 3, "email": 3, "ssn": 4, "credit_card": 5}
    fl = f["failed_logins"]
    assert (fl["logins"], fl["events"], fl["suppressed_events"]) == (41, 2, 1)
    assert fl["by_user"][0] == {"user": "eve", "count": 40}
    assert f["recordings"]["count"] == 1 and f["chain"]["signed_in_period"] == 1
    # activity: 137 s of events in 10-second buckets
    act = f["activity"]
    assert act["bucket_s"] == 10 and len(act["buckets"]) == 14
    assert sum(b["allowed"] + b["refused"] + b["held"] for b in act["buckets"]) == 6
    assert sum(b["sessions"] for b in act["buckets"]) == 3
    # a self-approval (impossible through hoopy) would be shown, not hidden
    ev.append({"seq": 21, "time_us": t0 + 140 * s, "kind": "approval.decided", "outcome": "approved",
               "data": {"approval": "ap-3", "reviewer": "a", "requester": "a"}})
    f = figures.compute(ev, [], {}, {"ok": True})
    assert f["approvals"]["self_decided"] == 1 and f["approvals"]["self_decided_examples"] == [21]
    # controls.md and the page show the same figures: every evidence count is in both
    md, page = report.render_markdown(f), Page(report.render_html(f))
    for c in f["controls"]:
        row = next(ln for ln in md.splitlines() if ln.startswith(f"| {c['id']} |"))
        for x in c["evidence"]:
            assert f"{x['count']} {report.md(x['label'])}" in row
            assert str(x["count"]) in p_counts(page, x["key"])


def p_counts(page, key):
    return page.counts.get(key, [])


def test_a_long_period_stays_a_readable_chart():
    t0 = 1_700_000_000_000_000
    ev = [{"seq": i, "time_us": t0 + i * 86400 * 1_000_000 * 3, "kind": "operation", "outcome": "allowed",
           "data": {}} for i in range(400)]  # over three years
    act = figures.compute(ev, [], {}, {"ok": True})["activity"]
    assert 1 <= len(act["buckets"]) <= figures.MAX_BUCKETS
    assert sum(b["allowed"] for b in act["buckets"]) == 400
    assert figures.compute([], [], {}, {"ok": True})["activity"]["buckets"] == []
    report.render_html(figures.compute([], [], {}, {"ok": True}))  # an empty period renders


# --- the whole path, in a real browser --------------------------------------------------------------

AGENT, REVIEWER = ident("agent"), ident("reviewer")
EVIL_USER = "<img src=x onerror=alert(1)>"
EVIL_SQL = "DELETE FROM customers -- <script>alert('sql')</script>"


@pytest.fixture
def database():
    name = f"hoopy_report_{secrets.token_hex(4)}"
    admin_sql(f"CREATE DATABASE {name}")
    admin_sql("CREATE TABLE customers (id int PRIMARY KEY, email text);"
              "INSERT INTO customers VALUES (1, 'ann@example.com'), (2, 'bob@example.org');"
              "CREATE TABLE invoices (id int PRIMARY KEY, amount int); INSERT INTO invoices VALUES (1, 100);", name)
    yield name
    admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def psql(port, sql, user=AGENT.name, password=AGENT.token):
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(["psql", f"host=127.0.0.1 port={port} user='{user}' dbname=x", "-XAt", "-c", sql],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is installed by .ci/run")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver",
                                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def expected_counts(events: list) -> dict:
    """What the page must show, recomputed from events.jsonl without hoopy's figures module."""
    ops = Counter(e["outcome"] for e in events if e["kind"] == "operation")
    decided = Counter(e["outcome"] for e in events if e["kind"] == "approval.decided")
    failed = sum(e["data"].get("failures", 0) if e["outcome"] == "suppressed" else 1
                 for e in events if e["kind"] == "auth.failed")
    masked = sum(n for e in events if e["kind"] == "redaction"
                 for k in ("columns", "patterns") for n in (e["data"].get(k) or {}).values())
    out = {"events.total": len(events), "sessions.total": sum(e["kind"] == "session.start" for e in events),
           "operations.allowed": ops["allowed"], "operations.refused": ops["refused"],
           "operations.held": ops["held"], "approvals.decided": sum(decided.values()),
           "approvals.approved": decided["approved"], "approvals.denied": decided["denied"],
           "failed_logins.logins": failed, "redactions.values": masked,
           "chain.signed_in_period": sum(bool(e.get("signature")) for e in events),
           "sessions.identity.agent": sum(e["kind"] == "session.start" and e["identity"] == AGENT.name
                                          for e in events),
           f"approvals.reviewer.{REVIEWER.name}": sum(e["kind"] == "approval.decided" for e in events)}
    for kind, n in Counter(e["kind"] for e in events).items():
        out[f"kind.{kind}"] = n
        out[f"events.kind.{kind}"] = n
    return out


def test_the_report_in_chromium_shows_the_archives_own_counts_and_loads_nothing(
        hoopy_gateway, database, browser, tmp_path):
    port = free_port()
    gw = hoopy_gateway(AGENT.toml() + REVIEWER.toml(kind="human", roles=["reviewer"]) + f"""
[connections.db]
type = "postgres"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port=5432"
upstream_user = "postgres"
upstream_database = "{database}"
upstream_tls = "disable"

[[grants]]
identity = "{AGENT.name}"
connection = "db"
allow = ["read public.customers", "read public.invoices"]
approve = ["write public.invoices"]

[[masking]]
connection = "db"
patterns = ["email"]
""", gateway_extra='signing_key = "file:gw.key"\nsign_interval = "50ms"', approval_timeout="30s")

    r = psql(port, "SELECT email FROM customers ORDER BY id")
    assert r.returncode == 0 and "ann@example.com" not in r.stdout, r.stdout  # masked
    assert psql(port, "SELECT amount FROM invoices").returncode == 0
    for sql in (EVIL_SQL, "CREATE TABLE x (y int)"):
        r = psql(port, sql)
        assert r.returncode != 0 and "hoopy" in r.stderr
    assert psql(port, "SELECT 1", user=EVIL_USER, password="wrong").returncode != 0
    assert psql(port, "SELECT 1", password="wrong").returncode != 0
    for verb in ("approve", "deny"):  # a held write, decided by the reviewer
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", psql(port, "UPDATE invoices SET amount = 1")))
        t.start()
        rows = gw.wait_pending(REVIEWER.token)
        d = gw.hoopy(verb, rows[0]["id"][:8], token=REVIEWER.token)  # by unique prefix
        assert d.returncode == 0, d.stderr
        t.join(60)
        assert (box["r"].returncode == 0) == (verb == "approve"), box["r"].stderr

    deadline = time.monotonic() + 10  # every event signed before the export (sign_interval 50ms)
    while time.monotonic() < deadline and not gw.events()[-1].get("signature"):
        time.sleep(0.1)
    out = tmp_path / "evidence.tar.gz"
    r = gw.hoopy("evidence", "export", "-o", str(out))
    assert r.returncode == 0, r.stderr
    x = tmp_path / "x"
    with tarfile.open(out) as tar:
        tar.extractall(x, filter="data")
    root = x / "hoopy-evidence"
    manifest = json.loads((root / "manifest.json").read_text())
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert listed["report.html"] == hashlib.sha256((root / "report.html").read_bytes()).hexdigest()
    events = [json.loads(ln) for ln in (root / "events.jsonl").read_text().splitlines()]
    want = expected_counts(events)
    # the test can fail: the period has each kind of evidence
    assert want["operations.allowed"] >= 2 and want["operations.refused"] == 2 and want["operations.held"] == 2
    assert want["approvals.approved"] == 1 and want["approvals.denied"] == 1
    assert want["failed_logins.logins"] == 2 and want["redactions.values"] == 2
    assert want["chain.signed_in_period"] >= 1

    url = (root / "report.html").as_uri()
    browser.get(url)
    from selenium.webdriver.common.by import By

    shown = {}
    for el in browser.find_elements(By.CSS_SELECTOR, "[data-count], [data-card]"):
        key = el.get_attribute("data-count") or el.get_attribute("data-card")
        shown.setdefault(key, set()).add(el.text.strip())
    for key, n in want.items():
        assert shown.get(key) == {str(n)}, (key, shown.get(key), n)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "intact" in browser.find_element(By.ID, "chain-status").text
    assert EVIL_USER in body and "<script>alert('sql')</script>" in body  # shown as text
    # nothing ran, nothing was loaded: no script element, no image, no request but the page itself
    assert browser.execute_script("return document.scripts.length + document.images.length "
                                  "+ document.querySelectorAll('iframe,object,embed,link').length") == 0
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    requests = []
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            requests.append(msg["params"].get("request", {}).get("url") or msg["params"].get("url"))
    assert requests and set(requests) == {url}, requests
    assert not [m for m in browser.get_log("browser") if m["level"] == "SEVERE"]
    # controls.md: the same figures, from the same module
    md = (root / "controls.md").read_text()
    ac3 = next(ln for ln in md.splitlines() if ln.startswith("| AC-3 |"))
    assert f"{want['operations.refused']} operations refused" in ac3
    assert f"{want['operations.held']} operations held" in ac3
