"""The ssh rule words: ``shell | sftp [read|write GLOB] | exec GLOB | write GLOB | read GLOB |
forward HOST:PORT``.

An ``exec`` rule matches one simple command of a line (hoopy.ssh.shell splits the line), after
quote removal: the rule's glob is itself read as a command (so ``exec grep 'a|b' *`` names grep
with the argument ``a|b``), and its unquoted ``*`` matches any run of argument text. A word the
command line leaves for the shell to expand (``$X``, ``~``, braces, a ``*`` pattern in the
command name) matches only a rule word spelled the same; an unquoted ``*`` or ``?`` pattern in an
argument is covered by a rule's ``*`` (each name it expands to would be).

A ``deny`` rule matches when *some* expansion of the command could match it: a ``$X`` or a pattern
in the command stands for any text there.

``write``/``read`` (redirections) and ``sftp read``/``sftp write`` take a path glob: ``*`` and
``?`` stay within one path segment, ``**`` crosses segments.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable

from hoopy.policy.rules import RuleError, Unit
from hoopy.ssh.judge.bounds import MAX_NESTING
from hoopy.ssh.judge.dotdots import mark_dotdots
from hoopy.ssh.judge.encoding import DOTDOT, G_QMARK, G_STAR, INPUT, SEP, SKEL, V_CLOSE, V_OPEN
from hoopy.ssh.judge.judge import _Judge
from hoopy.ssh.judge.misread import _misread
from hoopy.ssh.judge.parse import nesting, parse_tree

_SPECIAL = G_STAR + G_QMARK + INPUT + V_OPEN + V_CLOSE + SKEL + DOTDOT
_STAR = f"[^{V_OPEN}{V_CLOSE}{DOTDOT}]*"  # argument text: never into a word the shell would expand
_QMARK = f"[^{re.escape(_SPECIAL)}]"  # one character of argument text
_VERBATIM = re.compile(f"{V_OPEN}[^{V_CLOSE}]*{V_CLOSE}")


def _tokens(key: str) -> list[tuple[str, ...]]:
    """A rule's encoded words as tokens: ("*",), ("?",), or ("lit", text)."""
    out: list[tuple[str, ...]] = []
    pos = 0
    while pos < len(key):
        c = key[pos]
        if c == G_STAR:
            out.append(("*",))
        elif c == G_QMARK:
            out.append(("?",))
        elif c == V_OPEN:
            end = key.index(V_CLOSE, pos)
            out.append(("lit", key[pos:end + 1]))
            pos = end + 1
            continue
        else:
            out.append(("lit", c))
        pos += 1
    return out


def _segment(toks) -> re.Pattern:
    return re.compile("".join(_QMARK if t[0] == "?" else re.escape(t[1]) for t in toks), re.DOTALL)


def _seg_len(toks) -> int:
    return sum(1 if t[0] == "?" else len(t[1]) for t in toks)


def _matcher(toks, bounded: bool):
    """Does an encoded command match the rule's tokens? In time linear in the command (times the
    rule's length).

    A regex with several ``.*`` runs backtracks polynomially on a long line that almost matches:
    a few KiB would stall the gateway. So the rule is split at its stars into fixed-length
    segments, matched left to right, each at its leftmost place the star before it can reach.
    ``bounded``: a star stops at a word the shell would expand (allow/approve rules); a deny
    rule's star goes anywhere. Leftmost is never worse: a later place could only leave the next
    star more to cover, and that is text it may cover either way.
    """
    segs: list[list[tuple[str, ...]]] = [[]]
    for t in toks:
        if t[0] == "*":
            segs.append([])
        else:
            segs[-1].append(t)
    stop = re.compile(f"[{V_OPEN}{V_CLOSE}{DOTDOT}]") if bounded else None
    if len(segs) == 1:
        whole = _segment(segs[0])
        return lambda text: whole.fullmatch(text) is not None
    first, last = _segment(segs[0]), _segment(segs[-1])
    middle = [(_segment(s), _seg_len(s)) for s in segs[1:-1]]
    n_first, n_last = _seg_len(segs[0]), _seg_len(segs[-1])

    def reach(text, pos):
        if stop is None:
            return len(text)
        m = stop.search(text, pos)
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


# How much two-sided matching a deny check may do before it answers "could match" (fail closed).
_DENY_BUDGET = 250_000


def _could_match(toks, key: str) -> bool:
    """Could some expansion of an encoded command match the rule's tokens? (deny rules)

    The command's patterns, ``$X`` words and xargs input stand for any text; the rule's ``*`` for
    any text, its ``?`` for one character. A dynamic program over (rule token, command token)."""
    cmd: list = []
    pos = 0
    while pos < len(key):
        c = key[pos]
        if c in (G_STAR, INPUT):
            cmd.append(None)  # any text
        elif c == V_OPEN:
            # A word the shell expands: its skeleton (the text it keeps, INPUT where anything
            # may come), or anything at all without one.
            end = key.find(V_CLOSE, pos)
            end = end if end >= 0 else len(key)
            inner = key[pos + 1:end]
            _, skel_sep, skel = inner.partition(SKEL)
            if not skel_sep:
                cmd.append(None)
            else:
                cmd.extend(None if ch in (INPUT, G_STAR) else "?" if ch == G_QMARK else ch for ch in skel)
            pos = end + 1
            continue
        elif c == G_QMARK:
            cmd.append("?")  # one character
        else:
            cmd.append(c)
        pos += 1
    rule = []
    for t in toks:
        if t[0] == "lit":
            rule.extend(t[1])
        else:
            rule.append(t[0] + "\0")  # "*\0" / "?\0": not a character
    n, m = len(rule), len(cmd)
    if (n + 1) * (m + 1) > _DENY_BUDGET:
        return True
    # reach[j]: rule[:i] and cmd[:j] can produce a common string.
    prev = [False] * (m + 1)
    prev[0] = True
    for j in range(1, m + 1):
        prev[j] = prev[j - 1] and cmd[j - 1] is None
    for i in range(1, n + 1):
        r = rule[i - 1]
        cur = [False] * (m + 1)
        cur[0] = prev[0] and r == "*\0"
        for j in range(1, m + 1):
            c = cmd[j - 1]
            if r == "*\0":
                v = prev[j] or cur[j - 1]  # the star covers nothing more, or one more token
            elif c is None:
                v = cur[j - 1] or prev[j] or prev[j - 1]  # any text: ends here, or covers r too
            else:
                v = prev[j - 1] and (r == "?\0" or c == "?" or r == c)
            cur[j] = v
        prev = cur
    return prev[m]


def _base_key(key: str) -> str | None:
    """The encoded command with its name's directory removed (`/bin/rm -f x` -> `rm -f x`), or
    None when the name has no `/`. A name the shell expands that holds a `/` (`/bin/$X`) could
    end in anything: its last segment is any text."""
    name, sep, rest = key.partition(SEP)
    if "/" not in name:
        return None
    if name.startswith(V_OPEN):
        skel = name[1:-1].partition(SKEL)[2]
        if "/" not in skel and skel:
            return None
        tail = skel.rsplit("/", 1)[1] if "/" in skel else ""
        if not skel or any(c in tail for c in (INPUT, G_STAR)) or INPUT in skel.rsplit("/", 1)[0]:
            tail = INPUT  # the expansion may hold a `/` of its own: any last segment
        return V_OPEN + "?" + SKEL + tail + V_CLOSE + sep + rest
    return name.rsplit("/", 1)[1] + sep + rest


def _base_tokens(toks):
    """A rule's tokens with its command name's directory removed (the same tokens if none)."""
    name_end = next((i for i, t in enumerate(toks) if t == ("lit", SEP)), len(toks))
    name = toks[:name_end]
    slash = max((i for i, t in enumerate(name) if t == ("lit", "/")), default=None)
    if slash is None:
        return toks
    return toks[slash + 1:]


def exec_rule(glob: str):
    """The matcher of ``exec GLOB``: callable(unit) -> bool, with ``.deny`` for deny lists."""
    tree = parse_tree(glob)
    root = tree.root_node
    if nesting(root, MAX_NESTING) in (None, -1):
        raise RuleError(f"exec {glob!r}: nested more than {MAX_NESTING} levels deep")
    if root.has_error or _misread(root, glob.encode("utf-8", "surrogateescape")) is not None:
        raise RuleError(f"exec {glob!r}: not a command the shell can read (check its quotes)")
    stmts = [c for c in root.children if c.is_named and c.type != "comment"]
    if len(stmts) == 1 and stmts[0].type == "redirected_statement":
        raise RuleError(f"exec {glob!r}: a redirection is a `write GLOB` or `read GLOB` rule")
    if len(stmts) != 1 or stmts[0].type != "command":
        raise RuleError(f"exec {glob!r}: an exec rule names one command (the gateway judges each command "
                        f"of a line on its own: write one rule per command; `> FILE` is a `write` rule)")
    judge = _Judge()
    judge.src = glob.encode("utf-8", "surrogateescape")
    words = []
    for ch in stmts[0].children:
        if ch.type == "command_name":
            words.append(judge.word(ch.named_children[0] if ch.named_children else ch))
        elif ch.type == "variable_assignment":
            raise RuleError(f"exec {glob!r}: NAME=VALUE is not part of an exec rule (the environment a "
                            f"line may set is fixed: LANG, LC_*, TZ, HOOPY_*)")
        elif ch.type in ("file_redirect", "heredoc_redirect", "herestring_redirect"):
            raise RuleError(f"exec {glob!r}: a redirection is a `write GLOB` or `read GLOB` rule")
        elif ch.is_named:
            words.append(judge.word(ch))
        else:
            raise RuleError(f"exec {glob!r}: not a plain command")
    if judge.parts:
        raise RuleError(f"exec {glob!r}: command substitution cannot be granted")
    key = SEP.join(w.enc for w in words)
    toks = _tokens(key)
    anywhere = _matcher(toks, False)
    # Allow and approve rules match with each `..` segment marked: a rule's `*` never covers one
    # (`exec cat /var/log/*` is not `cat /var/log/../../etc/shadow`); a rule's own `..` matches.
    marked_toks = _tokens(mark_dotdots(key, globs=False))
    bounded = _matcher(marked_toks, True)
    # The rule's leading literal text (its command name, usually): most commands fail here.
    lead_parts = []
    for t in marked_toks:
        if t[0] != "lit" or t[1].startswith(V_OPEN):
            break
        lead_parts.append(t[1])
    lead = "".join(lead_parts)
    special = re.compile(f"[{re.escape(_SPECIAL)}]")

    def match(unit: Unit) -> bool:
        # Spelled exactly as the command (`ls a?` for `ls a?`), or matched word for word.
        k = unit.key
        if unit.kind != "exec" or k is None:
            return False
        if k == key:
            return True
        k = mark_dotdots(k)
        return k.startswith(lead) and bounded(k)

    # A deny rule names a program wherever it is: `exec rm *` denies /bin/rm and /usr/bin/rm too
    # (and `exec /bin/rm *` denies rm), so both command names are compared by their last segment.
    base_toks = _base_tokens(toks)
    base_anywhere = _matcher(base_toks, False) if base_toks is not toks else anywhere

    def deny_one(k, toks, anywhere) -> bool:
        if special.search(k) is None:
            return anywhere(k)
        return _could_match(toks, k)

    def deny(unit: Unit) -> bool:
        k = unit.key
        if unit.kind != "exec" or k is None:
            return False
        if deny_one(k, toks, anywhere):
            return True
        bk = _base_key(k)
        return (bk is not None or base_toks is not toks) and deny_one(bk if bk is not None else k, base_toks,
                                                                       base_anywhere)

    return _judgements(match, deny=deny)


def _judgements(match: Callable[[Unit], bool], *, deny: Callable[[Unit], bool] | None = None,
                permits: Callable[[Unit], bool] | None = None) -> Callable[[Unit], bool]:
    """``match`` carrying the other judgements hoopy.policy.rules.Rule looks up on a matcher by
    name (``deny``, ``permits``: function attributes, which the type checker does not model).
    Named parameters, so a misspelt one fails here instead of leaving Rule its fallback."""
    if deny is not None:
        setattr(match, "deny", deny)
    if permits is not None:
        setattr(match, "permits", permits)
    return match


def path_glob(glob: str):
    """A path glob: `*` and `?` within one segment, `**` across segments (`/srv/**` is /srv and
    everything under it)."""
    if not glob.startswith("/"):
        raise RuleError(f"{glob!r}: a path glob is absolute (starts with /)")
    if any(s == ".." for s in glob.split("/")):
        raise RuleError(f"{glob!r}: '..' in a path glob")
    out = []
    i = 0
    while i < len(glob):
        if glob.endswith("/**") and i == len(glob) - 3:
            out.append("(?:/.*)?")  # the directory itself and everything under it
            i += 3
        elif glob.startswith("/**/", i):
            out.append("/(?:.*/)?")
            i += 4
        elif glob.startswith("**", i):
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
    rx = re.compile("".join(out), re.DOTALL)

    def match(path) -> bool:
        # Paths come resolved (SFTP REALPATH) or normalized (redirections); one that still has a
        # `.` or `..` segment matches no path glob (`*` would cover `..`: /srv/*/x is not /x).
        if path is None or len(path) > 4096 or rx.fullmatch(path) is None:
            return False
        return "/." not in path or not any(seg in (".", "..") for seg in path.split("/"))

    return match


def parse(text: str):
    word, _, rest = text.partition(" ")
    word = word.lower()
    rest = rest.strip()
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text):
        raise RuleError(f"{text!r}: control characters in a rule")
    if word == "shell":
        if rest:
            raise RuleError(f"{text!r}: shell takes nothing after it")
        return lambda unit: unit.kind == "shell"
    if word == "sftp":
        if not rest:
            # Every SFTP operation: the subsystem and each file operation in it.
            return lambda unit: unit.kind in ("sftp", "sftp.read", "sftp.write")
        how, _, glob = rest.partition(" ")
        how = how.lower()
        glob = glob.strip()
        if how not in ("read", "write") or not glob:
            raise RuleError(f"{text!r}: sftp takes nothing, `read GLOB` or `write GLOB`")
        ok = path_glob(glob)
        kind = f"sftp.{how}"

        def sftp_match(unit: Unit) -> bool:
            # The exact path where it is not the subject shown (a name with bytes not UTF-8).
            return unit.kind == kind and ok(unit.key if unit.key is not None else unit.subject)

        # From an allow or approve list, a path rule lets the subsystem open; its file
        # operations are then judged one by one.
        return _judgements(sftp_match, permits=lambda unit: unit.kind == "sftp")
    if word in ("write", "read"):
        if not rest:
            raise RuleError(f"{text!r}: {word} needs a path glob")
        ok = path_glob(rest)
        return lambda unit: unit.kind == word and ok(unit.subject)
    if word == "exec":
        if not rest:
            raise RuleError(f"{text!r}: exec needs a command glob")
        return exec_rule(rest)
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
    raise RuleError(f"{text!r}: ssh rules are shell, sftp [read|write GLOB], exec GLOB, write GLOB, "
                    f"read GLOB or forward HOST:PORT")


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
