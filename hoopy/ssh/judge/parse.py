"""The tree-sitter-bash parse of a command line, bounded in time, and how deep its syntax nests."""
from __future__ import annotations

import functools
import posixpath
import time

from hoopy.ssh.judge.bounds import MAX_NODES
from hoopy.ssh.judge.parts import Unjudgeable


@functools.lru_cache(maxsize=64)
def dialect_of(shell: str) -> str | None:
    """The dialect judged for a login shell (a name or a path): bash, sh, or None (not judged)."""
    name = posixpath.basename(shell or "")
    if name == "bash":
        return "bash"
    if name in ("sh", "dash", "ash"):
        return "sh"
    return None


SHELLS = ("bash", "sh")  # the dialects judged; any other upstream shell: every line is unjudgeable

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
