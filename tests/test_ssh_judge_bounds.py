"""Two bounds of the command-line judge, attacked in memory and through a real gateway to a real sshd:

- a rule's `*` never covers a `..` path segment, however it is written (`exec cat A/*` is not
  `cat A/../secret`): quoted, escaped, after `.` or `//`, trailing, percent-encoded, a pattern the
  shell expands to `..`, xargs input spliced into a path; path globs (`read`, `write`, `sftp`) never
  match a path with `.` or `..` segments;
- syntax nested deeper than MAX_NESTING levels is refused with a message that says so, never a
  RecursionError (and never a dropped connection): at the bound, one over, and 10,000 deep.
"""
from __future__ import annotations

import importlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hoopy.config import Grant
from hoopy.policy.service import _judge_unit
from hoopy.protocols import parse_rule
from hoopy.ssh import shell
from hoopy.ssh.rules import path_glob
from tests.support import HoopyProcess, ident
from tests.test_ssh import CLIENT_OPTS, Sshd, connection_toml, grant, keygen

judge_mod = importlib.import_module("hoopy.ssh.judge.judge")  # the module, not the judge() the package exports

ALLOW = ["exec cat A/*", "exec touch M/ok-*", "exec echo *", "exec true", "exec ls *", "exec cat A/sub/../x",
         "read A/**", "write M/**"]

# Lines that read S (outside A) or touch outside M/ok-*, through a rule's `*`. Each is refused.
TRAVERSALS = [
    ("plain", "cat A/../S"),
    ("deep", "cat A/sub/../../S"),
    ("dot-first", "cat A/./../S"),
    ("double-slash", "cat A//../S"),
    ("trailing", "cat A/sub/.."),
    ("only", "cat A/.."),
    ("single-quoted", "cat 'A/../S'"),
    ("double-quoted", 'cat "A/.."/S'),
    ("escaped-dots", "cat A/\\.\\./S"),
    ("quote-split", "cat A/'.'\".\"/S"),
    ("percent", "cat A/%2e%2e/S"),
    ("percent-upper", "cat A/%2E./S"),
    ("percent-double", "cat A/%252e%252e/S"),
    ("overlong-utf8", "cat A/%c0%ae%c0%ae/S"),
    ("two-dot-leader", "cat A/\u2025/S"),
    ("glob-qmark", "cat A/.?/S"),
    ("glob-star", "cat A/.*/S"),
    ("glob-dot-star", "cat A/..*/S"),
    ("second-arg", "cat A/x A/../S"),
    ("touch-out", "touch M/ok-x/../../pwned-touch"),
    ("sh-c", "sh -c 'cat A/../S'"),
    ("bash-lc", "bash -lc 'cat A/../S'"),
    ("xargs-spliced", "echo ../S | xargs -I{} cat A/{}"),
    ("timeout", "timeout 5 cat A/../S"),
    ("after-cd", "cd A && cat A/../S"),
]


def _fill(text, d):
    for k, v in d.items():
        text = text.replace(f"{k}/", f"{v}/").replace(f" {k}", f" {v}")
    return text


def _grant(allow, deny=(), unjudgeable="deny"):
    rules = lambda xs: tuple(parse_rule("ssh", x) for x in xs)  # noqa: E731
    return [Grant("agent", "web", rules(allow), (), rules(deny), None, 0, unjudgeable)]


def _judged(grants, line, shell_name="bash"):
    return [_judge_unit(grants, u) for u in shell.analyze(line, shell_name).units]


DIRS = {"A": "/var/log", "M": "/tmp/m", "S": "/etc/shadow"}


@pytest.mark.parametrize("name, line", TRAVERSALS)
def test_a_rule_star_never_covers_dotdot(name, line):
    g = _grant([_fill(r, DIRS) for r in ALLOW])
    text = _fill(line, DIRS)
    for dialect in ("sh", "bash"):
        js = _judged(g, text, dialect)
        assert any(j.outcome == "deny" for j in js), (dialect, js)


def test_what_is_not_dotdot_stays_allowed():
    g = _grant([_fill(r, DIRS) for r in ALLOW] + ["exec git log *"])
    for line in ["cat A/syslog", "cat A/sub/x.log", "cat A/.hidden", "cat A/...", "cat A/..x", "cat A/x..",
                 "cat A/.??", "cat A/%2e", "git log HEAD..main", "cat A/sub/../x", "touch M/ok-1"]:
        js = _judged(g, _fill(line, DIRS))
        assert [j.outcome for j in js] == ["allow"] * len(js), (line, js)


def test_the_refusal_says_why_and_can_be_held():
    g = _grant([_fill(r, DIRS) for r in ALLOW])
    (j,) = _judged(g, "cat /var/log/../../etc/shadow")
    assert j.outcome == "deny" and "'..'" in j.reason and "cannot judge" in j.reason, j
    (j,) = _judged(_grant([_fill(r, DIRS) for r in ALLOW], unjudgeable="approve"), "cat /var/log/../etc/shadow")
    assert j.outcome == "approve", j
    # A deny rule still sees through it: a `..` never turns a denied command into an allowed one.
    (j,) = _judged(_grant(["exec *"], deny=["exec cat /etc/*"]), "cat /etc/../etc/shadow")
    assert j.outcome == "deny" and "denied by rule" in j.reason, j


def test_path_globs_never_match_dot_segments():
    for glob in ("/srv/*/x", "/srv/**", "/srv/a*"):
        ok = path_glob(glob)
        for path in ("/srv/../x", "/srv/./x", "/srv/a/..", "/srv/..", "/srv/a/../../etc/shadow", "/srv/.", "/srv/a/."):
            assert not ok(path), (glob, path)
    assert path_glob("/srv/*/x")("/srv/.a/x") and path_glob("/srv/**")("/srv/a/b/c")


# --- nesting ---------------------------------------------------------------------------------

B = shell.MAX_NESTING
# (name, line nested k levels, levels the line has at k = the k where it reaches the bound)
CONSTRUCTS = [
    ("subshell", lambda k: "( " * k + "id" + " )" * k, B - 3),
    ("group", lambda k: "{ " * k + "id;" + " };" * k, B - 3),
    ("if", lambda k: "if true; then " * k + "id;" + " fi;" * k, B - 3),
]
# Every construct the judge recurses into, 10,000 deep (and a few hundred, under the node cap).
DEEP = {
    "subshell": lambda k: "( " * k + "id" + " )" * k,
    "group": lambda k: "{ " * k + "id;" + " };" * k,
    "if": lambda k: "if true; then " * k + "id;" + " fi;" * k,
    "while": lambda k: "while true; do " * k + "id;" + " done;" * k,
    "until": lambda k: "until false; do " * k + "id;" + " done;" * k,
    "for": lambda k: "for i in 1; do " * k + "id;" + " done;" * k,
    "case": lambda k: "case x in x) " * k + "id;;" + " esac;;" * k,
    "command-substitution": lambda k: "echo " + "$(" * k + "id" + ")" * k,
    "backquote-in-quotes": lambda k: "echo " + '"$(echo ' * k + "x" + ')"' * k,
    "arithmetic": lambda k: "echo $((" + "(" * k + "1" + ")" * k + "))",
    "negated-subshell": lambda k: "! ( " * k + "id" + " )" * k,
    "dbl-quoted-substitution": lambda k: "echo " + '"`echo ' * 1 + '"$(echo ' * k + "x" + ')"' * k + '`"',
    "redirected-group": lambda k: "{ " * k + "id;" + " } >/dev/null;" * k,
    "process-substitution": lambda k: "cat " + "<(cat " * k + "x" + ")" * k,
}
NESTED = "nested more than"


@pytest.fixture(autouse=True)
def _no_parse_clock(monkeypatch):
    """These tests are about the nesting bound. A 10,000-deep line on a loaded 2-core machine can take
    the parser past its 0.1 s (refused too, with the time message: tests/test_ssh_shell_attacks.py
    holds that bound), which would hide what is checked here; the clock is made generous instead."""
    monkeypatch.setattr(judge_mod, "PARSE_TIME", 30.0)


def _kind_text(line, dialect="bash"):
    parts = shell.analyze(line, dialect).parts
    return [(p.kind, p.text) for p in parts]


@pytest.mark.parametrize("name, make, at_bound", CONSTRUCTS)
def test_nesting_is_judged_up_to_the_bound_and_refused_past_it(name, make, at_bound):
    for k in (at_bound - 1, at_bound):
        parts = _kind_text(make(k))
        assert ("exec", "id") in parts and {kind for kind, _ in parts} == {"exec"}, (name, k, parts[:3])
    for k in (at_bound + 1, 10_000):
        (part,) = shell.analyze(make(k)).parts
        assert part.kind == "unjudgeable" and f"{NESTED} {B} levels deep" in part.text, (name, k, part)


@pytest.mark.parametrize("name", sorted(DEEP))
@pytest.mark.parametrize("k", [B + 1, 300, 10_000])
def test_deep_lines_are_refused_with_a_message_not_an_error(name, k):
    line = DEEP[name](k)
    for dialect in ("bash", "sh"):
        parts = shell.analyze(line, dialect).parts  # never raises
        assert all(p.kind in ("unjudgeable", "refused") for p in parts), (name, k, parts[:3])
    (part,) = shell.analyze(line).parts
    assert NESTED in part.text, part


def test_nesting_counts_across_sh_c_strings():
    inner = "( " * (B - 10) + "id" + " )" * (B - 10)
    assert _kind_text("sh -c " + shlex.quote(inner)) == [("exec", "id")]
    line = inner
    for _ in range(4):
        line = "sh -c " + shlex.quote("( ( ( " + line + " ) ) )")
    (part,) = shell.analyze(line).parts
    assert part.kind == "unjudgeable" and NESTED in part.text, part


def test_a_long_chain_is_not_nesting():
    """`a && b && c ...` and pipelines are judged in a loop: a long one is not refused as deep."""
    line = " && ".join(f"echo {i}" for i in range(300))
    assert [k for k, _ in _kind_text(line)] == ["exec"] * 300
    line = " | ".join(f"echo {i}" for i in range(300))
    assert [k for k, _ in _kind_text(line)] == ["exec"] * 300


def test_a_recursion_error_is_a_refusal_too():
    """The backstop: were the bound ever too high for the stack, the line is still refused."""
    script = ("import sys\nfrom hoopy.ssh import shell\nsys.setrecursionlimit(120)\n"
              f"p = shell.analyze({DEEP['if'](B - 3)!r}).parts\nprint(p[0].kind, p[0].text)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("unjudgeable") and "too deeply" in r.stdout, r


def test_a_rule_nested_too_deeply_is_a_configuration_error():
    from hoopy.policy.rules import RuleError

    with pytest.raises(RuleError, match="nested"):
        parse_rule("ssh", "exec echo " + "$(" * 200 + "x" + ")" * 200)


# --- through the gateway, to a real sshd ------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds")
    a, m = root / "a", root / "m"
    (a / "sub").mkdir(parents=True)
    m.mkdir()
    (a / "log.txt").write_text("a log line\n")
    (a / "x").write_text("x in a\n")
    secret = root / "secret.txt"
    secret.write_text("TOP-SECRET\n")
    d = {"A": str(a), "M": str(m), "S": str(secret)}
    sshd = Sshd(root / "sshd").start()
    key = root / "agent_key"
    pub = keygen(key)
    agent = ident("agent")
    conn, port = connection_toml(sshd)
    gw = HoopyProcess(root, agent.toml(ssh_keys=[pub]) + conn
                      + grant("agent", [_fill(r, d) for r in ALLOW])).start()
    try:
        yield gw, port, key, d, sshd
    finally:
        gw.stop()
        sshd.stop()


def _ssh(lab, line, timeout=60):
    gw, port, key, d, _ = lab
    return subprocess.run(["ssh", "-p", str(port), "-i", str(key), *CLIENT_OPTS, "agent@127.0.0.1", line],
                          capture_output=True, text=True, timeout=timeout)


def test_the_rules_work_upstream(lab):
    """The control: what the rules allow runs, `..` included where a rule spells it; and straight
    to sshd the traversal does read the secret (the refusals below are the gateway's)."""
    gw, port, key, d, sshd = lab
    r = _ssh(lab, f"cat {d['A']}/log.txt")
    assert (r.returncode, r.stdout) == (0, "a log line\n"), r.stderr
    r = _ssh(lab, f"cat {d['A']}/sub/../x")
    assert (r.returncode, r.stdout) == (0, "x in a\n"), r.stderr
    direct = subprocess.run(["ssh", "-p", str(sshd.port), "-i", str(sshd.client_key), *CLIENT_OPTS,
                             f"{sshd.user}@127.0.0.1", f"cat {d['A']}/sub/../../secret.txt"],
                            capture_output=True, text=True, timeout=60)
    assert direct.stdout == "TOP-SECRET\n", direct


@pytest.mark.parametrize("name, line", TRAVERSALS)
def test_no_traversal_reaches_the_upstream(lab, name, line):
    gw, port, key, d, _ = lab
    r = _ssh(lab, _fill(line, d))
    assert r.returncode == 126 and "hoopy: refused:" in r.stderr, (r.returncode, r.stdout, r.stderr)
    assert "TOP-SECRET" not in r.stdout
    assert not (Path(d["M"]).parent / "pwned-touch").exists()


@pytest.mark.parametrize("name", ["subshell", "if", "command-substitution", "while"])
def test_a_deep_line_through_the_gateway_is_refused_and_it_carries_on(lab, name):
    gw, port, key, d, _ = lab
    mark = f"{d['M']}/ok-deep-{name}"
    # (10,000 levels where the line fits in one argument of the ssh client: 128 KiB)
    r = _ssh(lab, DEEP[name](10_000 if name in ("subshell", "command-substitution") else 4_000).replace(
        "id", f"touch {mark}"))
    assert r.returncode == 126 and NESTED in r.stderr, (r.returncode, r.stderr[:500])
    assert not Path(mark).exists()
    # At the bound it is judged, and runs.
    r = _ssh(lab, DEEP["subshell"](B - 3).replace("id", f"touch {mark}-at-bound"))
    assert r.returncode == 0, r.stderr[:500]
    assert Path(f"{mark}-at-bound").exists()
    assert "Traceback" not in gw.log_text() and "RecursionError" not in gw.log_text()
