"""The state of one line's judgement, and what every part of the walk uses of it."""
from __future__ import annotations

from typing import TYPE_CHECKING

from hoopy.ssh.judge.bounds import MAX_PARTS
from hoopy.ssh.judge.parse import PARSE_TIME, TooSlow, parse_tree
from hoopy.ssh.judge.parts import Part, Unjudgeable


class Walk:
    def __init__(self):
        self.parts: list[Part] = []
        self.heredocs: list[dict] = []
        self.src = b""
        self.dialect = "bash"
        self.depth = 0
        self.nesting = 0  # syntax levels of the programs around the one being walked (sh -c)
        self.root = None  # the tree being walked, and how deep it nests (None: not yet known)
        self.levels = None
        self.words = 0
        self.deadline = None  # when the parses of this line must be done (monotonic)
        # Descriptors the line points at files (anywhere in it, nested shells included), the
        # copies it makes of them (dst, src), and the descriptor names it opens (fd, text).
        self.file_fds: set[int] = set()
        self.dups: list[tuple[int, int]] = []
        self.fd_names: list[tuple[int, str]] = []

    def parse(self, text: str):
        try:
            return parse_tree(text, self.deadline)
        except TooSlow:
            raise Unjudgeable(f"a command line that takes the parser more than {PARSE_TIME:g} s") from None

    def t(self, node) -> str:
        return self.src[node.start_byte:node.end_byte].decode("utf-8", "surrogateescape")

    def add(self, part: Part):
        if len(self.parts) >= MAX_PARTS:
            raise Unjudgeable(f"more than {MAX_PARTS} commands in one line")
        self.parts.append(part)

    def unjudgeable(self, what: str):
        self.add(Part("unjudgeable", what))

    def bash_only(self, what: str):
        if self.dialect != "bash":
            raise Unjudgeable(f"{what} is bash syntax, and this shell is sh")
