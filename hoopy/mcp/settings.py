"""The keys of a ``type = "mcp"`` connection."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import attrs

PLACEHOLDERS = ("{ssh_key_file}", "{token}")
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


@attrs.frozen
class MCPSettings:
    upstream: str | None  # a Streamable HTTP MCP server, or
    command: tuple | None  # a stdio MCP server hoopy starts, one per hoopy session
    env: dict  # the child's whole environment: name -> str or Secret (placeholders resolved per child)
    upstream_headers: dict  # header name -> Secret, added to every upstream request
    acts_as: str | None  # the identity the server uses on hoopy's other connections
    run_as: str | None = None  # the user the child runs as (the gateway must be root)
    max_children: int = 16
    idle_timeout: float = 600.0  # a client instance of the per-request era is gone after this
    upstream_timeout: float = 300.0  # an upstream that says nothing for this long fails the request
    require_caller_grant: bool = False
    allowed_origins: tuple = ()  # browser Origins accepted; any other Origin gets 403
    max_message: int = 4 * 1024 * 1024  # largest JSON-RPC message either way
    record_limit: int = 4096  # bytes of (masked) arguments and results kept in an event
    credential_lifetime: float = 86400.0  # per-child credentials expire even if the child lives on
    head_timeout: float = 20.0  # a request head must be in within this of its first byte (slowloris)

    def cross_check(self, identities) -> list:
        """Problems only the whole file shows: (key, message)."""
        if self.acts_as is not None and self.acts_as not in identities:
            return [("acts_as", f"unknown identity {self.acts_as!r}")]
        return []


def parse(t) -> MCPSettings:
    upstream = t.string("upstream")
    command = t.strings("command", default=()) if t.has("command") else None
    if (upstream is None) == (command is None):
        t.problem("upstream", "give exactly one of upstream (a Streamable HTTP URL) and command (a stdio server)")
    if upstream is not None:
        u = urlsplit(upstream)
        if u.scheme not in ("http", "https") or not u.hostname:
            t.problem("upstream", f"{upstream!r} is not an http:// or https:// URL")
    if command is not None and not command:
        t.problem("command", "names no program")
    env = {}
    for name, value in (t.table("env", default={}) or {}).items():
        key = f"env.{name}"
        if not isinstance(value, str):
            t.problem(key, "must be a string")
            continue
        if value.startswith(("env:", "file:")):
            secret = t.secret_value(key, value)
            if secret is not None:
                env[name] = secret
            continue
        for p in _PLACEHOLDER.findall(value):
            if p not in PLACEHOLDERS:
                t.problem(key, f"unknown placeholder {p} (known: {', '.join(PLACEHOLDERS)})")
        env[name] = value
    if t.has("env") and command is None:
        t.problem("env", "applies to a stdio server (command) only")
    headers = {}
    for name, ref in (t.table("upstream_headers", default={}) or {}).items():
        secret = t.secret_value(f"upstream_headers.{name}", ref)
        if secret is not None:
            headers[name] = secret
    acts_as = t.string("acts_as")
    uses = [v for v in env.values() if isinstance(v, str) and any(p in v for p in PLACEHOLDERS)]
    if uses and acts_as is None:
        t.problem("env", "placeholders give credentials of acts_as: set acts_as")
    run_as = t.string("run_as")
    if run_as is not None and command is None:
        t.problem("run_as", "applies to a stdio server (command) only")
    origins = t.strings("allowed_origins")
    for i, o in enumerate(origins):
        u = urlsplit(o)
        if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/"):
            t.problem(f"allowed_origins[{i}]", f"{o!r} is not an origin (scheme://host[:port])")
    return MCPSettings(
        upstream=upstream,
        command=tuple(command) if command is not None else None,
        env=env,
        upstream_headers=headers,
        acts_as=acts_as,
        run_as=run_as,
        max_children=t.integer("max_children", default=16, minimum=1),
        idle_timeout=t.duration("idle_timeout", default=600.0),
        upstream_timeout=t.duration("upstream_timeout", default=300.0),
        require_caller_grant=t.boolean("require_caller_grant", default=False),
        allowed_origins=tuple(o.rstrip("/").lower() for o in origins),
        max_message=t.size("max_message", default=4 * 1024 * 1024),
        record_limit=t.size("record_limit", default=4096),
        credential_lifetime=t.duration("credential_lifetime", default=86400.0),
        head_timeout=t.duration("head_timeout", default=20.0),
    )
