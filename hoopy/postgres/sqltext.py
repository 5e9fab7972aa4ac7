"""A key for SQL text with its literals' values left out, for the plainest texts only.

``SELECT abalance FROM pgbench_accounts WHERE aid = 17`` and ``... aid = 18`` share a
parse shape (classify.parse_statement), but finding that out costs the parse itself.
``key`` gives both the same key without parsing, so the second is served from the
first's Parsed. That is sound only if two texts with one key are the same sequence
of PostgreSQL tokens but for the values of their string and integer literals, and the
server's grammar never looks at such a value. So ``key`` admits only a strict subset
of SQL whose tokens a regular expression reads exactly as the server's lexer does
(scan.l), and answers None for anything else (the text is then parsed as always):

- unquoted ASCII identifiers and keywords, kept as written (case and all);
- integers of at most 9 digits (a longer one is a numeric, another node), not touching
  a letter, digit, dot or quote (``0x1F``, ``1_000``, ``1e5``, ``1.5``, ``.5``, ``1'a'``);
- plain ``'...'`` strings: no backslash, no NUL, not right after a letter, digit or
  ``$`` (``E'..'``, ``U&'..'``, ``B'..'``, ``X'..'``, ``N'..'``, ``date '..'``), and not
  followed by another string (the server joins two strings across a newline);
- ``$n`` parameters, kept as written;
- the operators ``= < > <= >= <> != + - * / %`` standing alone (never next to another
  operator character: no ``--`` or ``/*`` comment, no longer operator), and
  ``( ) , ; [ ]``, and ``.`` not before a digit;
- space, tab, CR and LF between them.

Nothing else: no double-quoted identifier, dollar quote, comment, ``::`` or ``:``,
backslash, non-ASCII outside a string, or other operator. A literal's value may
still matter to the judgement (``set_config('search_path', ...)``, a COPY option):
the walk marks such a statement not cacheable and it is never stored under a key.
"""
from __future__ import annotations

import re

__all__ = ["key", "literal_offsets"]

_SPACE = r"[ \t\n\r]"
_OPCHARS = r"~!@#^&|`?+\-*/%<>="
_TOKEN = (
    r"[A-Za-z_][A-Za-z0-9_]*(?![A-Za-z0-9_$'\"])"  # identifier or keyword
    r"|[0-9]{1,9}(?![A-Za-z0-9_$.'\"])"  # int4 literal
    r"|'[^'\\\x00]*(?:''[^'\\\x00]*)*'(?!" + _SPACE + r"*')"  # plain string
    r"|\$[0-9]{1,5}(?![A-Za-z0-9_$'\"])"  # parameter
    r"|(?:<>|<=|>=|!=|[=<>+*/%-])(?![" + _OPCHARS + r"])"  # one short operator, alone
    r"|[(),;\[\]]|\.(?![0-9])"
)
_ADMIT = re.compile(r"(?:" + _SPACE + r"*+(?>" + _TOKEN + r"))*+" + _SPACE + r"*+")  # no backtracking
# In an admitted text every quote opens or closes a plain string, and a digit run not
# after an identifier character (nor a $) is an integer: these two find the literals.
_STRINGS = re.compile(r"'[^']*(?:''[^']*)*'")
_INTEGERS = re.compile(r"[0-9](?<![A-Za-z0-9_$][0-9])[0-9]*")  # (the digit first: a fast scan)


# key's answers by the exact text: a statement sent again (the same text, as a simple Query or a
# Parse) costs a dictionary lookup, not the two regular expressions. Only short texts are kept,
# and the table is emptied when full, so it holds at most about MEMO_MAX * MEMO_TEXT * 2
# characters (texts and keys): ~8 MB. A text's key depends on its characters alone.
MEMO_MAX = 4096
MEMO_TEXT = 1024
_MEMO: dict = {}
_MISSING = object()


def key(sql: str) -> str | None:
    """The text with every string literal written ``''`` and every integer ``0``, or
    None if the text is not of the plain subset above."""
    k = _MEMO.get(sql, _MISSING)
    if k is not _MISSING:
        return k
    # (_key's body, inline: a text seen once pays one frame fewer)
    if _ADMIT.fullmatch(sql) is None:
        k = None
    else:
        k = _INTEGERS.sub("0", _STRINGS.sub("''", sql) if "'" in sql else sql)
    if len(sql) <= MEMO_TEXT:
        if len(_MEMO) >= MEMO_MAX:
            _MEMO.clear()  # (a thread may be reading it too: clear is one step under the GIL)
        _MEMO[sql] = k
    return k


def _key(sql: str) -> str | None:
    """``key``, computed (the memo's reference)."""
    if _ADMIT.fullmatch(sql) is None:
        return None
    if "'" in sql:
        sql = _STRINGS.sub("''", sql)
    return _INTEGERS.sub("0", sql)


def literal_offsets(sql: str) -> list[tuple[int, ...]]:
    """For each literal ``key`` leaves out, where the parser may put the constant it makes, in
    bytes of the UTF-8 text (the parser's ``location``): where the literal starts, and for an
    integer right after a minus also the minus (a unary minus folded into the constant). Only
    for a text ``key`` admits."""
    blank = _STRINGS.sub(lambda m: "'" + " " * (len(m.group()) - 2) + "'", sql)  # same offsets
    places: list[tuple[int, ...]] = [(m.start(),) for m in _STRINGS.finditer(sql)]
    for m in _INTEGERS.finditer(blank):
        i = j = m.start()
        while j > 0 and blank[j - 1] in " \t\n\r":
            j -= 1
        places.append((i, j - 1) if j > 0 and blank[j - 1] == "-" else (i,))
    if sql.isascii():
        return places
    return [tuple(len(sql[:i].encode()) for i in p) for p in places]
