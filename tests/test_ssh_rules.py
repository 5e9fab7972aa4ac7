"""The ssh rule words where the gateway's safety depends on them: exec globs and forward hosts."""
import time

from hypothesis import given, settings, strategies as st

from hoopy.policy.rules import Unit
from hoopy.protocols import parse_rule
from hoopy.ssh.rules import _exec_pattern


def exec_rule(glob):
    return parse_rule("ssh", f"exec {glob}")


@settings(max_examples=3000, deadline=None)
@given(st.text("ab ;*?", min_size=1, max_size=10).filter(lambda g: g.strip() == g and g),
       st.text("ab ;c", max_size=14))
def test_exec_glob_matches_exactly_as_the_plain_regex(glob, line):
    # The fast matcher decides exactly what the regex of the glob decides.
    expected = _exec_pattern(glob).fullmatch(line) is not None
    assert exec_rule(glob).matches(Unit("exec", line)) is expected, (glob, line)


def test_a_long_almost_matching_command_is_judged_at_once():
    """A regex with several stars backtracks polynomially: `exec echo * * *` against a few
    KiB that fail at the last byte stalled the gateway (every protocol) for seconds to hours."""
    for stars in (2, 3, 5):
        rule = exec_rule("echo" + " *" * stars)
        line = "echo " + "a " * 100_000
        t0 = time.monotonic()
        assert rule.matches(Unit("exec", line + ";")) is False
        assert rule.matches(Unit("exec", line)) is True
        assert time.monotonic() - t0 < 1.0, stars


def test_exec_glob_examples():
    r = exec_rule("journalctl -u * -n *")
    assert r.matches(Unit("exec", "journalctl -u nginx -n 50"))
    assert not r.matches(Unit("exec", "journalctl -u nginx; id -n 50"))
    assert not r.matches(Unit("exec", "journalctl -u nginx -n 50\nid"))
    assert exec_rule("a*;*b").matches(Unit("exec", "aa;bb"))
    assert not exec_rule("a*;*b").matches(Unit("exec", "a;;b"))
    assert exec_rule("x**y").matches(Unit("exec", "xy"))
    assert not exec_rule("ls *").matches(Unit("exec", "ls\u00a0-l"))  # no non-ASCII lookalikes
    assert not exec_rule("ls *").matches(Unit("exec", "ls \u0430"))


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


def test_a_star_never_stands_for_shell_syntax_or_other_bytes():
    r = exec_rule("ls *")
    for tail in ("a\x00; id", "a\r", "a\tb", "~root", "$HOME", "${IFS}id", "*", "[a]", "a'b", 'a"b', "a\\b",
                 "a\u2028b", "a\u3000b", "a\u037eb", "a#b", "a!b", "{a,b}", "a^b"):
        assert not r.matches(Unit("exec", f"ls {tail}")), tail
    assert r.matches(Unit("exec", "ls -la /var/log/nginx:a=b,c+d@e%f_g"))
