"""Redirections and here-documents: the files a line writes and reads, and the descriptors it names."""
from __future__ import annotations

import hashlib
import re

import attrs

from hoopy.ssh.judge.cwd import _UNJUDGED, BOTTOM
from hoopy.ssh.judge.parse import _walk
from hoopy.ssh.judge.parts import _clip, Part, Unjudgeable
from hoopy.ssh.judge.walk import Walk
from hoopy.ssh.judge.words import _NUMBER


_FD_DEV = re.compile(r"/dev/fd/([0-9]+)|/proc/self/fd/([0-9]+)")
_QUIET_FILES = frozenset({"/dev/null", "/dev/tty", "/dev/zero"})
# Names of a descriptor: opening one opens again the file the descriptor has (on Linux), for
# writing too: `echo x <readable >/dev/stdin` would write a file only granted for reading.
_FD_NAMES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


@attrs.define
class _Redirects:
    writes: list = attrs.field(factory=list)
    heredoc: dict | None = None


def _normal(path: str) -> str | None:
    """An absolute path with `.` and repeated slashes removed; None if it has `..`."""
    segs = [s for s in path.split("/") if s not in ("", ".")]
    if ".." in segs:
        return None
    return "/" + "/".join(segs)


def _heredoc_content(raw: str, dash: bool, quoted: bool) -> str:
    lines = raw.split("\n")
    # The text after the last newline is the delimiter line's own indentation (for <<-).
    body = lines[:-1] if len(lines) > 1 else ([] if not raw else lines)
    if dash:
        body = [ln.lstrip("\t") for ln in body]
    text = "".join(ln + "\n" for ln in body)
    if not quoted:
        out, i = [], 0
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text) and text[i + 1] in "$`\\\n":
                if text[i + 1] != "\n":
                    out.append(text[i + 1])
                i += 2
                continue
            out.append(c)
            i += 1
        text = "".join(out)
    return text


class Redirections(Walk):
    def finish(self):
        """After the whole line: a descriptor name that may stand for a file the line opened
        (`3<conf >/dev/fd/3`) cannot be judged as quiet: which file, and how, depends on order."""
        if not self.fd_names:
            return
        files = set(self.file_fds)
        changed = True
        while changed:
            changed = False
            for dst, src in self.dups:
                if src in files and dst not in files:
                    files.add(dst)
                    changed = True
        for fd, text in self.fd_names:
            if fd in files:
                self.unjudgeable(f"{_clip(text)!r}: a descriptor the line points at a file; opening it "
                                 f"opens that file again (write to or read from it by name)")
                return

    def redirect(self, node, cwd, info: "_Redirects"):
        k = node.type
        if node.start_byte and self.src[node.start_byte - 1:node.start_byte] == b"}":
            # `{NAME}>file`: bash opens a new descriptor and assigns its number to NAME (PATH
            # too), evaluating a subscript in NAME; tree-sitter reads `{NAME}` as an argument.
            j = node.start_byte - 2
            while j >= 0 and self.src[j] not in b"{} \t\n":
                j -= 1
            if j >= 0 and self.src[j] == ord("{"):
                name = self.src[j:node.start_byte].decode("utf-8", "surrogateescape")
                self.unjudgeable(f"{_clip(name)!r} before a redirection: bash assigns the new descriptor's "
                                 f"number to that variable")
                return
        if k == "heredoc_redirect":
            return self.heredoc(node, cwd, info)
        if k == "herestring_redirect":
            self.bash_only("<<<")
            target = [c for c in node.children if c.is_named]
            w = self.word(target[-1]) if target else None
            if w is None or not w.literal:
                self.unjudgeable(f"{_clip(self.t(node))!r}: a here-string the shell would expand")
                return
            self.here_input(w.value + "\n", info)
            return
        if k != "file_redirect":
            raise Unjudgeable(f"the redirection {_clip(self.t(node))!r}")
        op = next((c.type for c in node.children if not c.is_named), None)
        dest = node.child_by_field_name("destination")
        if dest is None:
            named = [c for c in node.children if c.is_named and c.type != "file_descriptor"]
            dest = named[-1] if named else None
        if op in ("&>", "&>>", "|&"):
            self.bash_only(op)
        if dest is None:
            if op in (">&-", "<&-"):
                return
            raise Unjudgeable(f"the redirection {_clip(self.t(node))!r}")
        w = self.word(dest)
        fd_node = next((c for c in node.children if c.type == "file_descriptor"), None)
        fd = int(self.t(fd_node)) if fd_node is not None and self.t(fd_node).isdigit() else None
        if op in (">&", "<&"):
            if w.literal and (_NUMBER.fullmatch(w.value) or w.value == "-" or w.value.rstrip("-").isdigit()):
                if w.value.rstrip("-").isdigit():  # 2>&1, 3<&0: a copy; >&-: closed
                    self.dups.append((fd if fd is not None else (0 if op == "<&" else 1), int(w.value.rstrip("-"))))
                return
            if op == "<&":
                self.unjudgeable(f"the redirection {_clip(self.t(node))!r}")
                return
            self.bash_only(">&FILE")
        if not w.literal:
            self.unjudgeable(f"the file of {_clip(self.t(node))!r} would be expanded by the shell")
            return
        kind = "read" if op in ("<",) else "write"
        if fd is not None:
            fds: tuple[int, ...] = (fd,)
        elif op in ("&>", "&>>", ">&"):
            fds = (1, 2)
        else:
            fds = (0,) if kind == "read" else (1,)
        self.file(kind, w.value, cwd, info, self.t(node), fds)

    def file(self, kind, path, cwd, info, text, fds=()):
        named = _FD_NAMES.get(path)
        if named is None and (m := _FD_DEV.fullmatch(path)):
            named = int(m.group(1) or m.group(2))
        if named is not None:
            self.fd_names.append((named, text))
            self.dups.extend((d, named) for d in fds)
            return
        if path in _QUIET_FILES:
            return
        self.file_fds.update(fds)
        if path.startswith(("/dev/tcp/", "/dev/udp/")):
            self.add(Part("refused", f"{_clip(text)!r}: a network connection by redirection"))
            return
        if not path.startswith("/"):
            if cwd is None or cwd is _UNJUDGED or cwd is BOTTOM:
                self.unjudgeable(f"{_clip(text)!r}: a relative path, and the directory is not known "
                                 f"(write `cd /abs/dir && ...` first)")
                return
            path = cwd.rstrip("/") + "/" + path
        norm = _normal(path)
        if norm is None:
            self.unjudgeable(f"{_clip(text)!r}: a path with '..' (where it leads depends on links)")
            return
        if norm.startswith(("/dev/tcp/", "/dev/udp/")):
            self.add(Part("refused", f"{_clip(text)!r}: a network connection by redirection"))
            return
        self.add(Part(kind, norm))
        if kind == "write":
            info.writes.append(norm)

    def heredoc(self, node, cwd, info):
        start = next((c for c in node.children if c.type == "heredoc_start"), None)
        body = next((c for c in node.children if c.type == "heredoc_body"), None)
        dash = any(c.type == "<<-" for c in node.children)
        delim = self.t(start) if start is not None else ""
        quoted = any(q in delim for q in "'\"\\")
        raw = self.t(body) if body is not None else ""
        # What tree-sitter put inside the redirection after its start: more redirections of the
        # same command, or the rest of the line (`cat <<EOF | tee f`, `cat <<EOF > f && echo`).
        after_start, rest_ops = False, False
        for ch in node.children:
            if ch.type == "heredoc_start":
                after_start = True
                continue
            if not after_start or ch.type in ("heredoc_body", "heredoc_end"):
                continue
            if ch.type in ("file_redirect", "herestring_redirect", "heredoc_redirect") and not rest_ops:
                self.redirect(ch, cwd, info)
            elif ch.type in ("|", "&&", "||", "|&", "&", ";"):
                if ch.type == "|&":
                    self.bash_only("|&")
                rest_ops = True
            elif ch.is_named:
                if ch.type == "pipeline" and ch.children and ch.children[0].type in ("|", "|&"):
                    self.sequence([c for c in ch.children[1:]], cwd)
                else:
                    self.statement(ch, cwd)
        if not quoted and body is not None:
            for n in _walk(body):
                if n.type in ("simple_expansion", "expansion", "command_substitution", "arithmetic_expansion"):
                    if n.type == "command_substitution":
                        self.substitution(n)
                    self.unjudgeable(f"a here-document with expansions ({_clip(self.t(n))!r}); "
                                     f"quote its delimiter (<<'EOF') to write it as it is")
                    return
            if "`" in raw or "$(" in raw:
                self.unjudgeable("a here-document with expansions; quote its delimiter (<<'EOF')")
                return
        content = _heredoc_content(raw, dash, quoted)
        self.here_input(content, info)

    def here_input(self, content: str, info):
        data = content.encode("utf-8", "surrogateescape")
        rec = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        self.heredocs.append(rec)
        info.heredoc = rec
