"""`hoopy check` names every problem with its key and exits 2; twistd refuses to start half-configured."""
import subprocess
import sys
from pathlib import Path

import pytest

from hoopy import config as cm
from tests.support import TWISTD, ident

# The contract lives beside the repository (../shared/spec); a copy is kept in tests/spec so that a
# clone on its own (CI) runs this too, and test_spec_copy_is_the_contract keeps the copy true.
SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "hoopy.example.toml"
SPEC_COPY = Path(__file__).resolve().parent / "spec" / "hoopy.example.toml"
SPEC = SHARED_SPEC if SHARED_SPEC.exists() else SPEC_COPY


def run_check(path):
    return subprocess.run([sys.executable, "-m", "hoopy", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)


def write(tmp_path, text, name="hoopy.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """
[gateway]
admin_listen = "tcp:18099:interface=127.0.0.1"
approval_timeout = "2m"

{agent}
{alice}

[connections.api]
type = "http"
listen = "tcp:18080:interface=127.0.0.1"
upstream = "http://127.0.0.1:9"
upstream_headers = {{ Authorization = "env:HOOPY_TEST_API_AUTH" }}

[[grants]]
identity = "agent"
connection = "api"
allow = ["GET /v1/customers/*"]
approve = ["POST /v1/refunds"]
deny = ["* /admin/**"]
expires = "2030-01-01T00:00:00Z"

[[masking]]
connection = "api"
fields = ["ssn", "card.number"]
patterns = ["email", "regex:ACCT-[0-9]{{8}}"]
"""


def good_text():
    return GOOD.format(agent=ident("agent").toml(), alice=ident("alice").toml(kind="human", roles=["reviewer"]))


def test_good_config_is_ok(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOPY_TEST_API_AUTH", "Bearer s3cret")
    p = write(tmp_path, good_text())
    r = run_check(p)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: 2 identities, 1 connections, 1 grants, 1 masking rules" in r.stdout
    cfg = cm.load(p)
    assert cfg.connections["api"].settings.upstream_headers["Authorization"].value == "Bearer s3cret"
    assert "s3cret" not in repr(cfg.connections["api"].settings)  # secrets never in reprs
    assert cfg.gateway.approval_timeout == 120
    assert cfg.identities["alice"].is_reviewer and not cfg.identities["agent"].is_reviewer


def test_spec_example_parses_once_its_placeholders_are_real(tmp_path, monkeypatch):
    """Every key of the contract's example is understood (placeholders swapped for real values)."""
    p = real_example(tmp_path, monkeypatch, SPEC.read_text())
    r = run_check(p)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = cm.load(p)
    assert set(cfg.connections) == {"billing-db", "web-1", "internal-api"}
    assert [g.identity for g in cfg.grants] == ["billing-agent"] * 3
    assert cfg.grants[0].expires.year == 2026
    assert cfg.masking[0].columns == ("public.customers.ssn", "public.customers.account_number")
    assert [d.name for d in cfg.masking[0].patterns] == ["email", "credit_card", "us_ssn"]


def test_spec_copy_is_the_contract():
    if not SHARED_SPEC.exists():
        pytest.skip("../shared/spec is not beside this clone: nothing to compare the copy with")
    assert SPEC_COPY.read_text() == SHARED_SPEC.read_text(), "tests/spec/hoopy.example.toml: copy it again"


def test_documented_config_with_every_optional_key(tmp_path, monkeypatch):
    """docs/hoopy.toml documents hoopy's own keys, commented out: each is accepted."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "hoopy.toml").read_text()
    optional = re.findall(r"^# ([a-z_]+) = .*\(optional", text, flags=re.M)
    assert len(optional) >= 12, optional
    text = re.sub(r"^# ([a-z_]+ = .*)$", lambda m: m.group(1) if "(optional" in m.group(1) or
                  m.group(1).startswith("ciphers") else m.group(0), text, flags=re.M)
    text = text.replace("/etc/hoopy/db-ca.pem", "/etc/hoopy/tls.crt")
    p = real_example(tmp_path, monkeypatch, text)
    r = run_check(p)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = cm.load(p)
    assert cfg.gateway.name == "gw-1"
    assert cfg.connections["billing-db"].approval_timeout == 120
    assert cfg.grants[1].deny[0].text == "exec systemctl restart sshd"


def real_example(tmp_path, monkeypatch, text):
    """The secrets docs/hoopy.toml names (its header says how to make them), beside it."""
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "k").write_bytes(key.export_private_key())
    (tmp_path / "kh").write_text("[10.0.0.5]:22 " + key.export_public_key().decode())
    (tmp_path / "crt").write_text("x")
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys" / "web-1").write_bytes(key.export_private_key())
    (tmp_path / "known_hosts").write_text("10.0.0.5 " + key.export_public_key().decode())
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("x")
    a, b = ident("billing-agent"), ident("alice")
    text = text.replace('"ssh-ed25519 AAAAC3Nza... billing-agent"',
                        '"' + key.export_public_key().decode().strip() + ' billing-agent"')
    text = text.replace('token_scram = "SCRAM-SHA-256$4096:c2FsdA==$U3RvcmVk...=:U2VydmVy...="',
                        a.toml().splitlines()[-1])
    text = text.replace('token_sha256 = "..."', f'token_sha256 = "{b.sha256}"')
    for path in ("/etc/hoopy/tls.crt", "/etc/hoopy/tls.key"):
        text = text.replace(path, str(tmp_path / "crt"))
    text = text.replace("/etc/hoopy/keys/web-1", str(tmp_path / "k"))
    text = text.replace("/etc/hoopy/known_hosts", str(tmp_path / "kh"))
    text = text.replace("/etc/hoopy/ssh_host_ed25519_key", str(tmp_path / "hk"))
    monkeypatch.setenv("BILLING_DB_PASSWORD", "pw")
    monkeypatch.setenv("INTERNAL_API_AUTH", "Bearer x")
    return write(tmp_path, text)


BROKEN = """
[gateway]
admin_listen = "tcp:18099:interface=127.0.0.1"
approval_timeout = "soon"
colour = "blue"

[identities.agent]
kind = "robot"
token_sha256 = "abc"
roles = ["boss"]
ssh_keys = ["ssh-ed25519 not-base64"]

[connections.api]
type = "http"
listen = "tcp:18099:interface=127.0.0.1"
upstream = "ftp://example"
upstream_headers = { Authorization = "Bearer inline-secret" }

[connections.db]
type = "postgres"
listen = "tcp:notaport"
upstream = "tcp:host=127.0.0.1:port=5432"
upstream_user = "ro"
upstream_password = "file:/nonexistent/hoopy-secret"

[connections.other]
type = "gopher"
listen = "tcp:18100"
upstream = "x"

[[grants]]
identity = "nobody"
connection = "api"
allow = ["get /x", "GET no-slash"]

[[grants]]
identity = "agent"
connection = "db"
allow = ["select public.customers", "read public.x;drop"]

[[grants]]
identity = "agent"
connection = "missing"
allow = ["shell"]
expires = "tomorrow"

[[masking]]
connection = "api"
patterns = ["phone", "regex:("]
columns = ["public.t.c"]
"""

EXPECTED = [
    ("gateway.approval_timeout", "not a duration"),
    ("gateway.colour", "unknown key"),
    ("identities.agent.kind", "'robot' is not one of agent, human"),
    ("identities.agent.token_sha256", "64 hex digits"),
    ("identities.agent.roles[0]", "unknown role 'boss'"),
    ("identities.agent.ssh_keys[0]", "not an OpenSSH public key"),
    ("connections.api.listen", "port 18099 is already used by gateway.admin_listen"),
    ("connections.api.upstream", "is not an http:// or https:// URL"),
    ("connections.api.upstream_headers.Authorization", "secrets are never inline"),
    ("connections.db.listen", "bad endpoint string 'tcp:notaport'"),
    ("connections.db.upstream_password", "cannot read secret file /nonexistent/hoopy-secret"),
    ("connections.other.type", "'gopher' is not one of"),
    ("grants[0].identity", "unknown identity 'nobody'"),
    ("grants[0].allow[0]", "is not a method"),
    ("grants[0].allow[1]", "the path must start with /"),
    ("grants[1].allow[0]", "postgres rules start with read, write, lock, ddl, admin or all"),
    ("grants[1].allow[1]", "is not a table name"),
    ("grants[2].connection", "unknown connection 'missing'"),
    ("grants[2].expires", "is not an RFC 3339 time"),
    ("masking[0].patterns[0]", "unknown pattern 'phone'"),
    ("masking[0].patterns[1]", "bad regular expression"),
    ("masking[0].columns", "columns apply to postgres connections only"),
]


def test_check_names_every_problem_with_its_key(tmp_path):
    p = write(tmp_path, BROKEN)
    r = run_check(p)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    for key, fragment in EXPECTED:
        hits = [ln for ln in lines if f": {key}: " in ln]
        assert hits, f"no problem named for {key}:\n{r.stdout}"
        assert any(fragment in ln for ln in hits), f"{key}: expected {fragment!r} in {hits}"
    assert "inline-secret" not in r.stdout  # never echo a would-be secret


def test_duplicate_listeners_between_connections(tmp_path):
    text = """
[connections.a]
type = "http"
listen = "tcp:18200"
upstream = "http://127.0.0.1:9"
[connections.b]
type = "http"
listen = "tcp:18200:interface=127.0.0.1"
upstream = "http://127.0.0.1:9"
"""
    r = run_check(write(tmp_path, text))
    assert r.returncode == 2
    assert "connections.b.listen: port 18200 is already used by connections.a.listen" in r.stdout


def test_not_toml_and_missing_file(tmp_path):
    r = run_check(write(tmp_path, "[gateway\nstate="))
    assert r.returncode == 2 and "not valid TOML" in r.stdout
    r = run_check(tmp_path / "absent.toml")
    assert r.returncode == 2 and "cannot read" in r.stdout


def test_twistd_refuses_a_broken_config(tmp_path):
    p = write(tmp_path, BROKEN)
    r = subprocess.run([TWISTD, "-n", "--pidfile=", "hoopy", "-c", str(p)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "has problems; not starting" in out and "grants[0].identity: unknown identity 'nobody'" in out


def test_twistd_refuses_another_reactor(tmp_path):
    p = write(tmp_path, "[gateway]\n")
    r = subprocess.run([TWISTD, "-n", "--pidfile=", "-r", "poll", "hoopy", "-c", str(p)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "hoopy needs the asyncio reactor (asyncssh runs on it), not twisted.internet.pollreactor: "
        "drop -r or use -r asyncio"]


def test_twistd_lists_the_plugin():
    r = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, timeout=60)
    assert any(line.split()[:1] == ["hoopy"] for line in r.stdout.splitlines()), r.stdout


@pytest.mark.parametrize("value,seconds", [("5m", 300), ("30s", 30), (45, 45), ("250ms", 0.25), ("1h", 3600)])
def test_durations(value, seconds):
    from hoopy.units import parse_duration

    assert parse_duration(value) == seconds
