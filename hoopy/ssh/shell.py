"""What a command line will run, judged part by part (sans-IO).

sshd runs an exec request as ``$SHELL -c LINE``: the line is a shell program, and what it runs is
what the shell makes of it. So the line is parsed as the shell will (tree-sitter-bash, never by
hand), and every simple command it contains becomes a *part* the rules judge on its own, after
quote removal; redirections are parts too (``write PATH``, ``read PATH``). What the shell would
decide only while running (command substitution, ``eval``, a variable in the command name, a
function, an alias) cannot be judged beforehand: such a part is *unjudgeable* (refused, or held
where the grant says ``unjudgeable = "approve"``).

Wrappers are seen through: ``sh -c STRING`` (the string parsed again, to a depth limit),
``timeout``, ``env``, ``nice``, ``nohup``, ``stdbuf``, ``time``, ``command``, ``exec``, ``xargs``
and ``cd DIR &&``; their own options are checked, and an option a wrapper list does not know makes
the part unjudgeable. A wrapper never widens what runs: only the command inside is judged.

The words of an exec part are encoded for the rules (hoopy.ssh.rules) as one string: words
joined by SEP; a word the shell would still expand (``$X``, ``~``, braces, ``[...]``) is kept as
its source text between V_OPEN and V_CLOSE, which only a rule spelling that word exactly can
match; an unquoted ``*`` or ``?`` is G_STAR or G_QMARK, which only a rule's ``*`` covers (a glob
expands to names the rule's ``*`` would have allowed one by one); INPUT stands for arguments
``xargs`` reads from its input.
"""
from __future__ import annotations

import functools
import hashlib
import posixpath
import re
import time
import unicodedata

import attrs

from hoopy.policy.rules import Unit
from hoopy.ssh.environment import passes as env_passes

SEP = "\x1e"
G_STAR = "\x11"
G_QMARK = "\x12"
INPUT = "\x1a"
V_OPEN, V_CLOSE = "\x1c", "\x1d"
SKEL = "\x1f"  # inside V_OPEN...V_CLOSE: what follows is the word's skeleton, for deny rules
# A `..` path segment, as allow and approve rules see a command (mark_dotdots): a rule's `*` or `?`
# never covers it; a rule's own literal `..` matches it.
DOTDOT = "\x10"

MAX_LINE = 256 * 1024  # longer lines are not judged (refused, or held where the grant says so)
MAX_DEPTH = 6  # sh -c 'sh -c ...' nesting
# Syntax nested deeper than this (subshells, groups, if/while/for/case, $(...), quotes, arithmetic,
# counted across `sh -c` strings too) is not judged: the walk is recursive, and a crafted line
# would otherwise end it in a RecursionError. Agents' lines are under 10 deep.
MAX_NESTING = 64
MAX_PARTS = 512  # parts of one line
MAX_WORDS = 4096  # words of one line: bounds the time a line can hold the reactor (about 0.1 s)
# Syntax nodes of one parse (what every walk in Python visits): a 256 KiB line of `"a" ` or `1+`
# is a quarter million of them, seconds on the reactor; a here-document's body is one.
MAX_NODES = 20_000
SHELLS = ("bash", "sh")  # the dialects judged; any other upstream shell: every line is unjudgeable

# Characters a line may hold: no C0 control other than tab and newline (they would be NUL for
# execve, carriage returns a terminal hides, or the encoding's own markers above).
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_WIDE_ESCAPE = re.compile(r"[^\x00-\x7f]\\")
_PLAIN = re.compile(r"[A-Za-z0-9_\-+=.,:/@%]+")
_BRACE = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}", re.S)
_DURATION = re.compile(r"[0-9]+(\.[0-9]+)?[smhd]?")
_NUMBER = re.compile(r"[+-]?[0-9]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FD_DEV = re.compile(r"/dev/fd/([0-9]+)|/proc/self/fd/([0-9]+)")
_QUIET_FILES = frozenset({"/dev/null", "/dev/tty", "/dev/zero"})
# Names of a descriptor: opening one opens again the file the descriptor has (on Linux), for
# writing too: `echo x <readable >/dev/stdin` would write a file only granted for reading.
_FD_NAMES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
_BIN_DIRS = ("/bin/", "/usr/bin/", "/usr/local/bin/", "/sbin/", "/usr/sbin/")

# Builtins whose effect is decided only while running, or that change what later names mean.
_UNJUDGEABLE_BUILTINS = {
    "eval": "eval runs a string built while running",
    "source": "source runs a file's commands", ".": ". runs a file's commands",
    "alias": "aliases change what later names run", "unalias": "aliases change what later names run",
    "trap": "trap runs a string later", "enable": "enable loads builtins",
    "hash": "hash changes which program a name runs", "shopt": "shopt changes how the shell parses",
    "declare": "declare can set attributes and functions", "typeset": "typeset can set attributes",
    "local": "local can set attributes", "let": "arithmetic with side effects", "coproc": "coproc",
    "builtin": "builtin", "fc": "fc runs history", "bind": "bind", "complete": "complete",
    "mapfile": "mapfile sets variables", "readarray": "readarray sets variables",
}
# Builtins that run nothing and need no rule (their arguments are still checked).
_NO_OP = frozenset({":", "exit", "return", "wait"})
# Names the judge reads as this shell's own builtins (no rule, or an effect on the shell): run by a
# program they are programs found in PATH.
_BUILTIN_ONLY = _NO_OP | {"cd", "pushd", "popd", "set", "test", "[", "export", "readonly", "unset", "command",
                          "exec"}
_SET_OPTIONS = frozenset({"errexit", "nounset", "pipefail", "xtrace", "noclobber", "verbose"})
# Lowercase variables programs read from the environment: assignments to them are filtered too.
_ENV_LOWER = frozenset({"http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"})

# Arithmetic that runs nothing: numbers (decimal, 0x.., BASE#..) and operators, no names.
_ARITH_NODES = frozenset({"number", "binary_expression", "unary_expression", "ternary_expression",
                          "parenthesized_expression"})
_ARITH_NUMBER = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]+|[0-9]+#[0-9A-Za-z@_]+")
_ARITH_ASSIGN = frozenset({"=", "+=", "-=", "*=", "/=", "%=", "<<=", ">>=", "&=", "^=", "|=", "++", "--"})
_ARITH_TESTS = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge"})  # [[ ]] evaluates their operands
_NAME_TESTS = frozenset({"-v", "-R"})  # test, [ and [[ ]] evaluate a subscript of the name
_INTEGER = re.compile(r"[-+]?[0-9]+")
# Builtins that take variable names: bash evaluates a subscript in one (`read 'a[$(cmd)]'`).
_NAME_BUILTINS = frozenset({"read", "printf", "getopts", "wait", "unset", "test", "["})
_SUBSCRIPTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\[")

_RESERVED = frozenset({"{", "}", "!", "if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while",
                       "until", "do", "done", "in", "function", "[[", "]]", "((", "coproc"})

_UNJUDGED = object()  # a flow that cannot be followed: the cwd after it is unknown
BOTTOM = object()  # unreachable (after `exit`)


class Unjudgeable(Exception):
    """One part of the line cannot be judged: the message says which and why."""


@attrs.frozen
class Part:
    """One thing the line does that rules judge.

    kind: ``exec`` (a simple command), ``write`` / ``read`` (a file by path), ``unjudgeable``
    (text says what could not be judged), ``refused`` (text says why).
    """

    kind: str
    text: str  # what a person reads: the command after quote removal, the path, the reason
    key: str | None = None  # exec: the encoded words the rules match
    unresolved: str | None = None  # exec: why no rule can judge it unless it spells a word exactly

    def unit(self):
        if self.kind in ("unjudgeable", "refused"):
            return Unit(self.kind, self.text)
        return Unit(self.kind, self.text, unjudgeable=self.unresolved, key=self.key)


@attrs.frozen
class Analysis:
    parts: tuple  # of Part, in the order the line has them
    heredocs: tuple = ()  # of dict: bytes, sha256 (and the files the command writes)

    @property
    def units(self) -> tuple:
        return tuple(p.unit() for p in self.parts)


@functools.lru_cache(maxsize=64)
def dialect_of(shell: str) -> str | None:
    """The dialect judged for a login shell (a name or a path): bash, sh, or None (not judged)."""
    name = posixpath.basename(shell or "")
    if name == "bash":
        return "bash"
    if name in ("sh", "dash", "ash"):
        return "sh"
    return None


_PARSER = None


def _parser():
    global _PARSER
    if _PARSER is None:
        import tree_sitter
        import tree_sitter_bash

        _PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bash.language()))
    return _PARSER


PARSE_SMALL = 1024  # a line this long parses in milliseconds, whatever it holds: no clock needed
PARSE_TIME = 0.1  # seconds the parses of one line may take (the reactor waits)


class TooSlow(Exception):
    pass


def parse_tree(text: str, deadline: float | None = None):
    """The tree-sitter tree of a command line (bytes are UTF-8).

    tree-sitter-bash's error recovery is quadratic on some input: 32 KiB of `)` take ten
    seconds, in C, holding the GIL, so on the reactor. A longer line is parsed so that it stops
    at ``deadline`` (TooSlow)."""
    data = text.encode("utf-8", "surrogateescape")
    parser = _parser()
    if deadline is None or len(data) <= PARSE_SMALL:
        return parser.parse(data)
    late = []

    # The parser checks its progress callback only every so many steps, and its lexer can spend
    # long in one (256 KiB of `)` before the first check): input comes in small pieces, and none
    # once the time is up.
    def read(offset, _point):
        if time.monotonic() > deadline:
            late.append(True)
            return b""
        return data[offset:offset + 4096]

    def progress(*_):
        if time.monotonic() > deadline:
            late.append(True)
            return True
        return False

    try:
        tree = parser.parse(read, progress_callback=progress)
    except ValueError:  # halted by the callback
        parser.reset()
        raise TooSlow() from None
    if late:
        raise TooSlow()
    return tree


def analyze(line: str, shell: str = "bash") -> Analysis:
    """Every part of a command line, for a login shell of this dialect (``bash`` or ``sh``)."""
    j = _Judge()
    j.deadline = time.monotonic() + PARSE_TIME
    try:
        dialect = dialect_of(shell)
        if dialect is None:
            raise Unjudgeable(f"the upstream shell {shell!r} is not one the gateway can read (bash or sh)")
        j.program(line, dialect, 0, None)
        j.finish()
        if not j.parts:
            # Nothing that needs a rule (`cd /srv`, `true`): the line itself is the operation.
            j.parts.append(Part("exec", _display_line(line), _encode_line(line), None))
    except Unjudgeable as e:
        return Analysis((Part("unjudgeable", str(e)),), tuple(j.heredocs))
    except RecursionError:
        # Not reached while MAX_NESTING bounds the walk: a backstop, so a line never ends in an
        # error with no judgement.
        return Analysis((Part("unjudgeable", f"a command line nested too deeply (more than {MAX_NESTING} "
                                             f"levels)"),), ())
    return Analysis(tuple(j.parts), tuple(j.heredocs))


# Programs that, run on a terminal (`ssh -t host CMD`), take no commands from its keys and open no
# pager, editor or prompt that runs one: an exec of only these needs no `shell` grant with a
# terminal. Every other program might (`less`, `more`, `man`, `systemctl`, `journalctl` and `git`
# open a pager that runs `!cmd`; `vi` runs `:!sh`; `top`, `mysql`, `python3` read commands): with
# a terminal it needs `shell` as well as its exec rule. A list of what is known, not of what is
# feared: a program missing from it needs `shell` (fails closed). (`rm -i`, `cp -i` ask y/n only.)
NO_TERMINAL_ESCAPE = frozenset({
    ":", "true", "false", "cd", "pwd", "echo", "printf", "test", "[", "exit", "sleep", "kill", "wait", "env",
    "cat", "tac", "head", "tail", "wc", "nl", "ls", "stat", "du", "df", "date", "uptime", "id", "whoami",
    "groups", "hostname", "uname", "nproc", "free", "ps", "printenv", "tty", "file", "basename", "dirname",
    "realpath", "readlink", "sort", "uniq", "cut", "tr", "seq", "rev", "sha256sum", "sha1sum", "sha512sum",
    "md5sum", "cksum", "base64", "od", "grep", "egrep", "fgrep", "diff", "cmp", "comm", "paste", "fold",
    "touch", "mkdir", "rmdir", "rm", "cp", "mv", "ln", "chmod", "chown", "chgrp", "truncate", "mktemp", "tee",
})


def terminal_unit(parts) -> Unit | None:
    """With a terminal, the keys typed reach what the line runs: a pager's `!cmd`, an editor's
    `:!sh`. The `shell` unit such a line needs besides its parts, or None when every part runs a
    program of NO_TERMINAL_ESCAPE (or only opens files)."""
    for p in parts:
        if p.kind in ("write", "read"):
            continue
        name = shown = None
        if p.kind == "exec" and p.key is not None:
            name = shown = p.key.split(SEP, 1)[0]
            if "/" in name:
                # A name in PATH's own folders is that program; elsewhere it is any file.
                name = posixpath.basename(name) if name.startswith(_BIN_DIRS) else None
        if name is None or name not in NO_TERMINAL_ESCAPE:
            what = f"`{_clip(shown, 60)}`" if shown and V_OPEN not in shown else "what it runs"
            return Unit("shell", f"(exec on a terminal: {what} may run commands typed at it)")
    return None


def _display_line(line: str) -> str:
    return " ".join(line.split())


def _encode_line(line: str) -> str:
    return SEP.join(line.split())


# --- words ------------------------------------------------------------------------------------

@attrs.define
class Word:
    enc: str  # what rules match
    text: str  # display
    value: str | None  # the literal value, when the shell leaves the word as it is
    why: str | None = None  # why it is not literal (expanded by the shell)

    @property
    def literal(self) -> bool:
        return self.value is not None


def _quote(s: str) -> str:
    if s and _PLAIN.fullmatch(s):
        return s
    return "'" + s.replace("'", "'\\''") + "'"


def literal_word(value: str) -> Word:
    return Word(value, _quote(value), value)


_DQ_ESCAPES = {"$": "$", "`": "`", '"': '"', "\\": "\\", "\n": ""}
_ANSI = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"', "?": "?"}


def _unescape_dq(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in _DQ_ESCAPES:
            out.append(_DQ_ESCAPES[s[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _ansi_c(body: str) -> str | None:
    """The value of $'...' for the plain escapes; None for any other (judged as not literal)."""
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 < len(body) and body[i + 1] in _ANSI:
                out.append(_ANSI[body[i + 1]])
                i += 2
                continue
            return None
        out.append(c)
        i += 1
    return "".join(out)


# Where a path segment ends in an argument: `/`, and `=` and `:` (`--root=..`, `host:..`).
_SEGMENTS = re.compile("([/=:])")
_DOT_ENCODINGS = ("%c0%ae", "%e0%80%ae", "%u002e", "%2e")  # percent, overlong UTF-8, IIS


def _dotdot(seg: str, globs: bool) -> bool:
    """Is this segment `..`, or could it be read as `..`? Encoded (`%2e%2e`, `%252e.`, `%c0%ae.`,
    the two-dot leader `‥`) for programs that decode a path (curl, web tools), or a pattern the
    shell could expand to `..` (`.?`, `.*`, `..*`: one that starts with a dot and can match one
    more). ``globs``: the command's own unquoted patterns (a rule's `*` is not one)."""
    if seg == ".." or (globs and INPUT in seg):
        # (xargs input spliced into a path, `-I{} cat /var/log/{}`: it could be `../..`)
        return True
    if not seg or ("." not in seg and "%" not in seg and seg.isascii()):
        return False
    if globs and seg[0] == "." and len(seg) > 1 and all(c in (".", G_STAR, G_QMARK) for c in seg[1:]):
        if sum(c != G_STAR for c in seg[1:]) <= 1:
            return True
    low = seg.lower()
    if "%" in low:
        for _ in range(3):  # double and triple encoding
            for enc in _DOT_ENCODINGS:
                low = low.replace(enc, ".")
            low = low.replace("%25", "%")
    if not low.isascii():
        low = unicodedata.normalize("NFKC", low)
    return low == ".."


@functools.lru_cache(maxsize=512)  # (every allow and approve rule asks it of the same part)
def mark_dotdots(key: str, globs: bool = True) -> str:
    """The encoded command (or rule) with each `..` segment as one DOTDOT character."""
    if "." not in key and "%" not in key and INPUT not in key and key.isascii():
        return key
    words = []
    for word in key.split(SEP):
        if V_OPEN not in word and word != INPUT:  # (a word the shell expands: no rule's `*` covers it anyway)
            pieces = _SEGMENTS.split(word)
            word = "".join(DOTDOT if i % 2 == 0 and _dotdot(p, globs) else p for i, p in enumerate(pieces))
        words.append(word)
    return SEP.join(words)



# --- the judge ---------------------------------------------------------------------------------

class _Judge:
    def __init__(self):
        self.parts: list[Part] = []
        self.heredocs: list[dict] = []
        self.src = b""
        self.dialect = "bash"
        self.depth = 0
        self.nesting = 0  # syntax levels of the programs around the one being walked (sh -c)
        self.root = None  # the tree being walked, and how deep it nests (None: not yet known)
        self.levels = None
        self.words = 0
        self.deadline = None  # when the parses of this line must be done (monotonic)
        # Descriptors the line points at files (anywhere in it, nested shells included), the
        # copies it makes of them (dst, src), and the descriptor names it opens (fd, text).
        self.file_fds: set[int] = set()
        self.dups: list[tuple[int, int]] = []
        self.fd_names: list[tuple[int, str]] = []

    def finish(self):
        """After the whole line: a descriptor name that may stand for a file the line opened
        (`3<conf >/dev/fd/3`) cannot be judged as quiet: which file, and how, depends on order."""
        if not self.fd_names:
            return
        files = set(self.file_fds)
        changed = True
        while changed:
            changed = False
            for dst, src in self.dups:
                if src in files and dst not in files:
                    files.add(dst)
                    changed = True
        for fd, text in self.fd_names:
            if fd in files:
                self.unjudgeable(f"{_clip(text)!r}: a descriptor the line points at a file; opening it "
                                 f"opens that file again (write to or read from it by name)")
                return

    # Each program (the line, and each `sh -c` string) is parsed and walked with its own source.
    def program(self, text: str, dialect: str, depth: int, cwd):
        if depth > MAX_DEPTH:
            raise Unjudgeable(f"shells nested deeper than {MAX_DEPTH}")
        if len(text) > MAX_LINE:
            raise Unjudgeable(f"a command line longer than {MAX_LINE // 1024} KiB")
        if _BAD_CHARS.search(text):
            raise Unjudgeable("control characters in the command line")
        if _WIDE_ESCAPE.search(text):
            # In a BIG5, GBK or Shift-JIS locale bash reads the byte before a backslash and the
            # backslash as one character: `中\'` opens a quote there where UTF-8 escapes it.
            raise Unjudgeable("a backslash right after a non-ASCII character (in some locales it is part "
                              "of that character, not an escape)")
        text = _join_continuations(text, self.deadline)
        tree = self.parse(text)
        root = tree.root_node
        base = self.nesting
        if self.root is not None:  # a `sh -c` string: it counts from the deepest level of the line around it
            if self.levels is None:
                self.levels = nesting(self.root, MAX_NESTING)
            base += self.levels
        levels = None
        if root.descendant_count > MAX_NESTING - base:  # else it cannot nest that deep: no walk needed
            levels = nesting(root, MAX_NESTING - base)
            if levels is None:
                raise Unjudgeable(f"shell syntax nested more than {MAX_NESTING} levels deep (subshells, groups, "
                                  f"if/while/for/case, $(...), quotes, arithmetic inside one another)")
        if (levels is not None and levels < 0) or root.descendant_count > MAX_NODES:
            raise Unjudgeable(f"a command line of more than {MAX_NODES} syntax nodes")
        if root.has_error:
            raise Unjudgeable(f"the shell syntax of {_clip(text)!r} (it does not parse)")
        src = text.encode("utf-8", "surrogateescape")
        misread = _misread(root, src)
        if misread is not None:
            raise Unjudgeable(f"the shell syntax of {_clip(text)!r}: the parser reads it otherwise than "
                              f"the shell ({misread})")
        saved = (self.src, self.dialect, self.depth, self.nesting, self.root, self.levels)
        self.src, self.dialect, self.depth, self.nesting = src, dialect, depth, base
        self.root, self.levels = root, levels
        try:
            return self.sequence(root.children, cwd)
        finally:
            self.src, self.dialect, self.depth, self.nesting, self.root, self.levels = saved

    def parse(self, text: str):
        try:
            return parse_tree(text, self.deadline)
        except TooSlow:
            raise Unjudgeable(f"a command line that takes the parser more than {PARSE_TIME:g} s") from None

    def t(self, node) -> str:
        return self.src[node.start_byte:node.end_byte].decode("utf-8", "surrogateescape")

    def add(self, part: Part):
        if len(self.parts) >= MAX_PARTS:
            raise Unjudgeable(f"more than {MAX_PARTS} commands in one line")
        self.parts.append(part)

    def unjudgeable(self, what: str):
        self.add(Part("unjudgeable", what))

    def bash_only(self, what: str):
        if self.dialect != "bash":
            raise Unjudgeable(f"{what} is bash syntax, and this shell is sh")

    # --- statements: each returns (cwd if it succeeded, cwd if it failed) ---------------------

    def sequence(self, children, cwd):
        ok = fail = cwd
        last = None
        before = cwd
        for ch in children:
            if ch.type == "&":
                # The statement before runs in the background, in a subshell: its cd stays there.
                ok = fail = before
                continue
            if not ch.is_named or ch.type == "comment":
                continue
            if last is not None:
                cwd = _merge(ok, fail)
            before = cwd
            ok, fail = self.statement(ch, cwd)
            last = ch
        return ok, fail

    def statement(self, node, cwd, redirs=()):
        """``redirs``: redirections written after this statement. tree-sitter hangs `a && b > f`
        and `a | b > f` on the whole list; the shell gives them to the last command (`b`),
        after `a` ran (and after its cd): so they are passed down to the rightmost command."""
        k = node.type
        if k == "command":
            return self.command(node, cwd, redirs)
        if k == "redirected_statement":
            return self.redirected(node, cwd, redirs)
        if k == "list":
            return self.list(node, cwd, redirs)
        if k == "pipeline":
            stages = [c for c in node.children if c.is_named and c.type != "comment"]
            for ch in node.children:
                if ch.type == "|&":
                    self.bash_only("|&")
            for i, ch in enumerate(stages):
                self.statement(ch, cwd, redirs if i == len(stages) - 1 else ())
            return cwd, cwd
        if k == "negated_command":
            inner = [c for c in node.children if c.is_named and c.type != "comment"]
            if len(inner) != 1:
                raise Unjudgeable(f"{_clip(self.t(node))!r}")
            ok, fail = self.statement(inner[0], cwd, redirs)
            return fail, ok
        if redirs:
            # A compound command's redirections are opened before it runs, where it starts.
            info = _Redirects()
            for r in redirs:
                self.redirect(r, cwd, info)
        if k == "subshell":
            self.sequence(node.children, cwd)
            return cwd, cwd
        if k == "compound_statement":
            if node.children and node.children[0].type == "((":
                self.bash_only("((...))")
                self.arithmetic(node, "arithmetic command")
                return cwd, cwd
            return self.sequence(node.children, cwd)
        if k == "if_statement":
            return self.if_statement(node, cwd)
        if k == "while_statement":
            return self.loop(node, cwd)
        if k == "for_statement":
            return self.for_statement(node, cwd)
        if k == "case_statement":
            return self.case_statement(node, cwd)
        if k == "variable_assignment":
            self.assignment(node, prefix=False)
            return cwd, cwd
        if k == "variable_assignments":
            for ch in node.named_children:
                self.assignment(ch, prefix=False)
            return cwd, cwd
        if k == "declaration_command":
            self.declaration(node)
            return cwd, cwd
        if k == "unset_command":
            for ch in node.named_children:
                w = Word(self.t(ch), self.t(ch), self.t(ch)) if ch.type == "variable_name" else self.word(ch)
                if w.literal and _NAME.fullmatch(w.value):
                    self.unset(w.value)
                    continue
                if w.literal and w.value in ("-v", "-f", "-n"):
                    continue
                if not w.literal or "[" in w.value:
                    # bash evaluates the subscript of an array element to unset (`PIPESTATUS[$(cmd)]`).
                    self.unjudgeable(f"{_clip(self.t(node))!r}: unset of a name the gateway cannot read "
                                     f"(a subscript is evaluated)")
                    break
            return cwd, cwd
        if k == "test_command":
            if node.children and node.children[0].type == "[[":
                self.bash_only("[[ ... ]]")
            self.test_command(node)
            return cwd, cwd
        if k == "function_definition":
            self.unjudgeable(f"a function definition ({_clip(self.t(node))!r}): what it runs is decided later")
            return _UNJUDGED, _UNJUDGED
        if k == "c_style_for_statement":
            self.unjudgeable(f"an arithmetic for loop ({_clip(self.t(node))!r})")
            return None, None
        raise Unjudgeable(f"{_clip(self.t(node))!r} ({k.replace('_', ' ')})")

    def list(self, node, cwd, redirs=()):
        # `a && b || c ...` is a chain of lists nested on the left, one per operator: followed in
        # a loop, so a long chain is no deeper to walk than one list.
        chain = []
        while node.type == "list":
            named = [c for c in node.children if c.is_named and c.type != "comment"]
            ops = [c.type for c in node.children if c.type in ("&&", "||")]
            if len(named) != 2 or len(ops) != 1:
                raise Unjudgeable(f"the list {_clip(self.t(node))!r}")
            chain.append((ops[0], named[1]))
            node = named[0]
        ok, fail = self.statement(node, cwd)
        for i, (op, right) in enumerate(reversed(chain)):
            last = redirs if i == len(chain) - 1 else ()  # the rightmost command's redirections
            if op == "&&":
                rok, rfail = self.statement(right, ok if ok is not BOTTOM else cwd, last)
                ok, fail = rok, _merge(fail, rfail)
            else:
                rok, rfail = self.statement(right, fail if fail is not BOTTOM else cwd, last)
                ok, fail = _merge(ok, rok), rfail
        return ok, fail

    def if_statement(self, node, cwd):
        # if C; then B; [elif C; then B;]... [else B;] fi
        results = []
        cond, body, mode = [], [], "cond"
        branch_cwd = cwd

        def flush_branch(c_nodes, b_nodes, start):
            ok, fail = self.sequence(c_nodes, start)
            bok, bfail = self.sequence(b_nodes, ok) if b_nodes else (ok, ok)
            results.append(_merge(bok, bfail))
            return fail

        for ch in node.children:
            t = ch.type
            if t in ("if", "fi", ";", "\n"):
                continue
            if t == "then":
                mode = "body"
                continue
            if t == "elif_clause":
                branch_cwd = flush_branch(cond, body, branch_cwd)
                cond, body = [], []
                self.clause(ch, branch_cwd, results, elif_=True)
                continue
            if t == "else_clause":
                if cond:
                    branch_cwd = flush_branch(cond, body, branch_cwd)
                    cond, body = [], []
                ok, fail = self.sequence(ch.children, branch_cwd)
                results.append(_merge(ok, fail))
                branch_cwd = BOTTOM
                continue
            (cond if mode == "cond" else body).append(ch)
        if cond:
            branch_cwd = flush_branch(cond, body, branch_cwd)
        results.append(branch_cwd)
        out = BOTTOM
        for r in results:
            out = _merge(out, r)
        return out, out

    def clause(self, node, cwd, results, elif_):
        cond, body, mode = [], [], "cond"
        for ch in node.children:
            if ch.type in ("elif", ";"):
                continue
            if ch.type == "then":
                mode = "body"
                continue
            (cond if mode == "cond" else body).append(ch)
        ok, fail = self.sequence(cond, cwd)
        bok, bfail = self.sequence(body, ok)
        results.append(_merge(bok, bfail))

    def loop(self, node, cwd):
        cond = [c for c in node.children if c.is_named and c.type not in ("do_group", "comment")]
        body = [c for c in node.children if c.type == "do_group"]
        ok, fail = self.sequence(cond, cwd)
        bok, bfail = self.sequence(body[0].children, ok) if body else (ok, ok)
        if _merge(bok, bfail) != cwd:
            # The body moves: a second round starts elsewhere. Judge it again from nowhere known.
            self.sequence(cond, None)
            if body:
                self.sequence(body[0].children, None)
            return None, None
        return _merge(ok, bok), _merge(fail, bfail)

    def for_statement(self, node, cwd):
        var = next((c for c in node.children if c.type == "variable_name"), None)
        if var is not None:
            self.shell_variable(self.t(var), None)
        for ch in node.children:
            if ch.is_named and ch.type not in ("variable_name", "do_group", "comment"):
                self.word(ch)
        body = next((c for c in node.children if c.type == "do_group"), None)
        if body is None:
            return cwd, cwd
        ok, fail = self.sequence(body.children, cwd)
        if _merge(ok, fail) != cwd:
            self.sequence(body.children, None)
            return None, None
        return cwd, cwd

    def case_statement(self, node, cwd):
        out = cwd
        for ch in node.children:
            if ch.type == "case_item":
                body = []
                seen_paren = False
                for c in ch.children:
                    if c.type == ")":
                        seen_paren = True
                        continue
                    if not seen_paren:
                        if c.is_named:
                            self.word(c)  # patterns: only for what they would substitute
                        continue
                    body.append(c)
                ok, fail = self.sequence(body, cwd)
                out = _merge(out, _merge(ok, fail))
            elif ch.is_named and ch.type != "comment":
                self.word(ch)
        return out, out

    def arithmetic(self, node, what):
        """Arithmetic runs nothing when it is numbers and operators only. Anything else is not
        judged: a variable's value is evaluated again, and a name with a subscript (`a[$(cmd)]`,
        quoted or not) runs the command in it; assignments have side effects."""
        for n in _walk(node):
            if n is node:
                continue
            if n.is_named:
                # (tree-sitter reads 0x1f as a variable name: it is a number, no name starts with a digit)
                ok = (n.type in _ARITH_NODES and (n.type != "number" or _ARITH_NUMBER.fullmatch(self.t(n)))) or (
                    n.type == "variable_name" and _ARITH_NUMBER.fullmatch(self.t(n)) and self.t(n)[0].isdigit())
            else:
                ok = n.type not in _ARITH_ASSIGN
            if not ok:
                self.unjudgeable(f"{what} with variables, strings or side effects ({_clip(self.t(node))!r})")
                return

    def test_command(self, node):
        for n in _walk(node):
            if n.type in ("simple_expansion", "expansion", "command_substitution", "process_substitution",
                          "arithmetic_expansion"):
                self.unjudgeable(f"a test with expansions ({_clip(self.t(node))!r})")
                return
        # `[[ X -eq Y ]]` evaluates X and Y as arithmetic and `[[ -v X ]]` a subscript of X:
        # bash runs `a[$(cmd)]` there even from a quoted string. Operands are numbers, names plain.
        for n in _walk(node):
            op = self.t(n) if n.type in ("test_operator", "word") else None
            if op in _ARITH_TESTS:
                parent = n.parent
                operands = [c for c in parent.children if c.id != n.id] if parent is not None else []
                if parent is None or parent.type != "binary_expression" or len(operands) != 2 or not all(
                        _INTEGER.fullmatch(self.word(c).value or "x") for c in operands):
                    self.unjudgeable(f"a test that evaluates {_clip(self.t(parent or n))!r} as arithmetic "
                                     f"(only numbers are judged)")
                    return
            elif op in _NAME_TESTS:
                parent = n.parent
                operands = [c for c in parent.children if c.id != n.id] if parent is not None else []
                if parent is None or parent.type != "unary_expression" or len(operands) != 1 or \
                        not _NAME.fullmatch(self.word(operands[0]).value or "-"):
                    self.unjudgeable(f"a test of the variable {_clip(self.t(parent or n))!r} "
                                     f"(a subscript is evaluated: only plain names are judged)")
                    return

    def declaration(self, node):
        kw = node.children[0].type if node.children else ""
        if kw not in ("export", "readonly"):
            self.unjudgeable(f"{_clip(self.t(node))!r}: {_UNJUDGEABLE_BUILTINS.get(kw, kw)}")
            return
        for ch in node.children[1:]:
            if ch.type == "variable_assignment":
                self.assignment(ch, prefix=True)
            elif ch.type == "variable_name":
                continue
            else:
                self.unjudgeable(f"{kw} {self.t(ch)!r}")

    # --- assignments ------------------------------------------------------------------------

    def assignment(self, node, prefix: bool):
        name_node = node.child_by_field_name("name")
        value_node = node.child_by_field_name("value")
        if name_node is None or name_node.type != "variable_name":
            self.unjudgeable(f"the assignment {_clip(self.t(node))!r}")
            return
        name = self.t(name_node)
        if value_node is None:
            value = Word("", "''", "")
        elif value_node.type == "array":
            self.bash_only("an array")
            self.unjudgeable(f"the array assignment {_clip(self.t(node))!r}")
            return
        else:
            value = self.word(value_node, assignment=True)
        if prefix:
            self.environment(name, value, self.t(node))
        else:
            self.shell_variable(name, value, self.t(node))

    def environment(self, name, value: Word, text=None):
        """NAME=VALUE for a command's environment: the same filter as SSH `env` requests."""
        if not value.literal:
            self.add(Part("refused", f"{_clip(text or name)!r}: an environment value the shell would expand"))
        elif not env_passes(name, value.value):
            self.add(Part("refused", f"{name}={_clip(value.value)!r}: only LANG, LC_*, TZ and HOOPY_* "
                                     f"variables with plain values may be set for the upstream"))

    def unset(self, name: str):
        """unset NAME: with PATH unset bash looks for programs in the current directory (then
        `ls` is ./ls); an environment name is filtered as an assignment to it would be."""
        if name.islower() and name not in _ENV_LOWER and not name.startswith(("bash", "ld_")):
            return
        if not env_passes(name, ""):
            self.add(Part("refused", f"unset {name}: only LANG, LC_*, TZ and HOOPY_* variables may be changed "
                                     f"for the upstream"))

    def shell_variable(self, name, value: Word | None, text=None):
        """A shell variable assigned (`x=1`, `for x in`): exported names change what programs do."""
        if name.islower() and name not in _ENV_LOWER and not name.startswith(("bash", "ld_")):
            if value is not None and not value.literal:
                pass  # its value is unknown, and so is every later use of it
            return
        self.environment(name, value if value is not None else Word("", "", None), text or name)

    # --- words ------------------------------------------------------------------------------

    def word(self, node, assignment=False) -> Word:
        self.words += 1
        if self.words > MAX_WORDS:
            raise Unjudgeable(f"more than {MAX_WORDS} words in one line")
        if node.type in ("word", "number"):
            text = self.t(node)
            if _PLAIN.fullmatch(text):  # the usual case: nothing to remove or expand
                return Word(text, text, text)
        pieces: list[tuple[str, str]] = []
        self._collect(node, pieces)
        text = self.t(node)
        xs = [s for kind, s in pieces if kind == "x"]
        if xs:
            return self._unresolved(text, pieces, f"`{_clip(xs[0])}` would be expanded by the shell")
        value, enc, mask = [], [], []
        glob = False
        first = True
        for kind, s in pieces:
            if kind == "lit":
                value.append(s)
                enc.append(s)
                mask.append("\x01" * len(s))
                first = False
                continue
            i = 0
            while i < len(s):
                c = s[i]
                if c == "\\":
                    if i + 1 < len(s):
                        value.append(s[i + 1])
                        enc.append(s[i + 1])
                        mask.append("\x01")
                        i += 2
                    else:
                        value.append("\\")
                        enc.append("\\")
                        mask.append("\x01")
                        i += 1
                    first = False
                    continue
                if c in "$`()":
                    return self._unresolved(text, pieces, f"`{_clip(text)}` would be expanded by the shell")
                if c == "~" and (first or (mask and mask[-1] in "=:")):
                    return self._unresolved(text, pieces, f"`{_clip(text)}`: ~ is expanded by the shell")
                if c == "*":
                    glob = True
                    enc.append(G_STAR)
                elif c == "?":
                    glob = True
                    enc.append(G_QMARK)
                else:
                    enc.append(c)
                value.append(c)
                mask.append(c)
                first = False
                i += 1
        m = "".join(mask)
        if "[" in m and "]" in m[m.index("["):]:
            return self._unresolved(text, pieces, f"`{_clip(text)}`: [...] is a pattern the shell expands")
        if ("{" in m) and _BRACE.search(m):
            return self._unresolved(text, pieces, f"`{_clip(text)}`: braces are expanded by the shell")
        v = "".join(value)
        if _BAD_CHARS.search(v):
            return self._unresolved(text, pieces, f"`{_clip(text)}` holds control characters")
        if glob:
            return Word("".join(enc), text, None, f"`{_clip(text)}` is a pattern the shell expands")
        return Word(v, _quote(v), v)

    @staticmethod
    def _unresolved(text, pieces, why) -> Word:
        """A word only a rule spelling it exactly matches: its source between V_OPEN and V_CLOSE,
        then (after SKEL) its skeleton for deny rules: the literal text it keeps, INPUT where the
        shell would put anything (`ok-$N` can never be `denied-1`)."""
        skel = []
        for kind, s in pieces:
            if kind == "lit":
                skel.append(s)
            elif kind == "x" or any(c in s for c in "$`()~[{"):
                skel.append(INPUT)
            else:
                i = 0
                while i < len(s):
                    if s[i] == "\\" and i + 1 < len(s):
                        skel.append(s[i + 1])
                        i += 2
                        continue
                    skel.append(INPUT if s[i] in "*?" else s[i])
                    i += 1
        return Word(V_OPEN + text + SKEL + "".join(skel) + V_CLOSE, text, None, why)

    def _collect(self, node, pieces):
        k = node.type
        if k in ("word", "number"):
            pieces.append(("uq", self.t(node)))
        elif k == "raw_string":
            pieces.append(("lit", self.t(node)[1:-1]))
        elif k == "string":
            # The text between the quotes, blanks and line breaks tree-sitter leaves between its
            # pieces included: `"a<newline>b"` is one argument with the line break in it.
            kids = node.children
            prev = kids[0].end_byte if kids and kids[0].type == '"' else node.start_byte
            text = []
            for i in range(1, len(kids)):
                ch = kids[i]
                gap = self.src[prev:ch.start_byte].decode("utf-8", "surrogateescape")
                if ch.type == '"' and i == len(kids) - 1:
                    # (tree-sitter puts the blanks before the closing quote into its token)
                    text.append(gap + self.t(ch)[:-1])
                    break
                if ch.type == "string_content":
                    text.append(gap + self.t(ch))
                else:
                    if gap or text:
                        pieces.append(("lit", _unescape_dq("".join(text) + gap)))
                        text = []
                    self._expansion(ch, pieces)
                prev = ch.end_byte
            if text:
                pieces.append(("lit", _unescape_dq("".join(text))))
        elif k == "ansi_c_string":
            self.bash_only("$'...'")
            v = _ansi_c(self.t(node)[2:-1])
            pieces.append(("lit", v) if v is not None else ("x", self.t(node)))
        elif k == "concatenation":
            for ch in node.children:
                self._collect(ch, pieces)
        else:
            self._expansion(node, pieces)

    def _expansion(self, node, pieces):
        if node.type in ("command_substitution", "process_substitution"):
            self.substitution(node)
        else:
            for n in _walk(node):
                if n.type in ("command_substitution", "process_substitution") and n is not node:
                    self.substitution(n)
            if node.type == "arithmetic_expansion":
                self.arithmetic(node, "arithmetic")
        pieces.append(("x", self.t(node)))

    def substitution(self, node):
        what = "process substitution" if node.type == "process_substitution" else "command substitution"
        if node.type == "process_substitution":
            self.bash_only("<(...)")
        self.unjudgeable(f"{what} {_clip(self.t(node))!r}: its output is known only once it has run")
        # What it would run is judged too: a deny rule still refuses the line outright.
        inner = [c for c in node.children if c.is_named]
        start = len(self.parts)
        try:
            self.sequence(inner, None)
        except Unjudgeable as e:
            self.unjudgeable(str(e))
        # Rules judge them (a deny rule refuses the line), but one nothing matches is part of
        # what cannot be judged, not a refusal of its own.
        for i in range(start, len(self.parts)):
            p = self.parts[i]
            if p.kind in ("exec", "write", "read") and p.unresolved is None:
                self.parts[i] = attrs.evolve(p, unresolved=f"runs inside {what} {_clip(self.t(node), 60)!r}")

    # --- commands -----------------------------------------------------------------------------

    def redirected(self, node, cwd, redirs=()):
        body = node.child_by_field_name("body")
        own = [c for c in node.children if c.is_named and (body is None or c.start_byte != body.start_byte)]
        if body is None:
            # Only redirections (`> file`): they still open files.
            info = _Redirects()
            for r in own + list(redirs):
                self.redirect(r, cwd, info)
            return cwd, cwd
        return self.statement(body, cwd, tuple(own) + tuple(redirs))

    def command(self, node, cwd, outer_redirects):
        # A reserved word where a command's name goes is syntax to the shell: tree-sitter-bash reads
        # `! { rm x; }`, `! if ...` and `time { ...; }` as commands named `{` and `if`, with the
        # commands inside as their arguments (bash runs them). Likewise a reserved word after bash's
        # keyword `time`.
        raw = [self.t(c) for c in node.children if c.is_named and c.type not in (
            "variable_assignment", "file_redirect", "heredoc_redirect", "herestring_redirect", "comment")]
        if raw and (raw[0] in _RESERVED or (raw[0] == "time" and self.dialect == "bash" and any(
                r in _RESERVED for r in raw[1:2] + [x for x in raw[2:3] if raw[1:2] in (["-p"], ["--"])]))):
            raise Unjudgeable(f"{_clip(self.t(node))!r}: a reserved word read as a command (the parser "
                              f"does not see the compound command the shell runs)")
        info = _Redirects()
        assignments, words = [], []
        for ch in node.children:
            k = ch.type
            if k == "variable_assignment":
                assignments.append(ch)
            elif k in ("file_redirect", "heredoc_redirect", "herestring_redirect"):
                self.redirect(ch, cwd, info)
            elif k == "command_name":
                words.append(self.word(ch.named_children[0] if ch.named_children else ch))
            elif k == "subscript" or not ch.is_named:
                if ch.is_named or ch.type not in ("$",):
                    raise Unjudgeable(f"{_clip(self.t(node))!r}")
                words.append(Word(V_OPEN + "$" + V_CLOSE, "$", None, "a lone $"))
            elif k == "comment":
                continue
            else:
                words.append(self.word(ch))
        for r in outer_redirects:
            self.redirect(r, cwd, info)
        for a in assignments:
            self.assignment(a, prefix=bool(words))
        if not words:
            return cwd, cwd
        result = self.simple(words, cwd, info)
        if info.heredoc is not None:
            info.heredoc["writes"] = info.writes
            info.heredoc["command"] = " ".join(w.text for w in words)
        return result

    def simple(self, words: list[Word], cwd, info: "_Redirects", depth=0, program=False):
        """Judge one simple command: see through wrappers; return the cwd after it.

        ``program``: run by a program (nice, env, timeout, xargs, exec ...), which finds the name
        in PATH: a shell builtin (`cd`, `:`, `test`, `command`) is then a program by that name,
        needing a rule like any other, and it changes nothing in this shell."""
        if depth > MAX_DEPTH:
            raise Unjudgeable(f"wrappers nested deeper than {MAX_DEPTH}")
        name = words[0]
        if not name.literal:
            self.exec_part(words)
            return cwd, cwd
        cmd = name.value
        base = cmd
        if "/" in cmd and cmd.startswith(_BIN_DIRS):
            base = posixpath.basename(cmd)
        args = words[1:]
        if program and (cmd in _BUILTIN_ONLY or cmd in _UNJUDGEABLE_BUILTINS):
            self.exec_part(words)
            return cwd, cwd
        if cmd in _UNJUDGEABLE_BUILTINS:
            self.unjudgeable(f"{_clip(_show(words))!r}: {_UNJUDGEABLE_BUILTINS[cmd]}")
            return _UNJUDGED if cmd in ("source", ".", "eval") else cwd, cwd
        if cmd == "cd":
            return self.cd(args, cwd)
        if cmd in ("pushd", "popd"):
            self.exec_part(words)
            return None, cwd
        if cmd in _NAME_BUILTINS and self.subscripted(words):
            return cwd, cwd
        if cmd in _NO_OP:
            if cmd == "wait" and any(w.literal and w.value.startswith("-") and "p" in w.value for w in args):
                # wait -p NAME assigns the job's pid to any variable (PATH included).
                self.unjudgeable(f"{_clip(_show(words))!r}: wait -p assigns a variable")
                return cwd, cwd
            for w in args:
                if not w.literal:
                    self.exec_part(words)
                    break
            if cmd in ("exit", "return"):
                return BOTTOM, BOTTOM
            return cwd, cwd
        if cmd == "set":
            self.set_builtin(words)
            return cwd, cwd
        if cmd in ("test", "[") and all(w.literal for w in args):
            return cwd, cwd  # runs nothing
        if cmd == "export" or cmd == "readonly":
            for w in args:
                if not w.literal:
                    self.unjudgeable(f"{cmd} {w.text}")
                elif "=" in w.value:
                    n, _, v = w.value.partition("=")
                    self.environment(n, literal_word(v), w.value)
            return cwd, cwd
        try:
            inner = self.wrapper(base, cmd, args, cwd)
        except Unjudgeable as e:
            self.unjudgeable(str(e))
            return cwd, cwd
        if inner is not None:
            kind, rest = inner
            if kind == "words":
                if not rest:
                    return cwd, cwd
                if not program and (cmd == "command" or (cmd == "time" and self.dialect == "bash")):
                    # The builtin `command` and bash's keyword `time` run the command in this
                    # shell: `command cd /x` and `time cd /x` move it (dash's time is a program).
                    return self.simple(rest, cwd, info, depth + 1)
                if cmd == "exec":
                    return self.simple(rest, cwd, info, depth + 1, program=True)
                self.simple(rest, cwd, info, depth + 1, program=True)
                return cwd, cwd
            if kind == "shell":
                dialect, string = rest
                try:
                    self.program(string, dialect, self.depth + 1, cwd)
                except Unjudgeable as e:
                    self.unjudgeable(str(e))
                return cwd, cwd
            if kind == "done":
                return cwd, cwd
        if base == "tee":
            self.tee(args, cwd, info)
            return cwd, cwd
        if base == "cat" and not args and info.heredoc is not None:
            return cwd, cwd  # copies its here-document: the writes are judged as writes
        self.exec_part(words)
        return cwd, cwd

    def exec_part(self, words: list[Word]):
        name = words[0]
        if not name.literal:
            # A pattern or expansion for the command name decides which program runs: only a
            # rule spelling it exactly can match it (a rule's * does not cover it).
            if not name.enc.startswith(V_OPEN):
                skel = name.enc.replace(G_STAR, INPUT).replace(G_QMARK, INPUT)
                name = Word(V_OPEN + name.text + SKEL + skel + V_CLOSE, name.text, None, name.why)
            words = [name] + list(words[1:])
            why = f"the command name {name.text!r} would be expanded by the shell"
        else:
            why = next((w.why for w in words if not w.literal and V_OPEN in w.enc), None)
        if why is None:
            # A rule's `*` never covers a `..` segment (hoopy.ssh.rules): only a rule that spells
            # it matches, as for a word the shell expands.
            dd = next((w for w in words if DOTDOT in mark_dotdots(w.enc)), None)
            if dd is not None and INPUT in dd.enc:
                why = (f"`{_clip(dd.text)}`: xargs input spliced into a path could hold '..', which a rule's * "
                       f"never covers")
            elif dd is not None:
                why = f"`{_clip(dd.text)}`: a path with '..' (where it leads depends on links), which a rule's * never covers"
        self.add(Part("exec", _show(words), SEP.join(w.enc for w in words), why))

    def subscripted(self, words) -> bool:
        """A builtin given a name with a subscript (`read 'a[$(cmd)]'`, `test -v 'a[...]'`): bash
        evaluates the subscript, command substitutions and all. Unjudgeable; True if so."""
        cmd, args = words[0].value, words[1:]
        if cmd == "printf":  # only the name after -v
            args = [w for i, w in enumerate(args) if i and args[i - 1].literal and args[i - 1].value == "-v"] + [
                literal_word(w.value[2:]) for w in args if w.literal and w.value.startswith("-v")]
        elif cmd in ("test", "["):
            if not any(w.literal and w.value in _NAME_TESTS for w in args):
                return False
        for w in args:
            if w.literal and _SUBSCRIPTED.match(w.value.lstrip("-")) and "]" in w.value:
                self.unjudgeable(f"{_clip(_show(words))!r}: a variable name with a subscript, "
                                 f"which bash evaluates (commands in it run)")
                return True
        return False

    def cd(self, args: list[Word], cwd):
        args = list(args)
        while args and args[0].literal and args[0].value in ("-P", "-L", "-e", "--"):
            args.pop(0)
        if len(args) != 1 or not args[0].literal:
            return None, cwd
        target = args[0].value
        if not target.startswith("/"):
            return None, cwd  # relative (CDPATH applies), `-`: wherever it goes is not known here
        path = _normal(target)
        return (path if path is not None else None), cwd

    def set_builtin(self, words):
        args = words[1:]
        i = 0
        while i < len(args):
            w = args[i]
            if not w.literal:
                self.unjudgeable(f"{_show(words)!r}: set with an expanded argument")
                return
            v = w.value
            if v == "--" or v == "-":
                return  # positional parameters: only what later expands them would read them
            if v in ("-o", "+o"):
                if i + 1 < len(args) and args[i + 1].literal and args[i + 1].value in _SET_OPTIONS:
                    i += 2
                    continue
                self.unjudgeable(f"{_show(words)!r}: a shell option the gateway does not know")
                return
            if re.fullmatch(r"[-+][euxv]+o?", v):
                if v.endswith("o"):
                    if i + 1 < len(args) and args[i + 1].literal and args[i + 1].value in _SET_OPTIONS:
                        i += 2
                        continue
                    self.unjudgeable(f"{_show(words)!r}: a shell option the gateway does not know")
                    return
                i += 1
                continue
            self.unjudgeable(f"{_show(words)!r}: a shell option the gateway does not know")
            return

    def tee(self, args: list[Word], cwd, info):
        files = []
        opts = True
        for w in args:
            if not w.literal:
                self.unjudgeable(f"tee {w.text}: a file name the shell would expand")
                continue
            v = w.value
            if opts and v == "--":
                opts = False
                continue
            if opts and v.startswith("-") and v != "-":
                if v in ("-a", "--append", "-i", "--ignore-interrupts", "-p") or v.startswith("--output-error"):
                    continue
                self.unjudgeable(f"tee {v}: an option the gateway does not know")
                continue
            files.append(v)
        for f in files:
            self.file("write", f, cwd, info, f"tee {f}")

    # --- wrappers ---------------------------------------------------------------------------

    def wrapper(self, base, cmd, args: list[Word], cwd):
        """(kind, what) for a wrapper: ("words", the command it runs) or ("shell", (dialect,
        string)); None when cmd is not a wrapper. Raises Unjudgeable on what it cannot follow."""
        if base in ("sh", "bash", "dash"):
            return self.shell_wrapper(base, args)
        if base == "timeout":
            return "words", _timeout(args)
        if base == "env":
            return self.env_wrapper(args)
        if base == "nice":
            return "words", _nice(args)
        if base == "nohup":
            rest = args[1:] if args and args[0].literal and args[0].value == "--" else args
            if rest and rest[0].literal and rest[0].value.startswith("-"):
                raise Unjudgeable(f"nohup {rest[0].value}: an option the gateway does not know")
            return "words", rest
        if base == "stdbuf":
            return "words", _stdbuf(args)
        if base == "time":
            return "words", _time(args)
        if cmd == "command":
            rest = _options(args, "command", flags={"-p"}, stop_unknown=False)
            if rest is None:
                return None  # command -v / -V: looks a name up; judged as itself
            return "words", rest
        if cmd == "exec":
            return "words", _exec_options(args)
        if base == "xargs":
            return "words", _xargs(args)
        return None

    def shell_wrapper(self, base, args: list[Word]):
        dialect = "bash" if base == "bash" else "sh"
        i = 0
        string = None
        while i < len(args):
            w = args[i]
            if not w.literal:
                raise Unjudgeable(f"{base} {w.text}: an argument the shell would expand")
            v = w.value
            if v in ("--login", "--noprofile", "--norc") and dialect == "bash":
                i += 1
                continue
            if v == "--":
                i += 1
                break
            if v.startswith("-") and len(v) > 1 and not v.startswith("--"):
                flags = v[1:]
                if any(f not in "clexu" for f in flags):
                    raise Unjudgeable(f"{base} {v}: an option the gateway does not know")
                if "c" in flags:
                    string = True
                i += 1
                continue
            if v.startswith("+") and len(v) > 1 and all(f in "exu" for f in v[1:]):
                i += 1
                continue
            break
        if string is None:
            if i < len(args):
                raise Unjudgeable(f"{base} {args[i].text}: a script file (what it runs is in the file)")
            return None  # `sh` reading stdin: judged as itself (a rule must name it)
        if i >= len(args):
            raise Unjudgeable(f"{base} -c without a command string")
        s = args[i]
        if not s.literal:
            raise Unjudgeable(f"{base} -c {s.text}: a command string the shell would expand")
        return "shell", (dialect, s.value)

    def env_wrapper(self, args: list[Word]):
        i = 0
        while i < len(args):
            w = args[i]
            if not w.literal:
                raise Unjudgeable(f"env {w.text}: an argument the shell would expand")
            v = w.value
            if v in ("-i", "--ignore-environment", "-"):
                i += 1
            elif v in ("-u", "--unset"):
                if i + 1 >= len(args) or not args[i + 1].literal:
                    raise Unjudgeable("env -u without a name")
                i += 2
            elif v.startswith("--unset=") or (v.startswith("-u") and len(v) > 2):
                i += 1
            elif v == "--":
                i += 1
                break
            elif v.startswith("-"):
                raise Unjudgeable(f"env {v}: an option the gateway does not know")
            else:
                break
        # env takes every word with `=` as NAME=VALUE, whatever NAME is (`env 'X-Y=1' rm`): all of
        # them pass the environment filter (which refuses such a name), none is the command.
        while i < len(args) and args[i].literal and "=" in args[i].value:
            n, _, val = args[i].value.partition("=")
            self.environment(n, literal_word(val), args[i].value)
            i += 1
        if i < len(args) and not args[i].literal and "=" in args[i].text.split("$", 1)[0]:
            raise Unjudgeable(f"env {args[i].text}: an environment value the shell would expand")
        return "words", args[i:]

    # --- redirections -----------------------------------------------------------------------

    def redirect(self, node, cwd, info: "_Redirects"):
        k = node.type
        if node.start_byte and self.src[node.start_byte - 1:node.start_byte] == b"}":
            # `{NAME}>file`: bash opens a new descriptor and assigns its number to NAME (PATH
            # too), evaluating a subscript in NAME; tree-sitter reads `{NAME}` as an argument.
            j = node.start_byte - 2
            while j >= 0 and self.src[j] not in b"{} \t\n":
                j -= 1
            if j >= 0 and self.src[j] == ord("{"):
                name = self.src[j:node.start_byte].decode("utf-8", "surrogateescape")
                self.unjudgeable(f"{_clip(name)!r} before a redirection: bash assigns the new descriptor's "
                                 f"number to that variable")
                return
        if k == "heredoc_redirect":
            return self.heredoc(node, cwd, info)
        if k == "herestring_redirect":
            self.bash_only("<<<")
            target = [c for c in node.children if c.is_named]
            w = self.word(target[-1]) if target else None
            if w is None or not w.literal:
                self.unjudgeable(f"{_clip(self.t(node))!r}: a here-string the shell would expand")
                return
            self.here_input(w.value + "\n", info)
            return
        if k != "file_redirect":
            raise Unjudgeable(f"the redirection {_clip(self.t(node))!r}")
        op = next((c.type for c in node.children if not c.is_named), None)
        dest = node.child_by_field_name("destination")
        if dest is None:
            named = [c for c in node.children if c.is_named and c.type != "file_descriptor"]
            dest = named[-1] if named else None
        if op in ("&>", "&>>", "|&"):
            self.bash_only(op)
        if dest is None:
            if op in (">&-", "<&-"):
                return
            raise Unjudgeable(f"the redirection {_clip(self.t(node))!r}")
        w = self.word(dest)
        fd_node = next((c for c in node.children if c.type == "file_descriptor"), None)
        fd = int(self.t(fd_node)) if fd_node is not None and self.t(fd_node).isdigit() else None
        if op in (">&", "<&"):
            if w.literal and (_NUMBER.fullmatch(w.value) or w.value == "-" or w.value.rstrip("-").isdigit()):
                if w.value.rstrip("-").isdigit():  # 2>&1, 3<&0: a copy; >&-: closed
                    self.dups.append((fd if fd is not None else (0 if op == "<&" else 1), int(w.value.rstrip("-"))))
                return
            if op == "<&":
                self.unjudgeable(f"the redirection {_clip(self.t(node))!r}")
                return
            self.bash_only(">&FILE")
        if not w.literal:
            self.unjudgeable(f"the file of {_clip(self.t(node))!r} would be expanded by the shell")
            return
        kind = "read" if op in ("<",) else "write"
        if fd is not None:
            fds = (fd,)
        elif op in ("&>", "&>>", ">&"):
            fds = (1, 2)
        else:
            fds = (0,) if kind == "read" else (1,)
        self.file(kind, w.value, cwd, info, self.t(node), fds)

    def file(self, kind, path, cwd, info, text, fds=()):
        named = _FD_NAMES.get(path)
        if named is None and (m := _FD_DEV.fullmatch(path)):
            named = int(m.group(1) or m.group(2))
        if named is not None:
            self.fd_names.append((named, text))
            self.dups.extend((d, named) for d in fds)
            return
        if path in _QUIET_FILES:
            return
        self.file_fds.update(fds)
        if path.startswith(("/dev/tcp/", "/dev/udp/")):
            self.add(Part("refused", f"{_clip(text)!r}: a network connection by redirection"))
            return
        if not path.startswith("/"):
            if cwd is None or cwd is _UNJUDGED or cwd is BOTTOM:
                self.unjudgeable(f"{_clip(text)!r}: a relative path, and the directory is not known "
                                 f"(write `cd /abs/dir && ...` first)")
                return
            path = cwd.rstrip("/") + "/" + path
        norm = _normal(path)
        if norm is None:
            self.unjudgeable(f"{_clip(text)!r}: a path with '..' (where it leads depends on links)")
            return
        if norm.startswith(("/dev/tcp/", "/dev/udp/")):
            self.add(Part("refused", f"{_clip(text)!r}: a network connection by redirection"))
            return
        self.add(Part(kind, norm))
        if kind == "write":
            info.writes.append(norm)

    def heredoc(self, node, cwd, info):
        start = next((c for c in node.children if c.type == "heredoc_start"), None)
        body = next((c for c in node.children if c.type == "heredoc_body"), None)
        dash = any(c.type == "<<-" for c in node.children)
        delim = self.t(start) if start is not None else ""
        quoted = any(q in delim for q in "'\"\\")
        raw = self.t(body) if body is not None else ""
        # What tree-sitter put inside the redirection after its start: more redirections of the
        # same command, or the rest of the line (`cat <<EOF | tee f`, `cat <<EOF > f && echo`).
        after_start, rest_ops = False, False
        for ch in node.children:
            if ch.type == "heredoc_start":
                after_start = True
                continue
            if not after_start or ch.type in ("heredoc_body", "heredoc_end"):
                continue
            if ch.type in ("file_redirect", "herestring_redirect", "heredoc_redirect") and not rest_ops:
                self.redirect(ch, cwd, info)
            elif ch.type in ("|", "&&", "||", "|&", "&", ";"):
                if ch.type == "|&":
                    self.bash_only("|&")
                rest_ops = True
            elif ch.is_named:
                if ch.type == "pipeline" and ch.children and ch.children[0].type in ("|", "|&"):
                    self.sequence([c for c in ch.children[1:]], cwd)
                else:
                    self.statement(ch, cwd)
        if not quoted and body is not None:
            for n in _walk(body):
                if n.type in ("simple_expansion", "expansion", "command_substitution", "arithmetic_expansion"):
                    if n.type == "command_substitution":
                        self.substitution(n)
                    self.unjudgeable(f"a here-document with expansions ({_clip(self.t(n))!r}); "
                                     f"quote its delimiter (<<'EOF') to write it as it is")
                    return
            if "`" in raw or "$(" in raw:
                self.unjudgeable("a here-document with expansions; quote its delimiter (<<'EOF')")
                return
        content = _heredoc_content(raw, dash, quoted)
        self.here_input(content, info)

    def here_input(self, content: str, info):
        data = content.encode("utf-8", "surrogateescape")
        rec = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        self.heredocs.append(rec)
        info.heredoc = rec


@attrs.define
class _Redirects:
    writes: list = attrs.field(factory=list)
    heredoc: dict | None = None


def _show(words) -> str:
    return " ".join(w.text if w.enc != INPUT else "<xargs input>" for w in words)


def _clip(s: str, n: int = 120) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[:n - 3] + "..."


def _merge(a, b):
    if a is BOTTOM:
        return b
    if b is BOTTOM:
        return a
    if a is _UNJUDGED or b is _UNJUDGED:
        return None
    return a if a == b else None


def nesting(root, limit: int, budget: int = MAX_NODES) -> int | None:
    """How deep the syntax under ``root`` nests (named nodes below it on the longest path), or
    None past ``limit``. A chain the judge follows in a loop is one level: `a && b && c` (lists
    nested on the left) and arithmetic operators (walked without recursion). Depth first, it
    stops at the first path too deep; past ``budget`` nodes it stops and answers -1 (the line is
    too big to judge anyway)."""
    best = 0
    stack = [(root, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        n, d = pop()
        budget -= 1
        if budget < 0:
            return -1
        if d > best:
            best = d
            if best > limit:
                return None
        typ = n.type
        first = True
        for c in n.children:
            if not c.is_named:
                continue
            ctyp = c.type
            chain = ctyp == typ and ((typ == "list" and first) or typ == "binary_expression")
            first = False
            push((c, d if chain else d + 1))
    return best


def _walk(node):
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(n.children)


_BLANKS = re.compile(rb"[ \t\n]*")
# Tokens whose text may hold a line break: quoted text, here-documents, the break itself.
_MULTILINE = frozenset({"raw_string", "string_content", "ansi_c_string", "heredoc_body", "heredoc_content",
                        "\n", "heredoc_end"})
# Nodes that are (part of) one shell word: two of them side by side with nothing between are one
# word to the shell, wherever tree-sitter did not make them a concatenation.
_WORDISH = frozenset({"word", "raw_string", "string", "concatenation", "number", "simple_expansion", "expansion",
                      "command_substitution", "ansi_c_string", "translated_string", "arithmetic_expansion",
                      "process_substitution", "command_name", "variable_name"})
_KEYWORDS = frozenset({"{", "}", "!", "if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while",
                       "until", "do", "done", "in", "function", "[[", "]]"})
_DELIMITS = frozenset(bytes([c]) for c in b" \t\n;&|()<>")
# Anonymous tokens whose text is not their name (tree-sitter's own: here-document pieces).
_ANON_FREE = frozenset({"heredoc_start", "heredoc_end", "simple_heredoc_body", "file_descriptor"})
_WHOLE = frozenset({"concatenation", "string", "translated_string", "heredoc_body", "command_name"})


# What a token of each kind cannot hold bare (not after a backslash): the shell would end it, or
# quote, or expand there. tree-sitter-bash once read `$'\\\\'; id #'` as one ANSI-C string, where bash
# ends the string after the escaped backslash and runs id.
_BAD_IN_TOKEN = {
    "word": re.compile(rb"\\(?:.|$)|[\s'\"`;&|<>()]|\$[({\[A-Za-z0-9_@*#?!$'\"-]", re.S),
    "string_content": re.compile(rb'\\(?:.|$)|["`]|\$[({\[A-Za-z0-9_@*#?!$-]', re.S),
    "ansi_c_string": re.compile(rb"\\(?:.|$)|'", re.S),  # $'...': a backslash escapes any character
    "raw_string": re.compile(rb"'"),  # '...': nothing is escaped
}
_PLAIN_TOKEN = re.compile(rb"[A-Za-z0-9_\-+=.,:/@%]*")  # most words: nothing to look at


def _token_misread(kind: str, tok: bytes, bad) -> str | None:
    body = tok[2:-1] if kind == "ansi_c_string" else tok[1:-1] if kind == "raw_string" else tok
    for m in bad.finditer(body):
        got = m.group()
        if got[:1] == b"\\" and kind != "raw_string":
            if len(got) == 1 and kind == "ansi_c_string":
                return "an ANSI-C string whose closing quote is escaped"
            continue  # an escaped character
        return f"{got.decode('utf-8', 'surrogateescape')!r} inside one {kind.replace('_', ' ')}"
    return None


def _misread(root, src: bytes):
    """Where tree-sitter-bash reads the text otherwise than the shell does, or None.

    It does so silently, and each case once hid a command: it drops an escaped blank after `{`
    (`echo {\\ #; id`: `#; id` became a comment, the shell runs id); it takes a line break into a
    word (`echo hi` newline `\\id`: one echo, where the shell runs id); it splits a word after a
    quote (`'r'\\m`: `r` and `m`, where the shell runs rm; `> 'dir'\\/../x` judged as `dir`);
    it reads `{}#; id` as an empty group and a comment. So every byte the shell reads must be
    in a token, as the shell reads it: a line break in a word is a break, two pieces of one word
    are one node, a reserved word or a comment starts between blanks or operators.
    """
    n_src = len(src)
    stack = [(root, root.type, root.start_byte, root.end_byte)]
    pop, push = stack.pop, stack.append
    while stack:
        n, typ, start, end = pop()
        children = n.children
        if not children:
            tok = src[start:end]
            if typ == "word" and _PLAIN_TOKEN.fullmatch(tok):
                continue
            named = n.is_named
            if typ == "comment":
                if start > 0 and src[start - 1:start] not in _DELIMITS:
                    return "'#' inside a word read as a comment"
                continue
            if not named:
                if typ in _KEYWORDS:
                    # A reserved word is one only as a whole word: `{}#; id` is the word `{}#`
                    # to the shell (then `id` runs), an empty group and a comment to tree-sitter.
                    first = start + len(tok) - len(tok.lstrip(b" \t\n"))
                    if (first > 0 and src[first - 1:first] not in _DELIMITS) or \
                            (end < n_src and src[end:end + 1] not in _DELIMITS):
                        return f"{tok.strip().decode('utf-8', 'surrogateescape')!r} as a reserved word inside a word"
                if typ not in _ANON_FREE and tok.strip(b" \t\n") != typ.encode():
                    return f"the token {tok.decode('utf-8', 'surrogateescape')!r} as {typ!r}"
            if typ not in _MULTILINE and b"\n" in tok:
                return "a line break inside a word"
            bad = _BAD_IN_TOKEN.get(typ)
            if bad is not None:
                why = _token_misread(typ, tok, bad)
                if why is not None:
                    return why
            continue
        if typ == "heredoc_body":
            for c in children:
                push((c, c.type, c.start_byte, c.end_byte))
            continue
        whole = typ in _WHOLE
        prev = start
        prev_wordish = False
        for c in children:
            ctyp, cstart, cend = c.type, c.start_byte, c.end_byte
            if cstart > prev and not _BLANKS.fullmatch(src, prev, cstart):
                return f"{src[prev:cstart].decode('utf-8', 'surrogateescape')!r}, which it passes over"
            wordish = ctyp in _WORDISH
            if wordish and prev_wordish and cstart == prev and not whole:
                return f"one word split in two at {src[cstart:cend].decode('utf-8', 'surrogateescape')!r}"
            prev_wordish = wordish
            prev = cend
            push((c, ctyp, cstart, cend))
        if end > prev and not _BLANKS.fullmatch(src, prev, end):
            return f"{src[prev:end].decode('utf-8', 'surrogateescape')!r}, which it passes over"
    return None


def _normal(path: str) -> str | None:
    """An absolute path with `.` and repeated slashes removed; None if it has `..`."""
    segs = [s for s in path.split("/") if s not in ("", ".")]
    if ".." in segs:
        return None
    return "/" + "/".join(segs)


def _join_continuations(text: str, deadline: float | None = None) -> str:
    """Remove backslash-newline pairs where the shell does (outside single quotes, comments and
    quoted here-documents): tree-sitter splits a word there, the shell joins it."""
    if "\\\n" not in text:
        return text
    try:
        tree = parse_tree(text, deadline)
    except TooSlow:
        raise Unjudgeable(f"a command line that takes the parser more than {PARSE_TIME:g} s") from None
    if tree.root_node.descendant_count > MAX_NODES:
        raise Unjudgeable(f"a command line of more than {MAX_NODES} syntax nodes")
    keep = []
    for n in _walk(tree.root_node):
        if n.type in ("raw_string", "comment", "ansi_c_string"):
            keep.append((n.start_byte, n.end_byte))
        elif n.type == "heredoc_redirect":
            start = next((c for c in n.children if c.type == "heredoc_start"), None)
            body = next((c for c in n.children if c.type == "heredoc_body"), None)
            if start is not None and body is not None:
                delim = text.encode("utf-8", "surrogateescape")[start.start_byte:start.end_byte]
                if any(q in delim for q in b"'\"\\"):
                    keep.append((body.start_byte, body.end_byte))
    data = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i:i + 2] == b"\\\n" and not any(a <= i < b for a, b in keep):
            # Count the backslashes before: an even run is escaped backslashes, not a continuation.
            j = i
            while j > 0 and data[j - 1:j] == b"\\":
                j -= 1
            if (i - j) % 2 == 0:
                i += 2
                continue
        out.append(data[i])
        i += 1
    return out.decode("utf-8", "surrogateescape")


def _heredoc_content(raw: str, dash: bool, quoted: bool) -> str:
    lines = raw.split("\n")
    # The text after the last newline is the delimiter line's own indentation (for <<-).
    body = lines[:-1] if len(lines) > 1 else ([] if not raw else lines)
    if dash:
        body = [ln.lstrip("\t") for ln in body]
    text = "".join(ln + "\n" for ln in body)
    if not quoted:
        out, i = [], 0
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text) and text[i + 1] in "$`\\\n":
                if text[i + 1] != "\n":
                    out.append(text[i + 1])
                i += 2
                continue
            out.append(c)
            i += 1
        text = "".join(out)
    return text


# --- wrapper option tables --------------------------------------------------------------------

def _lit(args, i, what):
    if i >= len(args) or not args[i].literal:
        raise Unjudgeable(f"{what}: an argument the gateway cannot read")
    return args[i].value


def _timeout(args):
    i = 0
    while i < len(args):
        v = _lit(args, i, "timeout")
        if v in ("--preserve-status", "--foreground", "-v", "--verbose"):
            i += 1
        elif v in ("-s", "--signal", "-k", "--kill-after"):
            _lit(args, i + 1, f"timeout {v}")
            i += 2
        elif re.fullmatch(r"--(signal|kill-after)=.+|-s[A-Za-z0-9]+|-k[0-9.]+[smhd]?", v):
            i += 1
        elif v == "--":
            i += 1
            break
        elif v.startswith("-"):
            raise Unjudgeable(f"timeout {v}: an option the gateway does not know")
        else:
            break
    if not _DURATION.fullmatch(_lit(args, i, "timeout DURATION")):
        raise Unjudgeable(f"timeout {args[i].text}: not a duration")
    return args[i + 1:]


def _nice(args):
    i = 0
    while i < len(args):
        v = _lit(args, i, "nice")
        if v in ("-n", "--adjustment"):
            if not _NUMBER.fullmatch(_lit(args, i + 1, "nice -n")):
                raise Unjudgeable("nice -n: not a number")
            i += 2
        elif re.fullmatch(r"--adjustment=[+-]?[0-9]+|-n[+-]?[0-9]+|-[0-9]+", v):
            i += 1
        elif v == "--":
            i += 1
            break
        elif v.startswith("-"):
            raise Unjudgeable(f"nice {v}: an option the gateway does not know")
        else:
            break
    return args[i:]


def _stdbuf(args):
    i = 0
    while i < len(args):
        v = _lit(args, i, "stdbuf")
        if v in ("-i", "-o", "-e", "--input", "--output", "--error"):
            _lit(args, i + 1, f"stdbuf {v}")
            i += 2
        elif re.fullmatch(r"-[ioe][0-9A-Za-z]+|--(input|output|error)=[0-9A-Za-z]+", v):
            i += 1
        elif v == "--":
            i += 1
            break
        elif v.startswith("-"):
            raise Unjudgeable(f"stdbuf {v}: an option the gateway does not know")
        else:
            break
    return args[i:]


def _time(args):
    i = 0
    while i < len(args) and args[i].literal and args[i].value.startswith("-"):
        v = args[i].value
        if v == "-p":
            i += 1
        elif v == "--":
            i += 1
            break
        else:
            raise Unjudgeable(f"time {v}: an option the gateway does not know (time -o writes a file)")
    return args[i:]


def _options(args, what, flags, stop_unknown):
    i = 0
    while i < len(args) and args[i].literal and args[i].value.startswith("-") and args[i].value != "-":
        v = args[i].value
        if v == "--":
            return args[i + 1:]
        if v in flags:
            i += 1
            continue
        if v in ("-v", "-V", "-pv", "-pV", "-vp", "-Vp"):
            return None
        raise Unjudgeable(f"{what} {v}: an option the gateway does not know")
    return args[i:]


def _exec_options(args):
    i = 0
    while i < len(args) and args[i].literal and args[i].value.startswith("-") and args[i].value != "-":
        v = args[i].value
        if v == "--":
            return args[i + 1:]
        if v in ("-c", "-l", "-cl", "-lc"):
            i += 1
            continue
        raise Unjudgeable(f"exec {v}: an option the gateway does not know (exec -a changes the program's name)")
    return args[i:]


# GNU xargs (getopt "+0a:E:e::i::I:l::L:n:prs:txP:d:"): -e, -i, -l and --eof, --replace,
# --max-lines take their value only attached (-eSTR, --eof=STR): alone, the next word is the command.
_XARGS_FLAG = {"-0", "--null", "-r", "--no-run-if-empty", "-t", "--verbose", "-x", "--exit", "-e", "--eof",
               "--max-lines"}
_XARGS_VALUE = {"-d", "--delimiter", "-n", "--max-args", "-L", "-P", "--max-procs", "-s", "--max-chars", "-E"}


def _xargs(args):
    i = 0
    replace = None
    while i < len(args):
        v = _lit(args, i, "xargs")
        if v in _XARGS_FLAG:
            i += 1
        elif v in _XARGS_VALUE:
            _lit(args, i + 1, f"xargs {v}")
            i += 2
        elif re.fullmatch(r"--(delimiter|max-args|max-lines|max-procs|max-chars|eof)=.*|-[dnLPsEe].+", v):
            i += 1
        elif v == "-I":
            replace = _lit(args, i + 1, "xargs -I")
            i += 2
        elif v.startswith("-I") and len(v) > 2:
            replace = v[2:]
            i += 1
        elif v in ("-i", "--replace"):
            replace = "{}"
            i += 1
        elif v.startswith("--replace="):
            replace = v.split("=", 1)[1]
            i += 1
        elif v == "--":
            i += 1
            break
        elif v.startswith("-"):
            raise Unjudgeable(f"xargs {v}: an option the gateway does not know (-a reads a file, -p and -o "
                              f"use the terminal)")
        else:
            break
    rest = list(args[i:]) or [literal_word("echo")]
    if not rest[0].literal or (replace and replace in rest[0].value):
        raise Unjudgeable("xargs: the command it runs comes from its input")
    if replace:
        out = [rest[0]]
        for w in rest[1:]:
            if w.literal and replace in w.value:
                out.append(Word(w.value.replace(replace, INPUT), w.text, None, None))
            else:
                out.append(w)
        _no_input_strings(out)
        return out
    _no_input_strings(rest)
    return rest + [Word(INPUT, "<xargs input>", None, None)]


def _no_input_strings(words):
    """xargs sh -c 'STRING' with input in the string: what runs is the input."""
    if words and words[0].literal and posixpath.basename(words[0].value) in ("sh", "bash", "dash"):
        if any(INPUT in w.enc for w in words[1:]):
            raise Unjudgeable("xargs: input spliced into a shell command string")
