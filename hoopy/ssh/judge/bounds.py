"""The bounds of one line's judgement: its length, characters, nesting, parts, words and syntax
nodes. A line past one is not judged (refused, or held where the grant says so), and none lets a
crafted line hold the reactor."""
from __future__ import annotations

import re


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

# Characters a line may hold: no C0 control other than tab and newline (they would be NUL for
# execve, carriage returns a terminal hides, or the encoding's own markers: hoopy.ssh.judge.encoding).
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_WIDE_ESCAPE = re.compile(r"[^\x00-\x7f]\\")
