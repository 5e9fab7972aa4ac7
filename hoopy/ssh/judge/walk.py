"""The state of one line's judgement, and what every part of the walk uses of it."""
from __future__ import annotations

from typing import TYPE_CHECKING

from hoopy.ssh.judge.bounds import MAX_PARTS
from hoopy.ssh.judge.parse import PARSE_TIME, TooSlow, parse_tree
from hoopy.ssh.judge.parts import Part, Unjudgeable


class Walk:
    if TYPE_CHECKING:
        # What one part of the walk calls of another: each is defined by one of the classes that
        # hoopy.ssh.judge.judge._Judge joins (and `program` by _Judge itself).
        def program(self, text, dialect, depth, cwd): ...
        def sequence(self, children, cwd): ...
        def statement(self, node, cwd, redirs=()): ...
        def arithmetic(self, node, what): ...
        def assignment(self, node, prefix): ...
        def environment(self, name, value, text=None): ...
        def unset(self, name): ...
        def shell_variable(self, name, value, text=None): ...
        def word(self, node, assignment=False): ...
        def substitution(self, node): ...
        def redirected(self, node, cwd, redirs=()): ...
        def command(self, node, cwd, outer_redirects): ...
        def wrapper(self, base, cmd, args, cwd): ...
        def redirect(self, node, cwd, info): ...
        def file(self, kind, path, cwd, info, text, fds=()): ...

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
