"""``key: value`` in text, sans-IO: where text that is no parsed document names a field.

A key named by a field, followed by ``:``, ``=`` or ``=>``, quoted in any way JSON, JavaScript or
HTML quote it (escaped any number of times: JSON in a JavaScript string) or bare; its value is a
string literal, a bracketed structure, or a bare token. Every scan is linear (possessive
repetition: no backtracking point per character).
"""
from __future__ import annotations

import re


# How a key may be quoted in text: JSON/JavaScript quotes (escaped any number of times: JSON in a
# JavaScript string), HTML character references of a quote, or not at all.
_QUOTE = r"""\\*["'`]|&quot;|&\#0*34;|&\#[xX]0*22;|&apos;|&\#0*39;|&\#[xX]0*27;"""
_BARE_VALUE = re.compile(r"""[^,;}\]&<>"'`\r\n]*""")
_VALUE_END_WS = re.compile(r"\s+$")
# possessive: a plain (?:...)* keeps a backtracking point per character (200 MB for a 2 MB string)
_NESTED = re.compile(r'''"(?:[^"\\]++|\\.)*+"?|[\[\]{}]''', re.S)


def key_regex(names) -> re.Pattern | None:
    if not names:
        return None
    alt = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(
        # (?<!\\): a run of backslashes is tried once, from its start (else each of them: quadratic)
        rf"""(?:(?<!\\)(?P<q>{_QUOTE})(?P<k1>{alt})(?P=q)|(?<![\w$-])(?P<k2>{alt})(?![\w$-]))\s*(?::|=>|=)[ \t]*""",
        re.I)


_QUOTE_AT = re.compile(_QUOTE)
_LITERAL = {q: re.compile(q + r"(?:[^" + q + r"\\]++|\\.)*+" + q + "?", re.S) for q in ("\"", "'", "`")}


def value_end(text: str, i: int) -> tuple[int, str | None]:
    """Where the value starting at ``i`` ends, and its quote (None for a bare or nested value).
    An unterminated value runs to the end of the text (masked whole, never cut short)."""
    n = len(text)
    if i >= n:
        return i, None
    m = _QUOTE_AT.match(text, i)
    if m is not None:
        q = m.group()
        if len(q) == 1:  # a string literal with backslash escapes
            lit = _LITERAL[q].match(text, i)
            assert lit is not None  # the pattern's optional closing quote: it matches the opening one alone
            return lit.end(), q
        j = m.end()
        while True:
            k = text.find(q, j)
            if k < 0:
                return n, q
            if q[0] == "\\" and text[k - 1] == "\\":
                j = k + len(q)  # more backslashes: the quote of a string nested deeper
                continue
            return k + len(q), q
    if text[i] in "{[":
        depth = 0
        for m in _NESTED.finditer(text, i):
            t = m.group()
            if t in "{[":
                depth += 1
            elif t in "}]":
                depth -= 1
                if depth == 0:
                    return m.end(), None
        return n, None
    bare = _BARE_VALUE.match(text, i)
    assert bare is not None  # a starred pattern matches, empty at worst
    end = bare.end()
    ws = _VALUE_END_WS.search(text, i, end)
    return (ws.start() if ws else end), None
