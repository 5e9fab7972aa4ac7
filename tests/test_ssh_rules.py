"""The ssh rule words where the gateway's safety depends on them: exec globs and forward hosts."""
import time

from hypothesis import given, settings, strategies as st

from hoopy.policy.rules import Unit, _exec_pattern, parse_rule


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
