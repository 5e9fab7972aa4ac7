"""Wrappers seen through (``sh -c``, ``timeout``, ``env``, ``nice``, ``nohup``, ``stdbuf``, ``time``,
``command``, ``exec``, ``xargs``) and their option grammars: an option a wrapper's list does not
know makes the part unjudgeable."""
from __future__ import annotations

import posixpath
import re

from hoopy.ssh.judge.encoding import INPUT
from hoopy.ssh.judge.parts import Unjudgeable
from hoopy.ssh.judge.walk import Walk
from hoopy.ssh.judge.words import _NUMBER, is_literal, literal_word, Word


_DURATION = re.compile(r"[0-9]+(\.[0-9]+)?[smhd]?")


def _lit(args, i, what):
    if i >= len(args) or not args[i].literal:
        raise Unjudgeable(f"{what}: an argument the gateway cannot read")
    return args[i].value


def _timeout(args):
    i = 0
    while i < len(args):
        v = _lit(args, i, "timeout")
        if v in ("--preserve-status", "--foreground", "-v", "--verbose"):
            i += 1
        elif v in ("-s", "--signal", "-k", "--kill-after"):
            _lit(args, i + 1, f"timeout {v}")
            i += 2
        elif re.fullmatch(r"--(signal|kill-after)=.+|-s[A-Za-z0-9]+|-k[0-9.]+[smhd]?", v):
            i += 1
        elif v == "--":
            i += 1
            break
        elif v.startswith("-"):
            raise Unjudgeable(f"timeout {v}: an option the gateway does not know")
        else:
            break
    if not _DURATION.fullmatch(_lit(args, i, "timeout DURATION")):
        raise Unjudgeable(f"timeout {args[i].text}: not a duration")
    return args[i + 1:]


def _nice(args):
    i = 0
    while i < len(args):
        v = _lit(args, i, "nice")
        if v in ("-n", "--adjustment"):
            if not _NUMBER.fullmatch(_lit(args, i + 1, "nice -n")):
                raise Unjudgeable("nice -n: not a number")
            i += 2
        elif re.fullmatch(r"--adjustment=[+-]?[0-9]+|-n[+-]?[0-9]+|-[0-9]+", v):
            i += 1
        elif v == "--":
            i += 1
            break
        elif v.startswith("-"):
            raise Unjudgeable(f"nice {v}: an option the gateway does not know")
        else:
            break
    return args[i:]


def _stdbuf(args):
    i = 0
    while i < len(args):
        v = _lit(args, i, "stdbuf")
        if v in ("-i", "-o", "-e", "--input", "--output", "--error"):
            _lit(args, i + 1, f"stdbuf {v}")
            i += 2
        elif re.fullmatch(r"-[ioe][0-9A-Za-z]+|--(input|output|error)=[0-9A-Za-z]+", v):
            i += 1
        elif v == "--":
            i += 1
            break
        elif v.startswith("-"):
            raise Unjudgeable(f"stdbuf {v}: an option the gateway does not know")
        else:
            break
    return args[i:]


def _time(args):
    i = 0
    while i < len(args) and args[i].literal and args[i].value.startswith("-"):
        v = args[i].value
        if v == "-p":
            i += 1
        elif v == "--":
            i += 1
            break
        else:
            raise Unjudgeable(f"time {v}: an option the gateway does not know (time -o writes a file)")
    return args[i:]


def _options(args, what, flags, stop_unknown):
    i = 0
    while i < len(args) and args[i].literal and args[i].value.startswith("-") and args[i].value != "-":
        v = args[i].value
        if v == "--":
            return args[i + 1:]
        if v in flags:
            i += 1
            continue
        if v in ("-v", "-V", "-pv", "-pV", "-vp", "-Vp"):
            return None
        raise Unjudgeable(f"{what} {v}: an option the gateway does not know")
    return args[i:]


def _exec_options(args):
    i = 0
    while i < len(args) and args[i].literal and args[i].value.startswith("-") and args[i].value != "-":
        v = args[i].value
        if v == "--":
            return args[i + 1:]
        if v in ("-c", "-l", "-cl", "-lc"):
            i += 1
            continue
        raise Unjudgeable(f"exec {v}: an option the gateway does not know (exec -a changes the program's name)")
    return args[i:]


# GNU xargs (getopt "+0a:E:e::i::I:l::L:n:prs:txP:d:"): -e, -i, -l and --eof, --replace,
# --max-lines take their value only attached (-eSTR, --eof=STR): alone, the next word is the command.
_XARGS_FLAG = {"-0", "--null", "-r", "--no-run-if-empty", "-t", "--verbose", "-x", "--exit", "-e", "--eof",
               "--max-lines"}
_XARGS_VALUE = {"-d", "--delimiter", "-n", "--max-args", "-L", "-P", "--max-procs", "-s", "--max-chars", "-E"}


def _xargs(args):
    i = 0
    replace = None
    while i < len(args):
        v = _lit(args, i, "xargs")
        if v in _XARGS_FLAG:
            i += 1
        elif v in _XARGS_VALUE:
            _lit(args, i + 1, f"xargs {v}")
            i += 2
        elif re.fullmatch(r"--(delimiter|max-args|max-lines|max-procs|max-chars|eof)=.*|-[dnLPsEe].+", v):
            i += 1
        elif v == "-I":
            replace = _lit(args, i + 1, "xargs -I")
            i += 2
        elif v.startswith("-I") and len(v) > 2:
            replace = v[2:]
            i += 1
        elif v in ("-i", "--replace"):
            replace = "{}"
            i += 1
        elif v.startswith("--replace="):
            replace = v.split("=", 1)[1]
            i += 1
        elif v == "--":
            i += 1
            break
        elif v.startswith("-"):
            raise Unjudgeable(f"xargs {v}: an option the gateway does not know (-a reads a file, -p and -o "
                              f"use the terminal)")
        else:
            break
    rest = list(args[i:]) or [literal_word("echo")]
    if not rest[0].literal or (replace and replace in rest[0].value):
        raise Unjudgeable("xargs: the command it runs comes from its input")
    if replace:
        out = [rest[0]]
        for w in rest[1:]:
            if w.literal and replace in w.value:
                out.append(Word(w.value.replace(replace, INPUT), w.text, None, None))
            else:
                out.append(w)
        _no_input_strings(out)
        return out
    _no_input_strings(rest)
    return rest + [Word(INPUT, "<xargs input>", None, None)]


def _no_input_strings(words):
    """xargs sh -c 'STRING' with input in the string: what runs is the input."""
    if words and words[0].literal and posixpath.basename(words[0].value) in ("sh", "bash", "dash"):
        if any(INPUT in w.enc for w in words[1:]):
            raise Unjudgeable("xargs: input spliced into a shell command string")


class Wrappers(Walk):
    def wrapper(self, base, cmd, args: list[Word], cwd):
        """(kind, what) for a wrapper: ("words", the command it runs) or ("shell", (dialect,
        string)); None when cmd is not a wrapper. Raises Unjudgeable on what it cannot follow."""
        if base in ("sh", "bash", "dash"):
            return self.shell_wrapper(base, args)
        if base == "timeout":
            return "words", _timeout(args)
        if base == "env":
            return self.env_wrapper(args)
        if base == "nice":
            return "words", _nice(args)
        if base == "nohup":
            rest = args[1:] if args and args[0].literal and args[0].value == "--" else args
            if rest and is_literal(rest[0]) and rest[0].value.startswith("-"):
                raise Unjudgeable(f"nohup {rest[0].value}: an option the gateway does not know")
            return "words", rest
        if base == "stdbuf":
            return "words", _stdbuf(args)
        if base == "time":
            return "words", _time(args)
        if cmd == "command":
            rest = _options(args, "command", flags={"-p"}, stop_unknown=False)
            if rest is None:
                return None  # command -v / -V: looks a name up; judged as itself
            return "words", rest
        if cmd == "exec":
            return "words", _exec_options(args)
        if base == "xargs":
            return "words", _xargs(args)
        return None

    def shell_wrapper(self, base, args: list[Word]):
        dialect = "bash" if base == "bash" else "sh"
        i = 0
        string = None
        while i < len(args):
            w = args[i]
            if not is_literal(w):
                raise Unjudgeable(f"{base} {w.text}: an argument the shell would expand")
            v = w.value
            if v in ("--login", "--noprofile", "--norc") and dialect == "bash":
                i += 1
                continue
            if v == "--":
                i += 1
                break
            if v.startswith("-") and len(v) > 1 and not v.startswith("--"):
                flags = v[1:]
                if any(f not in "clexu" for f in flags):
                    raise Unjudgeable(f"{base} {v}: an option the gateway does not know")
                if "c" in flags:
                    string = True
                i += 1
                continue
            if v.startswith("+") and len(v) > 1 and all(f in "exu" for f in v[1:]):
                i += 1
                continue
            break
        if string is None:
            if i < len(args):
                raise Unjudgeable(f"{base} {args[i].text}: a script file (what it runs is in the file)")
            return None  # `sh` reading stdin: judged as itself (a rule must name it)
        if i >= len(args):
            raise Unjudgeable(f"{base} -c without a command string")
        s = args[i]
        if not is_literal(s):
            raise Unjudgeable(f"{base} -c {s.text}: a command string the shell would expand")
        return "shell", (dialect, s.value)

    def env_wrapper(self, args: list[Word]):
        i = 0
        while i < len(args):
            w = args[i]
            if not is_literal(w):
                raise Unjudgeable(f"env {w.text}: an argument the shell would expand")
            v = w.value
            if v in ("-i", "--ignore-environment", "-"):
                i += 1
            elif v in ("-u", "--unset"):
                if i + 1 >= len(args) or not args[i + 1].literal:
                    raise Unjudgeable("env -u without a name")
                i += 2
            elif v.startswith("--unset=") or (v.startswith("-u") and len(v) > 2):
                i += 1
            elif v == "--":
                i += 1
                break
            elif v.startswith("-"):
                raise Unjudgeable(f"env {v}: an option the gateway does not know")
            else:
                break
        # env takes every word with `=` as NAME=VALUE, whatever NAME is (`env 'X-Y=1' rm`): all of
        # them pass the environment filter (which refuses such a name), none is the command.
        while i < len(args) and is_literal(w := args[i]) and "=" in w.value:
            n, _, val = w.value.partition("=")
            self.environment(n, literal_word(val), w.value)
            i += 1
        if i < len(args) and not args[i].literal and "=" in args[i].text.split("$", 1)[0]:
            raise Unjudgeable(f"env {args[i].text}: an environment value the shell would expand")
        return "words", args[i:]
