"""The reviewed lists of the shell's builtins and reserved words: which the judge follows, which run
nothing, and which make a part unjudgeable."""
from __future__ import annotations

import re


_BIN_DIRS = ("/bin/", "/usr/bin/", "/usr/local/bin/", "/sbin/", "/usr/sbin/")

# Builtins whose effect is decided only while running, or that change what later names mean.
_UNJUDGEABLE_BUILTINS = {
    "eval": "eval runs a string built while running",
    "source": "source runs a file's commands", ".": ". runs a file's commands",
    "alias": "aliases change what later names run", "unalias": "aliases change what later names run",
    "trap": "trap runs a string later", "enable": "enable loads builtins",
    "hash": "hash changes which program a name runs", "shopt": "shopt changes how the shell parses",
    "declare": "declare can set attributes and functions", "typeset": "typeset can set attributes",
    "local": "local can set attributes", "let": "arithmetic with side effects", "coproc": "coproc",
    "builtin": "builtin", "fc": "fc runs history", "bind": "bind", "complete": "complete",
    "mapfile": "mapfile sets variables", "readarray": "readarray sets variables",
}
# Builtins that run nothing and need no rule (their arguments are still checked).
_NO_OP = frozenset({":", "exit", "return", "wait"})
# Names the judge reads as this shell's own builtins (no rule, or an effect on the shell): run by a
# program they are programs found in PATH.
_BUILTIN_ONLY = _NO_OP | {"cd", "pushd", "popd", "set", "test", "[", "export", "readonly", "unset", "command",
                          "exec"}
_SET_OPTIONS = frozenset({"errexit", "nounset", "pipefail", "xtrace", "noclobber", "verbose"})

_NAME_TESTS = frozenset({"-v", "-R"})  # test, [ and [[ ]] evaluate a subscript of the name

# Builtins that take variable names: bash evaluates a subscript in one (`read 'a[$(cmd)]'`).
_NAME_BUILTINS = frozenset({"read", "printf", "getopts", "wait", "unset", "test", "["})
_SUBSCRIPTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\[")

_RESERVED = frozenset({"{", "}", "!", "if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while",
                       "until", "do", "done", "in", "function", "[[", "]]", "((", "coproc"})
