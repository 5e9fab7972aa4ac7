"""What a line run on a terminal needs besides its parts: the programs that take no commands from the
terminal's keys."""
from __future__ import annotations

import posixpath

from hoopy.policy.rules import Unit
from hoopy.ssh.judge.encoding import SEP, V_OPEN
from hoopy.ssh.judge.parts import _clip
from hoopy.ssh.judge.programs import _BIN_DIRS


# Programs that, run on a terminal (`ssh -t host CMD`), take no commands from its keys and open no
# pager, editor or prompt that runs one: an exec of only these needs no `shell` grant with a
# terminal. Every other program might (`less`, `more`, `man`, `systemctl`, `journalctl` and `git`
# open a pager that runs `!cmd`; `vi` runs `:!sh`; `top`, `mysql`, `python3` read commands): with
# a terminal it needs `shell` as well as its exec rule. A list of what is known, not of what is
# feared: a program missing from it needs `shell` (fails closed). (`rm -i`, `cp -i` ask y/n only.)
NO_TERMINAL_ESCAPE = frozenset({
    ":", "true", "false", "cd", "pwd", "echo", "printf", "test", "[", "exit", "sleep", "kill", "wait", "env",
    "cat", "tac", "head", "tail", "wc", "nl", "ls", "stat", "du", "df", "date", "uptime", "id", "whoami",
    "groups", "hostname", "uname", "nproc", "free", "ps", "printenv", "tty", "file", "basename", "dirname",
    "realpath", "readlink", "sort", "uniq", "cut", "tr", "seq", "rev", "sha256sum", "sha1sum", "sha512sum",
    "md5sum", "cksum", "base64", "od", "grep", "egrep", "fgrep", "diff", "cmp", "comm", "paste", "fold",
    "touch", "mkdir", "rmdir", "rm", "cp", "mv", "ln", "chmod", "chown", "chgrp", "truncate", "mktemp", "tee",
})


def terminal_unit(parts) -> Unit | None:
    """With a terminal, the keys typed reach what the line runs: a pager's `!cmd`, an editor's
    `:!sh`. The `shell` unit such a line needs besides its parts, or None when every part runs a
    program of NO_TERMINAL_ESCAPE (or only opens files)."""
    for p in parts:
        if p.kind in ("write", "read"):
            continue
        name = shown = None
        if p.kind == "exec" and p.key is not None:
            name = shown = p.key.split(SEP, 1)[0]
            if "/" in name:
                # A name in PATH's own folders is that program; elsewhere it is any file.
                name = posixpath.basename(name) if name.startswith(_BIN_DIRS) else None
        if name is None or name not in NO_TERMINAL_ESCAPE:
            what = f"`{_clip(shown, 60)}`" if shown and V_OPEN not in shown else "what it runs"
            return Unit("shell", f"(exec on a terminal: {what} may run commands typed at it)")
    return None
