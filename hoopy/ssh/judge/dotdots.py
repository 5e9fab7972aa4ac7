"""`..` path segments in an encoded command, as allow and approve rules see it: plain, encoded, or a
pattern the shell could expand to `..`."""
from __future__ import annotations

import functools
import re
import unicodedata

from hoopy.ssh.judge.encoding import DOTDOT, G_QMARK, G_STAR, INPUT, SEP, V_OPEN


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
