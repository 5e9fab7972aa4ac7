"""Words: what the shell makes of each one (quote removal), or why it cannot be known beforehand
(expansions, patterns, substitutions)."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, TypeGuard

import attrs

from hoopy.ssh.judge.bounds import _BAD_CHARS, MAX_WORDS
from hoopy.ssh.judge.encoding import G_QMARK, G_STAR, INPUT, SKEL, V_CLOSE, V_OPEN
from hoopy.ssh.judge.parse import _walk
from hoopy.ssh.judge.parts import _clip, Unjudgeable
from hoopy.ssh.judge.walk import Walk


_PLAIN = re.compile(r"[A-Za-z0-9_\-+=.,:/@%]+")
_BRACE = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}", re.S)

_NUMBER = re.compile(r"[+-]?[0-9]+")


@attrs.define
class Word:
    enc: str  # what rules match
    text: str  # display
    value: str | None  # the literal value, when the shell leaves the word as it is
    why: str | None = None  # why it is not literal (expanded by the shell)

    @property
    def literal(self) -> bool:
        return self.value is not None


if TYPE_CHECKING:
    class LiteralWord(Word):
        """A Word whose value is known: what ``is_literal`` narrows to (never built)."""
        value: str


def is_literal(w: Word) -> TypeGuard[LiteralWord]:
    """``w.literal``, said so the type checker knows that ``w.value`` is then a str."""
    return w.value is not None


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


def _show(words) -> str:
    return " ".join(w.text if w.enc != INPUT else "<xargs input>" for w in words)


class Words(Walk):
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
