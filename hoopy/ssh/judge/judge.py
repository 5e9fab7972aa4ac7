"""The entry point: a command line, parsed as its shell will, walked into the parts the rules judge."""
from __future__ import annotations

import time

from hoopy.ssh.judge.assignments import Assignments
from hoopy.ssh.judge.bounds import _BAD_CHARS, _WIDE_ESCAPE, MAX_DEPTH, MAX_LINE, MAX_NESTING, MAX_NODES
from hoopy.ssh.judge.commands import Commands
from hoopy.ssh.judge.encoding import SEP
from hoopy.ssh.judge.misread import _misread
from hoopy.ssh.judge.parse import _join_continuations, dialect_of, nesting, PARSE_TIME
from hoopy.ssh.judge.parts import _clip, Analysis, Part, Unjudgeable
from hoopy.ssh.judge.redirections import Redirections
from hoopy.ssh.judge.statements import Statements
from hoopy.ssh.judge.words import Words
from hoopy.ssh.judge.wrappers import Wrappers


class _Judge(Statements, Assignments, Words, Commands, Wrappers, Redirections):
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


def _display_line(line: str) -> str:
    return " ".join(line.split())


def _encode_line(line: str) -> str:
    return SEP.join(line.split())
