"""How the words of an exec part are encoded for the rules (hoopy.ssh.rules).

The words are joined by SEP into one string; a word the shell would still expand (``$X``, ``~``,
braces, ``[...]``) is kept as its source text between V_OPEN and V_CLOSE, which only a rule
spelling that word exactly can match; an unquoted ``*`` or ``?`` is G_STAR or G_QMARK, which only a
rule's ``*`` covers (a glob expands to names the rule's ``*`` would have allowed one by one); INPUT
stands for arguments ``xargs`` reads from its input.
"""
from __future__ import annotations


SEP = "\x1e"
G_STAR = "\x11"
G_QMARK = "\x12"
INPUT = "\x1a"
V_OPEN, V_CLOSE = "\x1c", "\x1d"
SKEL = "\x1f"  # inside V_OPEN...V_CLOSE: what follows is the word's skeleton, for deny rules
# A `..` path segment, as allow and approve rules see a command (mark_dotdots): a rule's `*` or `?`
# never covers it; a rule's own literal `..` matches it.
DOTDOT = "\x10"
