"""The shell judge (hoopy.ssh.shell) and the exec rules that read it, in memory: what a command
line will run, part by part, and what a grant makes of it."""
from __future__ import annotations

import hashlib
import time

import pytest
from hypothesis import given, settings, strategies as st

from hoopy.config import Grant
from hoopy.policy.service import _judge_unit
from hoopy.protocols import parse_rule
from hoopy.ssh import shell
from hoopy.ssh.rules import _could_match, _tokens


def _nested(n):
    import shlex

    line = "ls"
    for _ in range(n):
        line = "sh -c " + shlex.quote(line)
    return line


def grant(allow=(), approve=(), deny=(), unjudgeable="deny"):
    rules = lambda xs: tuple(parse_rule("ssh", x) for x in xs)  # noqa: E731
    return Grant("agent", "web", rules(allow), rules(approve), rules(deny), None, 0, unjudgeable)


def verdict(line, allow=(), approve=(), deny=(), unjudgeable="deny", shell_name="bash"):
    g = [grant(allow, approve, deny, unjudgeable)]
    js = [_judge_unit(g, u) for u in shell.analyze(line, shell_name).units]
    if any(j.outcome == "deny" for j in js):
        return "deny"
    return "approve" if any(j.outcome == "approve" for j in js) else "allow"


def parts(line, shell_name="bash"):
    return [(p.kind, p.text) for p in shell.analyze(line, shell_name).parts]


# --- what the parts are -----------------------------------------------------------------------

@pytest.mark.parametrize("line, want", [
    # The wrappers MCP servers and agents send, seen through.
    ("timeout 120 sh -c 'echo hello'", [("exec", "echo hello")]),
    ("cd /srv/app && git status", [("exec", "git status")]),
    ("bash -lc 'cd /srv && make test'", [("exec", "make test")]),
    ("nohup nice -n 5 stdbuf -oL env -i LANG=C timeout -s KILL 5 ls -l", [("exec", "ls -l")]),
    ("command -p exec time -p ls", [("exec", "ls")]),
    ("sh -c \"sh -c 'sh -c uptime'\"", [("exec", "uptime")]),
    # Lists, pipelines, groups, conditions: every simple command on its own.
    ("ps aux | grep nginx", [("exec", "ps aux"), ("exec", "grep nginx")]),
    ("journalctl -u api --no-pager | tail -50", [("exec", "journalctl -u api --no-pager"), ("exec", "tail -50")]),
    ("systemctl status api || true", [("exec", "systemctl status api"), ("exec", "true")]),
    ("a; b & c\nd", [("exec", "a"), ("exec", "b"), ("exec", "c"), ("exec", "d")]),
    ("(a; b) | { c; d; }", [("exec", "a"), ("exec", "b"), ("exec", "c"), ("exec", "d")]),
    ("if a; then b; elif c; then d; else e; fi", [("exec", x) for x in "abcde"]),
    ("while a; do b; done; until c; do d; done", [("exec", x) for x in "abcd"]),
    ("! a", [("exec", "a")]),
    # Quote removal: words as the program gets them.
    ("echo 'hello world'", [("exec", "echo 'hello world'")]),
    ("grep \"a|b\" f", [("exec", "grep 'a|b' f")]),
    ("echo a\\ b c\\;d", [("exec", "echo 'a b' 'c;d'")]),
    ("echo a\\\nb", [("exec", "echo ab")]),  # a line continuation joins the word
    # Redirections are parts.
    ("cat < /etc/hosts > /tmp/out 2>&1", [("read", "/etc/hosts"), ("write", "/tmp/out"), ("exec", "cat")]),
    ("ls >/dev/null 2>/dev/null </dev/null", [("exec", "ls")]),
    ("cd /srv && cat x >> out.txt", [("write", "/srv/out.txt"), ("exec", "cat x")]),
    ("cd /a || exit 1; echo > y", [("write", "/a/y"), ("exec", "echo")]),
    ("cd /b && (cd /a && echo > x)", [("write", "/a/x"), ("exec", "echo")]),
    ("ls | tee /tmp/a -a /tmp/b", [("exec", "ls"), ("write", "/tmp/a"), ("write", "/tmp/b")]),
    ("echo x > /etc//./app/x.conf", [("write", "/etc/app/x.conf"), ("exec", "echo x")]),
    # xargs: the input becomes arguments the rule's * must cover.
    ("find /srv -name '*.py' | xargs grep -n TODO",
     [("exec", "find /srv -name '*.py'"), ("exec", "grep -n TODO <xargs input>")]),
])
def test_parts(line, want):
    assert parts(line) == want


@pytest.mark.parametrize("line, why", [
    ("echo $(id)", "command substitution"),
    ("echo `id`", "command substitution"),
    ("echo \"$(id)\"", "command substitution"),
    ("cat <(ls)", "process substitution"),
    ("eval ls", "eval"),
    ("source /tmp/x", "source"),
    (". /tmp/x", ". runs"),
    ("f() { ls; }; f", "function definition"),
    ("alias ls=rm; ls", "aliases"),
    ("trap 'rm -rf /' EXIT", "trap"),
    ("((x++))", "arithmetic"),
    ("echo $((x=5))", "arithmetic"),
    ("echo a > rel", "relative path"),
    ("cd /srv; echo a > rel", "relative path"),
    ("cd $HOME && echo a > rel", "relative path"),
    ("echo a > /tmp/../etc/passwd", "'..'"),
    ("echo a > $F", "would be expanded"),
    ("env -S 'ls -l'", "env -S"),
    ("env -C /tmp ls", "env -C"),
    ("bash -i", "bash -i"),
    ("bash --rcfile /tmp/x -c ls", "bash --rcfile"),
    ("timeout --frobnicate 5 ls", "timeout --frobnicate"),
    ("timeout x ls", "not a duration"),
    ("exec -a ls busybox rm -rf /", "exec -a"),
    ("xargs -a /etc/shadow echo", "xargs -a"),
    ("ls | xargs -I{} sh -c 'echo {}'", "spliced"),
    ("cat <<EOF; echo\nx\nEOF", "does not parse"),
    ("echo 'unterminated", "does not parse"),
    ("echo \x1b[2J", "control characters"),
    ("cat <<EOF > /tmp/x\n$(id)\nEOF", "here-document with expansions"),
    (_nested(7), "deeper"),  # (deeper still, the line is too large: _nested(10) is 39 KB, 20000+ nodes)
])
def test_unjudgeable(line, why):
    got = shell.analyze(line).parts
    texts = [p.text for p in got if p.kind == "unjudgeable"]
    assert texts and any(why in t for t in texts), got


@pytest.mark.parametrize("line", [
    "env LD_PRELOAD=/tmp/x.so ls", "BASH_ENV=/tmp/x sh -c ls", "PATH=/tmp ls", "PATH=/tmp; ls",
    "export PATH=/tmp", "env -i PATH=/tmp ls", "GIT_SSH_COMMAND=x git fetch", "for PATH in /tmp; do ls; done",
    "http_proxy=http://evil curl x", "echo x > /dev/tcp/10.0.0.1/80", "cat < /dev/udp/10.0.0.1/53",
])
def test_refused_outright(line):
    assert any(p.kind == "refused" for p in shell.analyze(line).parts), shell.analyze(line).parts
    assert verdict(line, allow=["exec *", "write /**", "read /**"], unjudgeable="approve") == "deny"


def test_sh_grammar_is_stricter_than_bash():
    for line in ("ls |& cat", "ls &> /tmp/x", "echo $'a'", "cat <<< x", "[[ -f /x ]]"):
        assert parts(line, "bash")[0][0] != "unjudgeable", line
        assert parts(line, "sh") == [("unjudgeable", parts(line, "sh")[0][1])], line
        assert "bash syntax" in parts(line, "sh")[0][1]
    # Inside `sh -c`, the string is sh's, whatever the login shell.
    assert parts("sh -c 'ls &> /tmp/x'")[0][0] == "unjudgeable"
    assert parts("bash -c 'ls &> /tmp/x'")[0] == ("write", "/tmp/x")
    assert parts("ls", "zsh")[0][0] == "unjudgeable"
    assert shell.dialect_of("/usr/bin/bash") == "bash" and shell.dialect_of("/bin/dash") == "sh"


def test_heredoc_is_recorded_by_size_and_hash():
    line = "cat > /etc/app/conf.d/x.conf <<'EOF'\nlisten 80;\nroot $docroot;\nEOF"
    a = shell.analyze(line)
    assert [(p.kind, p.text) for p in a.parts] == [("write", "/etc/app/conf.d/x.conf")]
    body = b"listen 80;\nroot $docroot;\n"
    (h,) = a.heredocs
    assert h["bytes"] == len(body) and h["sha256"] == hashlib.sha256(body).hexdigest()
    assert h["writes"] == ["/etc/app/conf.d/x.conf"]
    # Unquoted, with no expansion: the shell's backslash rules apply, the result is hashed.
    (h,) = shell.analyze("tee /tmp/t <<EOF\ncost \\$5\nEOF").heredocs
    assert h["sha256"] == hashlib.sha256(b"cost $5\n").hexdigest()
    (h,) = shell.analyze("cat <<-EOF > /tmp/t\n\tindented\n\tEOF").heredocs
    assert h["sha256"] == hashlib.sha256(b"indented\n").hexdigest()


# --- what a grant makes of a line -------------------------------------------------------------

AGENT = dict(allow=["exec git status", "exec git log *", "exec ps aux", "exec grep *", "exec tail -*",
                    "exec journalctl -u * --no-pager", "exec systemctl status *", "exec true", "exec echo *",
                    "exec cat /var/log/*", "write /etc/app/conf.d/*.conf", "read /etc/hosts"],
             approve=["exec systemctl restart *"],
             deny=["exec systemctl status secret*", "exec rm *"])


@pytest.mark.parametrize("line, want", [
    ("cd /srv/app && git status", "allow"),
    ("timeout 120 sh -c 'git status'", "allow"),
    ("ps aux | grep nginx", "allow"),
    ("journalctl -u api --no-pager | tail -50", "allow"),
    ("systemctl status api || true", "allow"),
    ("cat > /etc/app/conf.d/x.conf <<'EOF'\nk=v\nEOF", "allow"),
    ("grep 'a|b' /etc/hosts", "allow"),
    ("cat /var/log/*.log | grep -c error", "allow"),
    ("echo '$(id)' \"\\`id\\`\"", "allow"),  # quoted: plain text
    ("echo \"`id`\"", "deny"),  # in double quotes a backquote still runs
    ("systemctl status api && systemctl restart api", "approve"),
    ("sh -c 'systemctl restart api'", "approve"),
    ("systemctl status secret-db", "deny"),
    ("systemctl status $UNIT", "deny"),  # could be secret*: the deny rule wins
    ("git status; rm -rf /", "deny"),
    ("git status && $X -rf /", "deny"),  # `$X` could be rm
    ("git status; id", "deny"),
    ("git status > /etc/passwd", "deny"),
    ("cat /var/log/x < /etc/shadow", "deny"),
    ("echo a > /etc/app/conf.d/../../passwd", "deny"),
    ("echo $(id)", "deny"),
    ("git log $(id)", "deny"),
    ("echo $HOME", "deny"),
    ("$CMD status", "deny"),
    ("git status | sh", "deny"),
    ("timeout 5 bash -i", "deny"),
    ("env LD_PRELOAD=/x git status", "deny"),
])
def test_grant(line, want):
    assert verdict(line, **AGENT) == want


def test_unjudgeable_approve_holds_what_cannot_be_judged_but_never_what_a_rule_refuses():
    g = dict(AGENT, unjudgeable="approve")
    assert verdict("echo $(id)", **g) == "approve"
    assert verdict("echo $HOME", **g) == "approve"
    assert verdict("eval git status", **g) == "approve"
    assert verdict("git status; id", **g) == "deny"  # id is not unjudgeable: nothing allows it
    assert verdict("echo $(rm -rf /)", **g) == "deny"  # what the substitution runs is judged too
    assert verdict("echo $(rm -rf /)", **AGENT) == "deny"
    assert verdict("env LD_PRELOAD=/x git status", **g) == "deny"


def test_existing_rules_keep_allowing_what_they_allowed():
    assert verdict("echo hello through hoopy", allow=["exec echo *"]) == "allow"
    assert verdict("kill -TERM $$", allow=["exec kill -TERM $$"]) == "allow"
    assert verdict("echo agent=$SSH_AUTH_SOCK", allow=["exec echo agent=$SSH_AUTH_SOCK"]) == "allow"
    assert verdict("echo x=$HOOPY_TEST_X m=$HOOPY_MODEL", allow=["exec echo x=$HOOPY_TEST_X m=$HOOPY_MODEL"]) == "allow"
    assert verdict("head -c 5000 /dev/zero", allow=["exec head -c 5000 /dev/zero"]) == "allow"
    assert verdict("ls -la /var/log/nginx:a=b,c+d@e%f_g", allow=["exec ls *"]) == "allow"
    assert verdict("journalctl -u nginx -n 50", allow=["exec journalctl -u * -n *"]) == "allow"
    # ... and a star still stands for text only, never for what the shell would do with it.
    for tail in ("a; id", "$HOME", "${IFS}id", "$(id)", "`id`", "~root", "{a,b}", "[a]", "a > /tmp/x"):
        assert verdict(f"ls {tail}", allow=["exec ls *"]) == "deny", tail


def test_a_rule_cannot_grant_a_line():
    for bad in ("exec a; b", "exec cd /srv && make", "exec ls > /tmp/x", "exec X=1 ls", "exec echo $(id)",
                "exec echo 'open"):
        with pytest.raises(ValueError):
            parse_rule("ssh", bad)


def test_write_and_sftp_path_globs():
    w = parse_rule("ssh", "write /etc/app/*.conf")
    from hoopy.policy.rules import Unit
    assert w.matches(Unit("write", "/etc/app/x.conf"))
    assert not w.matches(Unit("write", "/etc/app/sub/x.conf"))
    r = parse_rule("ssh", "sftp read /srv/**")
    assert r.matches(Unit("sftp.read", "/srv/a/b/c")) and not r.matches(Unit("sftp.read", "/srvx/a"))
    assert not r.matches(Unit("sftp.write", "/srv/a")) and r.permits(Unit("sftp"))
    r = parse_rule("ssh", "sftp write /srv/**/*.txt")
    assert r.matches(Unit("sftp.write", "/srv/a.txt")) and r.matches(Unit("sftp.write", "/srv/x/y/a.txt"))
    assert parse_rule("ssh", "sftp").matches(Unit("sftp.write", "/etc/shadow"))


# --- the matchers' own guarantees -------------------------------------------------------------

def test_a_long_almost_matching_command_is_judged_at_once(monkeypatch):
    """A regex with several stars backtracks polynomially: `exec echo * * *` against a few
    KiB that fail at the last byte would stall the gateway (every protocol). What is timed here
    is the matching; parsing the 100 KB line can pass the parser's own 0.1 s on a loaded machine
    (that bound has its tests in test_ssh_shell_attacks.py), so its clock is made generous."""
    import importlib

    monkeypatch.setattr(importlib.import_module("hoopy.ssh.judge.judge"), "PARSE_TIME", 30.0)
    for stars in (2, 3, 5):
        rule = parse_rule("ssh", "exec echo" + " *" * stars)
        deny = parse_rule("ssh", "exec echo" + " *" * stars + " x")
        line = "echo " + ("a" * 49 + " ") * 2_000  # 100 KB (a line holds at most 4096 words)
        t0 = time.monotonic()
        assert verdict(line + "$X", allow=[rule.text]) == "deny"
        assert verdict(line, allow=[rule.text]) == "allow"
        assert not deny.denies(shell.analyze(line + "y").units[0])
        assert time.monotonic() - t0 < 3.0, stars
    assert "more than 4096 words" in shell.analyze("echo " + "a " * 5000).parts[0].text


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "*", "?", " "]), min_size=1, max_size=6),
       st.lists(st.sampled_from(["a", "b", shell.G_STAR, shell.G_QMARK, shell.SEP, "\x1c$X\x1d"]), max_size=6))
def test_deny_could_match_agrees_with_brute_force(rule_chars, cmd_tokens):
    """Some expansion of the command matches the deny rule iff one of a brute-force set does."""
    import itertools
    import re

    rule = "".join(rule_chars)
    toks = [("*",) if c == "*" else ("?",) if c == "?" else ("lit", shell.SEP if c == " " else c)
            for c in rule]
    key = "".join(cmd_tokens)
    got = _could_match(toks, key)
    rx = re.compile("".join(".*" if t == ("*",) else "." if t == ("?",) else re.escape(t[1]) for t in toks),
                    re.DOTALL)
    choices = []
    for t in cmd_tokens:
        if t in (shell.G_STAR, "\x1c$X\x1d"):
            choices.append(["", "a", "b", "ab", shell.SEP, "a" + shell.SEP + "b", "aa", "bb", "ba"])
        elif t == shell.G_QMARK:
            choices.append(["a", "b"])
        else:
            choices.append([t])
    brute = any(rx.fullmatch("".join(c)) for c in itertools.product(*choices))
    if brute:
        assert got, (rule, key)
    # (got without brute: an expansion longer than the brute force tries; fine for a deny rule)


def test_tokens_keep_verbatim_words_whole():
    assert _tokens("a\x1c$X\x1d\x11") == [("lit", "a"), ("lit", "\x1c$X\x1d"), ("*",)]
