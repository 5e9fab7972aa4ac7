"""The ssh rule words where the gateway's safety depends on them: exec globs and forward hosts.

(Issue 12 changed what an exec glob is matched against: each simple command of a line after
quote removal, no longer the raw line. The tests of the old text matcher became the ones below
and tests/test_ssh_shell.py.)"""
import re

from hypothesis import given, settings, strategies as st

from hoopy.policy.rules import Unit
from hoopy.protocols import parse_rule
from hoopy.ssh import shell
from hoopy.ssh.rules import _QMARK, _STAR, _matcher


def exec_rule(glob):
    return parse_rule("ssh", f"exec {glob}")


def command(line):
    (unit,) = shell.analyze(line).units
    return unit


_RULE_TOKENS = st.sampled_from([("lit", "a"), ("lit", "b"), ("lit", shell.SEP), ("*",), ("?",),
                                 ("lit", "\x1c$X\x1d")])
_KEY_TOKENS = st.sampled_from(["a", "b", shell.SEP, shell.G_STAR, shell.G_QMARK, shell.INPUT, "\x1c$X\x1d"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(_RULE_TOKENS, min_size=1, max_size=8), st.lists(_KEY_TOKENS, max_size=12))
def test_the_linear_matcher_decides_as_the_plain_regex(toks, key):
    """What _matcher decides in linear time is exactly what the backtracking regex of the rule
    decides: a star of an allow rule covers argument text, patterns and xargs input, never a
    word the shell would expand; a deny rule's star covers anything."""
    key = "".join(key)
    lit = lambda t: re.escape(t[1])  # noqa: E731
    bounded = re.compile("".join(_STAR if t == ("*",) else _QMARK if t == ("?",) else lit(t) for t in toks),
                         re.DOTALL)
    anywhere = re.compile("".join(".*" if t == ("*",) else _QMARK if t == ("?",) else lit(t) for t in toks),
                          re.DOTALL)
    assert _matcher(toks, True)(key) is (bounded.fullmatch(key) is not None), (toks, key)
    assert _matcher(toks, False)(key) is (anywhere.fullmatch(key) is not None), (toks, key)


def test_exec_glob_examples():
    r = exec_rule("journalctl -u * -n *")
    assert r.matches(command("journalctl -u nginx -n 50"))
    assert not any(r.matches(u) for u in shell.analyze("journalctl -u nginx; id -n 50").units
                   if str(u).startswith("exec id"))
    assert exec_rule("x**y").matches(command("xy"))
    assert not exec_rule("ls *").matches(command("ls\u00a0-l"))  # one word: a command named that
    # A lookalike of a separator is a character of an argument, for the shell as for the rule.
    assert exec_rule("ls *").matches(command("ls a\u037eb"))
    assert exec_rule("grep 'a|b' *").matches(command('grep "a|b" /var/log/syslog'))
    assert not exec_rule("grep a b f").matches(command("grep 'a b' f"))


def test_a_star_never_stands_for_shell_syntax_or_expansions():
    r = exec_rule("ls *")
    for tail in ("a\x00; id", "a\r", "~root", "$HOME", "${IFS}id", "[a]", "a'b", 'a"b', "{a,b}", "$(id)",
                 "`id`", "<(id)", "a > /tmp/x", "a; id", "a | id", "a && id", "a\nid"):
        units = shell.analyze(f"ls {tail}").units
        assert not all(r.matches(u) for u in units), tail
    # Plain text after quote removal is what a star stands for now: tabs separate words, a
    # backslash quotes, `#`, `!`, `^` inside a word are characters.
    for tail in ("-la /var/log/nginx:a=b,c+d@e%f_g", "a\tb", "a\\b", "a#b", "a!b", "a^b", "'a;b'", "*"):
        assert r.matches(command(f"ls {tail}")), tail


def forward(rule, target):
    return parse_rule("ssh", f"forward {rule}").matches(Unit("forward", target))


def test_an_address_pattern_matches_addresses_not_names_that_resolve_anywhere():
    assert forward("10.0.0.*:80", "10.0.0.7:80")
    assert forward("10.*:80", "10.1.2.3:80")
    assert not forward("10.0.0.*:80", "10.0.0.1.nip.io:80")  # a DNS name: resolves wherever its owner likes
    assert not forward("10.0.0.*:80", "10.0.0.1.:80")
    assert not forward("127.0.0.1:80", "127.1:80") and not forward("1*.0.0.1:80", "010.0.0.1:80")
    assert forward("[::1]:22", "::1:22") and forward("[::1]:22", "[::1]:22")
    assert forward("fd00::*:22", "fd00::5:22") and not forward("fd00::*:22", "fd00::5.evil.example:22")


def test_a_name_pattern_stays_within_one_label():
    assert forward("db*:5432", "db1:5432") and forward("DB-?.internal:5432", "db-2.internal:5432")
    assert not forward("db*:5432", "db.attacker.example:5432")
    assert not forward("*.internal:443", "evil.example/.internal:443")
    assert forward("*.internal:443", "api.internal:443") and not forward("*.internal:443", "a.b.internal:443")
    assert forward("db.internal:5432", "db.internal:5432") and not forward("db.internal:5432", "dbxinternal:5432")
    assert forward("*:5432", "anything.at.all:5432")
    assert not forward("localhost:80", "127.0.0.1:80")  # names and addresses are not resolved: fail closed
