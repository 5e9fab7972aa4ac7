"""The rule words of each protocol, parsed once, matched fast.

  postgres  read | write | ddl | admin | all [TABLE ...]   TABLE: schema.name, globs allowed
  ssh       shell | sftp | exec GLOB | forward HOST:PORT
  http      METHOD /path/glob                               METHOD may be *

An operation is what the policy judges. It is made of one or more *units*
(a postgres statement touching two tables is two units); every unit must
be covered on its own, so a rule for one thing never carries another.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import re

import attrs

PG_CLASSES = ("read", "write", "ddl", "admin")


class RuleError(ValueError):
    pass


@attrs.frozen
class Unit:
    """One thing a rule must cover: (kind, subject).

    postgres: kind is a class, subject "schema.table" or None (no table);
    ssh: kind exec/shell/sftp/forward, subject the command line or HOST:PORT;
    http: kind the method, subject the normalized path.
    """

    kind: str
    subject: str | None = None

    def __str__(self) -> str:
        return self.kind if self.subject is None else f"{self.kind} {self.subject}"


@attrs.frozen
class Operation:
    protocol: str
    kind: str  # statement | exec | shell | sftp | forward | request | ...
    text: str  # what a person reads: the SQL, the command line, "GET /path"
    units: tuple  # of Unit
    detail: dict = attrs.field(factory=dict, eq=False)  # recorded with the event

    @classmethod
    def single(cls, protocol: str, kind: str, text: str, subject: str | None = None, **detail):
        return cls(protocol, kind, text, (Unit(kind, subject),), detail)


@attrs.frozen
class Rule:
    protocol: str
    text: str
    _match: object = attrs.field(repr=False, eq=False)

    def matches(self, unit: Unit) -> bool:
        return self._match(unit)

    def __str__(self) -> str:
        return self.text


def parse_rule(protocol: str, text: str) -> Rule:
    parser = _PARSERS.get(protocol)
    if parser is None:
        raise RuleError(f"no rules for protocol {protocol!r}")
    if not isinstance(text, str) or not text.strip():
        raise RuleError("empty rule")
    return Rule(protocol, text.strip(), parser(text.strip()))


# --- postgres ------------------------------------------------------------

_IDENT = r'(?:[A-Za-z_*?][A-Za-z0-9_$*?]*|"[^"]+")'
_TABLE = re.compile(rf"^{_IDENT}(?:\.{_IDENT})?$")


def _normalize_table(name: str) -> str:
    parts = [p[1:-1] if p.startswith('"') else p.lower() for p in _split_dotted(name)]
    if len(parts) == 1:
        parts.insert(0, "public")
    return ".".join(parts)


def _split_dotted(name: str) -> list[str]:
    return re.findall(r'"[^"]+"|[^.]+', name)


def _postgres(text: str):
    words = text.split()
    cls = words[0].lower()
    if cls not in PG_CLASSES + ("all",):
        raise RuleError(f"{text!r}: postgres rules start with read, write, ddl, admin or all")
    tables = []
    for t in words[1:]:
        t = t.rstrip(",")
        if not _TABLE.match(t):
            raise RuleError(f"{text!r}: {t!r} is not a table name (schema.table)")
        tables.append(_normalize_table(t))
    classes = PG_CLASSES if cls == "all" else (cls,)

    def match(unit: Unit) -> bool:
        if unit.kind not in classes:
            return False
        if not tables or unit.subject is None:
            return True
        return any(fnmatch.fnmatchcase(unit.subject, t) for t in tables)

    return match


def pg_table_unit(cls: str, schema: str | None, name: str | None) -> Unit:
    """The unit for one table a statement touches (names as PostgreSQL folds them)."""
    if name is None:
        return Unit(cls, None)
    return Unit(cls, f"{schema or 'public'}.{name}")


# --- ssh -------------------------------------------------------------------

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


def _ssh(text: str):
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


# --- http ------------------------------------------------------------------

_METHOD = re.compile(r"^(\*|[A-Z]+)$")


def _path_pattern(glob: str) -> re.Pattern:
    """The glob as one regex: what _path_matcher computes, without its speed guarantee (tests)."""
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def _path_matcher(glob: str):
    """Does a path match the glob? In time linear in the path, whatever the glob.

    A regex of several ``[^/]*`` and ``.*`` runs backtracks polynomially on a
    long path that almost matches (seconds for a crafted request), and with
    ``*`` and ``**`` mixed no leftmost shortcut is right. So the glob runs as
    an NFA, its live states kept as the bits of one integer (shift-and).
    """
    tokens = []  # "*", "**", "?" or one literal character
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            tokens.append("**")
            i += 2
        else:
            tokens.append(glob[i])
            i += 1
    m = len(tokens)
    final = 1 << m
    any_char = 0  # "?" positions: any character but "/"
    stars = 0  # "*": stay on any character but "/"
    globstars = 0  # "**": stay on any character
    literal: dict[str, int] = {}
    for pos, t in enumerate(tokens):
        bit = 1 << pos
        if t == "?":
            any_char |= bit
        elif t == "*":
            stars |= bit
        elif t == "**":
            globstars |= bit
        else:
            literal[t] = literal.get(t, 0) | bit
    skippable = stars | globstars

    def closure(d: int) -> int:
        while True:  # a star may match nothing: step over it
            nxt = d | ((d & skippable) << 1)
            if nxt == d:
                return d
            d = nxt

    start = closure(1)

    def match(text: str) -> bool:
        d = start
        for c in text:
            if c == "/":
                step = literal.get(c, 0)
                stay = globstars
            else:
                step = literal.get(c, 0) | any_char
                stay = skippable
            d = closure(((d & step) << 1) | (d & stay))
            if not d:
                return False
        return bool(d & final)

    return match


def _http(text: str):
    parts = text.split()
    if len(parts) != 2:
        raise RuleError(f"{text!r}: http rules are METHOD /path/glob")
    method, path = parts
    if not _METHOD.match(method):
        raise RuleError(f"{text!r}: {method!r} is not a method (GET, POST, ... or *)")
    if not path.startswith("/"):
        raise RuleError(f"{text!r}: the path must start with /")
    matches = _path_matcher(path)
    return lambda unit: (method == "*" or unit.kind == method) and unit.subject is not None and matches(
        unit.subject)


_PARSERS = {"postgres": _postgres, "ssh": _ssh, "http": _http}
