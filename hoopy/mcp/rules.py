"""The mcp rule words.

  tool NAME-GLOB [ARG=GLOB]...   a tool call; each ARG=GLOB must match that argument
                                 (nested with dots: ``options.path``; a string as written,
                                 any other JSON value as compact JSON)
  resource URI-GLOB              reading (or subscribing to) a resource
  prompt NAME-GLOB               getting a prompt
  sampling | elicitation | roots the server asking the client (refused unless granted)

Globs are shell-style (``*``, ``?``, ``[...]``), matched case-sensitively. Quote an
argument glob that holds spaces: ``tool run_sql query="SELECT *"``.
"""
from __future__ import annotations

import fnmatch
import json
import re
import shlex

import attrs

from hoopy.policy.rules import RuleError, Unit

SERVER_REQUESTS = ("sampling", "elicitation", "roots")
_ARG = re.compile(r"^([A-Za-z0-9_$-][A-Za-z0-9_$.-]*)=(.*)$", re.DOTALL)
_MISSING = object()


@attrs.frozen
class ToolUnit(Unit):
    """A tool call: subject is the tool's name; ``args`` its arguments (a dict)."""

    args: dict = attrs.field(factory=dict, eq=False, repr=False)

    def __str__(self) -> str:
        return f"tool {self.subject}"


_ENCODED_PATH = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)
_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\\]*")


def resolved(value: str) -> str | None:
    """``value`` as a server that resolves a path reads it, where that differs: ``%2e`` ``%2f``
    ``%5c`` decoded, backslashes as slashes, repeated slashes collapsed, ``.`` and ``..`` segments
    resolved (``scheme://authority`` kept). None when nothing changes. A glob over a path
    (``path=/srv/reports/*``) must also hold for this form: ``/srv/reports/../../etc/passwd`` is
    ``/etc/passwd`` to the server."""
    if "." not in value and "%" not in value and "\\" not in value and "//" not in value:
        return None
    v = _ENCODED_PATH.sub(lambda m: "." if m.group(1) in ("2e", "2E") else "/", value).replace("\\", "/")
    head = ""
    m = _AUTHORITY.match(v)
    if m:
        head, v = m.group(), v[m.end():]
    absolute = v.startswith("/")
    out: list = []
    for seg in v.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not absolute:
                out.append("..")
            continue
        out.append(seg)
    r = head + ("/" if absolute else "") + "/".join(out) + ("/" if v.endswith("/") and out else "")
    return r if r != value else None


def resolved_args(args):
    """``args`` with every string as ``resolved`` reads it; None when nothing changes."""
    changed = False

    def walk(node):
        nonlocal changed
        if isinstance(node, str):
            r = resolved(node)
            if r is not None:
                changed = True
                return r
            return node
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = walk(args)
    return out if changed else None


def arg_value(args, path: str):
    """The value of a dotted argument path as a rule compares it, or None if absent."""
    node = args
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, str):
        return node
    return json.dumps(node, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


class Matcher:
    """A parsed rule: callable on a Unit, and readable for list filtering."""

    def __init__(self, kind: str, glob: str | None = None, args: tuple = ()):
        self.kind = kind
        self.glob = glob
        self.args = args  # ((path, glob), ...)
        self._name = re.compile(fnmatch.translate(glob), re.DOTALL).match if glob is not None else None
        self._args = tuple((p, re.compile(fnmatch.translate(g), re.DOTALL).match) for p, g in args)

    @property
    def constrained(self) -> bool:
        return bool(self.args)

    def name_matches(self, name: str) -> bool:
        return self._name is None or (isinstance(name, str) and self._name(name) is not None)

    def __call__(self, unit: Unit) -> bool:
        if unit.kind != self.kind:
            return False
        if self._name is not None and (unit.subject is None or self._name(unit.subject) is None):
            return False
        if self._args:
            args = getattr(unit, "args", None)
            if not isinstance(args, dict):
                return False
            for path, match in self._args:
                value = arg_value(args, path)
                if value is None or match(value) is None:
                    return False
        return True


def parse(text: str) -> Matcher:
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise RuleError(f"{text!r}: {e}")
    if not words:
        raise RuleError("empty rule")
    kind = words[0].lower()
    if kind in SERVER_REQUESTS:
        if len(words) != 1:
            raise RuleError(f"{text!r}: {kind} takes nothing after it")
        return Matcher(kind)
    if kind in ("resource", "prompt"):
        if len(words) != 2:
            raise RuleError(f"{text!r}: mcp rules are `{kind} {'URI' if kind == 'resource' else 'NAME'}-GLOB`")
        return Matcher(kind, words[1])
    if kind != "tool":
        raise RuleError(f"{text!r}: mcp rules start with tool, resource, prompt, sampling, elicitation or roots")
    if len(words) < 2:
        raise RuleError(f"{text!r}: `tool NAME-GLOB [ARG=GLOB]...` needs a tool name (or *)")
    args = []
    for w in words[2:]:
        m = _ARG.match(w)
        if not m:
            raise RuleError(f"{text!r}: {w!r} is not ARG=GLOB")
        args.append((m.group(1), m.group(2)))
    return Matcher("tool", words[1], tuple(args))
