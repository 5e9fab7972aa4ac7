"""Where tree-sitter-bash reads a command line otherwise than the shell does: such a line is not
judged."""
from __future__ import annotations

import re


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
