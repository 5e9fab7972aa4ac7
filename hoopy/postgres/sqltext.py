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


# key's answers, remembered two ways (each table at most MEMO_MAX entries of texts of at most
# MEMO_TEXT characters, emptied when full: ~8 MB each at most).
#
# By the text's digit shape: an ASCII text with each of its digits written 0. The three regular
# expressions above see a digit only as one of the class [0-9] (never a particular digit, never a
# backreference), so a text and its digit shape are admitted alike and have their literals in the
# same places. When every digit of the shape stands inside a literal (a string or an integer,
# which the key writes '' and 0), every text of that shape has the shape's key: then one lookup
# answers for them all (``SELECT ... WHERE aid = 17`` and ``... = 18``, which the exact text never
# would). Whether a digit stands elsewhere (in a name, a $n) is found once a shape: its key is
# then not the key of the shape with every digit written 1. Such a shape answers _OWN: the text is
# looked up by its exact characters instead.
MEMO_MAX = 4096
MEMO_TEXT = 1024
_SHAPES: dict = {}  # digit shape (bytes) -> the key of every text of that shape, None, or _OWN
_MEMO: dict = {}  # exact text -> key (texts whose shape is _OWN, and non-ASCII ones)
_MISSING = object()
_OWN = object()
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_ONES = bytes.maketrans(b"0", b"1")


def key(sql: str) -> str | None:
    """The text with every string literal written ``''`` and every integer ``0``, or
    None if the text is not of the plain subset above."""
    if len(sql) > MEMO_TEXT:
        return _key(sql)
    if sql.isascii():
        shape = sql.encode().translate(_ZEROS)
        k = _SHAPES.get(shape, _MISSING)
        if k is _MISSING:
            k = _shape_key(shape)
            if len(_SHAPES) >= MEMO_MAX:
                _SHAPES.clear()  # (a thread may be reading it too: clear is one step under the GIL)
            _SHAPES[shape] = k
        if k is not _OWN:
            return k
    k = _MEMO.get(sql, _MISSING)
    if k is _MISSING:
        k = _key(sql)
        if len(_MEMO) >= MEMO_MAX:
            _MEMO.clear()
        _MEMO[sql] = k
    return k


def _shape_key(shape: bytes):
    """The key every text of this digit shape has, or _OWN if a digit of it stands outside the
    literals (the key keeps it: texts of the shape differ there)."""
    k = _key(shape.decode())
    if k is not None and _key(shape.translate(_ONES).decode()) != k:
        return _OWN
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
