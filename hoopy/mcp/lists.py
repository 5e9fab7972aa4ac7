"""What an identity may see in a list: a tool, resource or prompt that some rule of its
(allow or approve) could cover, and that no unconditional deny rule refuses. A tool
allowed only with certain arguments is listed (it may be called with those); a deny
rule with argument globs hides nothing (it refuses only those arguments)."""
from __future__ import annotations

from datetime import datetime, timezone


def grants_of(config, identity: str, connection: str) -> list:
    now = datetime.now(timezone.utc)
    return [g for g in config.grants if g.identity == identity and g.connection == connection
            and not g.expired(now)]


def visible(grants, kind: str, name) -> bool:
    if not isinstance(name, str):
        return False
    shown = False
    for g in grants:
        for r in g.deny:
            m = r._match
            if m.kind == kind and not m.constrained and m.name_matches(name):
                return False
        if not shown:
            for r in g.allow + g.approve:
                m = r._match
                if m.kind == kind and m.name_matches(name):
                    shown = True
                    break
    return shown


def granted(grants, kind: str) -> bool:
    """A server-to-client request kind (sampling, elicitation, roots) any rule of this identity names."""
    return visible(grants, kind, "")
