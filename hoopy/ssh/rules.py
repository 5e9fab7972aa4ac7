"""The ssh rule words: ``shell | sftp | exec GLOB | forward HOST:PORT``."""
from __future__ import annotations

import fnmatch
import ipaddress
import re

from hoopy.policy.rules import RuleError, Unit

# What a wildcard in an exec rule may stand for: plain words only. Anything
# a shell would treat as syntax (separators, substitution, redirection,
# quoting, globbing, newlines) must be written literally in the rule.
_SHELL_SAFE = r"[A-Za-z0-9_\-+=.,:/@% ]"


_NOT_SAFE = re.compile(r"[^A-Za-z0-9_\-+=.,:/@% ]")


def _exec_pattern(glob: str) -> re.Pattern:
    """The whole glob as one regex (what _exec_matcher computes, without its speed guarantee)."""
    out = []
    for ch in glob:
        if ch == "*":
            out.append(f"{_SHELL_SAFE}*")
        elif ch == "?":
            out.append(_SHELL_SAFE)
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _segment(seg: str) -> re.Pattern:
    return re.compile("".join(_SHELL_SAFE if ch == "?" else re.escape(ch) for ch in seg), re.DOTALL)


def _exec_matcher(glob: str):
    """Does a command line match the glob? In time linear in the line (times the glob's length).

    A regex with several ``[safe]*`` runs (``exec echo * * *``) backtracks polynomially on a
    long line that almost matches: a few KiB would stall the whole gateway for minutes. Here
    the glob is split at its stars into fixed-length segments, matched left to right, each at
    its leftmost place the star before it can reach (the star covers only safe characters, so
    it ends at the next unsafe one). Leftmost is never worse: a later place for a segment
    could only leave the next star more to cover, and that is safe text either way.
    """
    segs = glob.split("*")
    if len(segs) == 1:
        whole = _segment(glob)
        return lambda text: whole.fullmatch(text) is not None
    first, middle, last = _segment(segs[0]), [(_segment(s), len(s)) for s in segs[1:-1]], _segment(segs[-1])
    n_first, n_last = len(segs[0]), len(segs[-1])

    def reach(text, pos):  # how far a star starting at pos can go: up to the next unsafe character
        m = _NOT_SAFE.search(text, pos)
        return m.start() if m else len(text)

    def match(text: str) -> bool:
        if len(text) < n_first + n_last or not first.fullmatch(text, 0, n_first):
            return False
        pos = n_first
        for seg, n in middle:
            m = seg.search(text, pos, min(len(text), reach(text, pos) + n))
            if m is None:
                return False
            pos = m.end()
        end = len(text) - n_last
        return pos <= end and reach(text, pos) >= end and last.fullmatch(text, end) is not None

    return match


def parse(text: str):
    word, _, rest = text.partition(" ")
    word = word.lower()
    rest = rest.strip()
    if word in ("shell", "sftp"):
        if rest:
            raise RuleError(f"{text!r}: {word} takes nothing after it")
        return lambda unit: unit.kind == word
    if word == "exec":
        if not rest:
            raise RuleError(f"{text!r}: exec needs a command glob")
        matches = _exec_matcher(rest)
        return lambda unit: unit.kind == "exec" and unit.subject is not None and matches(unit.subject)
    if word == "forward":
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port or " " in rest:
            raise RuleError(f"{text!r}: forward needs HOST:PORT")
        if not (port == "*" or port.isdigit()):
            raise RuleError(f"{text!r}: {port!r} is not a port")
        host = host.strip("[]").lower()
        host_ok = _forward_host(host)

        def match(unit: Unit) -> bool:
            if unit.kind != "forward" or unit.subject is None:
                return False
            h, _, p = unit.subject.rpartition(":")
            return host_ok(h.strip("[]").lower()) and (port == "*" or p == port)

        return match
    raise RuleError(f"{text!r}: ssh rules are shell, sftp, exec GLOB or forward HOST:PORT")


_IP_PATTERN = re.compile(r"[0-9.*?]+|[0-9a-f.*?]*:[0-9a-f:.*?]*")


def _forward_host(pattern: str):
    """Does a requested host match a forward rule's host pattern?

    ``*`` alone is any host. A pattern shaped like an address (``10.0.0.*``, ``fd00::*``) matches
    addresses only, written canonically: otherwise ``10.0.0.*`` would match the DNS name
    ``10.0.0.1.attacker.example``, which resolves anywhere (and ``010.0.0.1`` is 8.0.0.1 to
    inet_aton). In a name pattern ``*`` and ``?`` stay within one label, of name characters:
    ``db*`` is ``db1``, never ``db.attacker.example``; ``*.internal`` is one level below it.
    """
    if pattern == "*":
        return lambda host: True
    if _IP_PATTERN.fullmatch(pattern):
        def ip(host: str) -> bool:
            try:
                canonical = str(ipaddress.ip_address(host)) == host
            except ValueError:
                return False
            return canonical and fnmatch.fnmatchcase(host, pattern)

        return ip
    label = "[a-z0-9_-]"
    rx = re.compile("".join(f"{label}*" if ch == "*" else label if ch == "?" else re.escape(ch)
                            for ch in pattern))
    return lambda host: rx.fullmatch(host) is not None


