"""Simple commands: builtins, wrappers seen through, and the exec parts the rules judge."""
from __future__ import annotations

import posixpath
import re

from hoopy.ssh.judge.bounds import MAX_DEPTH
from hoopy.ssh.judge.cwd import _UNJUDGED, BOTTOM
from hoopy.ssh.judge.dotdots import mark_dotdots
from hoopy.ssh.judge.encoding import DOTDOT, G_QMARK, G_STAR, INPUT, SEP, SKEL, V_CLOSE, V_OPEN
from hoopy.ssh.judge.parts import _clip, Part, Unjudgeable
from hoopy.ssh.judge.programs import (_BIN_DIRS, _BUILTIN_ONLY, _NAME_BUILTINS, _NAME_TESTS, _NO_OP, _RESERVED,
                                      _SET_OPTIONS, _SUBSCRIPTED, _UNJUDGEABLE_BUILTINS)
from hoopy.ssh.judge.redirections import _normal, _Redirects
from hoopy.ssh.judge.walk import Walk
from hoopy.ssh.judge.words import _show, is_literal, literal_word, Word


class Commands(Walk):
    def redirected(self, node, cwd, redirs=()):
        body = node.child_by_field_name("body")
        own = [c for c in node.children if c.is_named and (body is None or c.start_byte != body.start_byte)]
        if body is None:
            # Only redirections (`> file`): they still open files.
            info = _Redirects()
            for r in own + list(redirs):
                self.redirect(r, cwd, info)
            return cwd, cwd
        return self.statement(body, cwd, tuple(own) + tuple(redirs))

    def command(self, node, cwd, outer_redirects):
        # A reserved word where a command's name goes is syntax to the shell: tree-sitter-bash reads
        # `! { rm x; }`, `! if ...` and `time { ...; }` as commands named `{` and `if`, with the
        # commands inside as their arguments (bash runs them). Likewise a reserved word after bash's
        # keyword `time`.
        raw = [self.t(c) for c in node.children if c.is_named and c.type not in (
            "variable_assignment", "file_redirect", "heredoc_redirect", "herestring_redirect", "comment")]
        if raw and (raw[0] in _RESERVED or (raw[0] == "time" and self.dialect == "bash" and any(
                r in _RESERVED for r in raw[1:2] + [x for x in raw[2:3] if raw[1:2] in (["-p"], ["--"])]))):
            raise Unjudgeable(f"{_clip(self.t(node))!r}: a reserved word read as a command (the parser "
                              f"does not see the compound command the shell runs)")
        info = _Redirects()
        assignments, words = [], []
        for ch in node.children:
            k = ch.type
            if k == "variable_assignment":
                assignments.append(ch)
            elif k in ("file_redirect", "heredoc_redirect", "herestring_redirect"):
                self.redirect(ch, cwd, info)
            elif k == "command_name":
                words.append(self.word(ch.named_children[0] if ch.named_children else ch))
            elif k == "subscript" or not ch.is_named:
                if ch.is_named or ch.type not in ("$",):
                    raise Unjudgeable(f"{_clip(self.t(node))!r}")
                words.append(Word(V_OPEN + "$" + V_CLOSE, "$", None, "a lone $"))
            elif k == "comment":
                continue
            else:
                words.append(self.word(ch))
        for r in outer_redirects:
            self.redirect(r, cwd, info)
        for a in assignments:
            self.assignment(a, prefix=bool(words))
        if not words:
            return cwd, cwd
        result = self.simple(words, cwd, info)
        if info.heredoc is not None:
            info.heredoc["writes"] = info.writes
            info.heredoc["command"] = " ".join(w.text for w in words)
        return result

    def simple(self, words: list[Word], cwd, info: "_Redirects", depth=0, program=False):
        """Judge one simple command: see through wrappers; return the cwd after it.

        ``program``: run by a program (nice, env, timeout, xargs, exec ...), which finds the name
        in PATH: a shell builtin (`cd`, `:`, `test`, `command`) is then a program by that name,
        needing a rule like any other, and it changes nothing in this shell."""
        if depth > MAX_DEPTH:
            raise Unjudgeable(f"wrappers nested deeper than {MAX_DEPTH}")
        name = words[0]
        if not is_literal(name):
            self.exec_part(words)
            return cwd, cwd
        cmd = name.value
        base = cmd
        if "/" in cmd and cmd.startswith(_BIN_DIRS):
            base = posixpath.basename(cmd)
        args = words[1:]
        if program and (cmd in _BUILTIN_ONLY or cmd in _UNJUDGEABLE_BUILTINS):
            self.exec_part(words)
            return cwd, cwd
        if cmd in _UNJUDGEABLE_BUILTINS:
            self.unjudgeable(f"{_clip(_show(words))!r}: {_UNJUDGEABLE_BUILTINS[cmd]}")
            return _UNJUDGED if cmd in ("source", ".", "eval") else cwd, cwd
        if cmd == "cd":
            return self.cd(args, cwd)
        if cmd in ("pushd", "popd"):
            self.exec_part(words)
            return None, cwd
        if cmd in _NAME_BUILTINS and self.subscripted(words):
            return cwd, cwd
        if cmd in _NO_OP:
            if cmd == "wait" and any(is_literal(w) and w.value.startswith("-") and "p" in w.value for w in args):
                # wait -p NAME assigns the job's pid to any variable (PATH included).
                self.unjudgeable(f"{_clip(_show(words))!r}: wait -p assigns a variable")
                return cwd, cwd
            for w in args:
                if not w.literal:
                    self.exec_part(words)
                    break
            if cmd in ("exit", "return"):
                return BOTTOM, BOTTOM
            return cwd, cwd
        if cmd == "set":
            self.set_builtin(words)
            return cwd, cwd
        if cmd in ("test", "[") and all(w.literal for w in args):
            return cwd, cwd  # runs nothing
        if cmd == "export" or cmd == "readonly":
            for w in args:
                if not is_literal(w):
                    self.unjudgeable(f"{cmd} {w.text}")
                elif "=" in w.value:
                    n, _, v = w.value.partition("=")
                    self.environment(n, literal_word(v), w.value)
            return cwd, cwd
        try:
            inner = self.wrapper(base, cmd, args, cwd)
        except Unjudgeable as e:
            self.unjudgeable(str(e))
            return cwd, cwd
        if inner is not None:
            kind, rest = inner
            if kind == "words":
                if not rest:
                    return cwd, cwd
                if not program and (cmd == "command" or (cmd == "time" and self.dialect == "bash")):
                    # The builtin `command` and bash's keyword `time` run the command in this
                    # shell: `command cd /x` and `time cd /x` move it (dash's time is a program).
                    return self.simple(rest, cwd, info, depth + 1)
                if cmd == "exec":
                    return self.simple(rest, cwd, info, depth + 1, program=True)
                self.simple(rest, cwd, info, depth + 1, program=True)
                return cwd, cwd
            if kind == "shell":
                dialect, string = rest
                try:
                    self.program(string, dialect, self.depth + 1, cwd)
                except Unjudgeable as e:
                    self.unjudgeable(str(e))
                return cwd, cwd
            if kind == "done":
                return cwd, cwd
        if base == "tee":
            self.tee(args, cwd, info)
            return cwd, cwd
        if base == "cat" and not args and info.heredoc is not None:
            return cwd, cwd  # copies its here-document: the writes are judged as writes
        self.exec_part(words)
        return cwd, cwd

    def exec_part(self, words: list[Word]):
        name = words[0]
        why: str | None
        if not name.literal:
            # A pattern or expansion for the command name decides which program runs: only a
            # rule spelling it exactly can match it (a rule's * does not cover it).
            if not name.enc.startswith(V_OPEN):
                skel = name.enc.replace(G_STAR, INPUT).replace(G_QMARK, INPUT)
                name = Word(V_OPEN + name.text + SKEL + skel + V_CLOSE, name.text, None, name.why)
            words = [name] + list(words[1:])
            why = f"the command name {name.text!r} would be expanded by the shell"
        else:
            why = next((w.why for w in words if not w.literal and V_OPEN in w.enc), None)
        if why is None:
            # A rule's `*` never covers a `..` segment (hoopy.ssh.rules): only a rule that spells
            # it matches, as for a word the shell expands.
            dd = next((w for w in words if DOTDOT in mark_dotdots(w.enc)), None)
            if dd is not None and INPUT in dd.enc:
                why = (f"`{_clip(dd.text)}`: xargs input spliced into a path could hold '..', which a rule's * "
                       f"never covers")
            elif dd is not None:
                why = f"`{_clip(dd.text)}`: a path with '..' (where it leads depends on links), which a rule's * never covers"
        self.add(Part("exec", _show(words), SEP.join(w.enc for w in words), why))

    def subscripted(self, words) -> bool:
        """A builtin given a name with a subscript (`read 'a[$(cmd)]'`, `test -v 'a[...]'`): bash
        evaluates the subscript, command substitutions and all. Unjudgeable; True if so."""
        cmd, args = words[0].value, words[1:]
        if cmd == "printf":  # only the name after -v
            args = [w for i, w in enumerate(args) if i and args[i - 1].literal and args[i - 1].value == "-v"] + [
                literal_word(w.value[2:]) for w in args if w.literal and w.value.startswith("-v")]
        elif cmd in ("test", "["):
            if not any(w.literal and w.value in _NAME_TESTS for w in args):
                return False
        for w in args:
            if w.literal and _SUBSCRIPTED.match(w.value.lstrip("-")) and "]" in w.value:
                self.unjudgeable(f"{_clip(_show(words))!r}: a variable name with a subscript, "
                                 f"which bash evaluates (commands in it run)")
                return True
        return False

    def cd(self, args: list[Word], cwd):
        args = list(args)
        while args and args[0].literal and args[0].value in ("-P", "-L", "-e", "--"):
            args.pop(0)
        if len(args) != 1 or not is_literal(args[0]):
            return None, cwd
        target = args[0].value
        if not target.startswith("/"):
            return None, cwd  # relative (CDPATH applies), `-`: wherever it goes is not known here
        path = _normal(target)
        return (path if path is not None else None), cwd

    def set_builtin(self, words):
        args = words[1:]
        i = 0
        while i < len(args):
            w = args[i]
            if not w.literal:
                self.unjudgeable(f"{_show(words)!r}: set with an expanded argument")
                return
            v = w.value
            if v == "--" or v == "-":
                return  # positional parameters: only what later expands them would read them
            if v in ("-o", "+o"):
                if i + 1 < len(args) and args[i + 1].literal and args[i + 1].value in _SET_OPTIONS:
                    i += 2
                    continue
                self.unjudgeable(f"{_show(words)!r}: a shell option the gateway does not know")
                return
            if re.fullmatch(r"[-+][euxv]+o?", v):
                if v.endswith("o"):
                    if i + 1 < len(args) and args[i + 1].literal and args[i + 1].value in _SET_OPTIONS:
                        i += 2
                        continue
                    self.unjudgeable(f"{_show(words)!r}: a shell option the gateway does not know")
                    return
                i += 1
                continue
            self.unjudgeable(f"{_show(words)!r}: a shell option the gateway does not know")
            return

    def tee(self, args: list[Word], cwd, info):
        files = []
        opts = True
        for w in args:
            if not is_literal(w):
                self.unjudgeable(f"tee {w.text}: a file name the shell would expand")
                continue
            v = w.value
            if opts and v == "--":
                opts = False
                continue
            if opts and v.startswith("-") and v != "-":
                if v in ("-a", "--append", "-i", "--ignore-interrupts", "-p") or v.startswith("--output-error"):
                    continue
                self.unjudgeable(f"tee {v}: an option the gateway does not know")
                continue
            files.append(v)
        for f in files:
            self.file("write", f, cwd, info, f"tee {f}")
