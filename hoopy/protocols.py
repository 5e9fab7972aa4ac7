"""The protocol registry: one descriptor per protocol hoopy speaks.

The core (config, gateway, policy, audit) knows protocols only through this
table. A descriptor names the modules that hold a protocol's own pieces;
they are imported when first needed, so ``hoopy check`` of an HTTP-only
config never imports asyncssh. A fifth protocol is one new package and one
line here.

Each protocol package provides:
  settings.parse(table) -> settings object    the connection's own keys
  rules.parse(text) -> callable(Unit) -> bool  the rule words of its grants
  service.make_service(gateway, connection)    the listener, an IService
"""
from __future__ import annotations

import importlib
from types import ModuleType

import attrs

from hoopy.policy.rules import Rule, RuleError


@attrs.frozen
class Protocol:
    name: str
    package: str  # "hoopy.postgres": holds settings, rules and service modules
    summary: str  # one line: the rule words, for messages
    masking_keys: tuple[str, ...] = ()  # [[masking]] keys beyond "patterns" that apply here

    def module(self, part: str) -> ModuleType:
        return importlib.import_module(f"{self.package}.{part}")

    def parse_settings(self, table):
        return self.module("settings").parse(table)

    def parse_rule(self, text: str, deny: bool = False) -> Rule:
        if not isinstance(text, str) or not text.strip():
            raise RuleError("empty rule")
        text = text.strip()
        rules = self.module("rules")
        # A protocol may read a deny rule more broadly (postgres: globs cover named-only objects).
        parse = getattr(rules, "parse_deny", None) if deny else None
        return Rule(self.name, text, (parse or rules.parse)(text))

    def make_service(self, gateway, connection):
        return self.module("service").make_service(gateway, connection)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("postgres", "hoopy.postgres", "read | write | lock | ddl | admin | all [TABLE | FUNCTION() ...]",
             ("columns",)),
    Protocol("ssh", "hoopy.ssh", "shell | sftp [read|write PATHGLOB] | exec COMMAND-GLOB | write PATHGLOB | "
                                 "read PATHGLOB | forward HOST:PORT"),
    Protocol("http", "hoopy.http", "METHOD /path/glob", ("fields", "passthrough")),
    Protocol("mcp", "hoopy.mcp", "tool NAME [ARG=GLOB]... | resource URI | prompt NAME | sampling | elicitation | roots",
             ("fields",)),
)}


def get(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise RuleError(f"no protocol {name!r}") from None


def parse_rule(protocol: str, text: str, deny: bool = False) -> Rule:
    """A grant's rule for a connection of this protocol; RuleError says what is wrong.
    ``deny``: the rule is in a deny list."""
    return get(protocol).parse_rule(text, deny)
