"""The configuration file: TOML (tomllib) into validated attrs objects.

Every problem is collected with the key it belongs to, so ``hoopy check``
can name them all at once; a gateway never starts half-configured.
Secrets are never inline: ``env:NAME`` or ``file:/path`` references only.
"""
from __future__ import annotations

import os
import re
import socket
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

from hoopy.units import parse_duration, parse_size



@attrs.frozen
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(Exception):
    """The configuration has problems; ``problems`` names each one."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@attrs.frozen
class Secret:
    """A secret read from its reference; ``repr`` never shows the value."""

    ref: str
    value: str = attrs.field(repr=False)

    def __str__(self) -> str:
        return self.ref


@attrs.frozen
class GatewaySettings:
    state: str
    recordings: Path
    admin_listen: str | None
    approval_timeout: float
    name: str
    store_busy_timeout: float
    signing_key: Path | None = None  # Ed25519 private key; its public half beside it (.pub)
    audit_anchor: str | None = None  # file:PATH | syslog:PATH | syslog://HOST[:PORT] | http(s)://URL
    state_reader: str | None = None  # a postgresql:// URL the reader commands use instead of state
    heartbeat: float = 60.0  # an idle node signs a heartbeat event this often
    sign_interval: float = 2.0  # events stay unsigned at most about this long
    admin_ca: Path | None = None  # CA the CLI trusts for an ssl: admin_listen
    approval_ttl: float = 900.0  # a retry-mode approval may be used this long after its decision
    console_url: str | None = None  # where people reach the web console (links in notifications)
    admin_tls_cert: Secret | None = None  # PEM; the admin listener (API and console) serves TLS
    admin_tls_key: Secret | None = None
    max_statement: int = 1024 * 1024  # largest SQL text judged per protocol message

    @property
    def signing_public_key(self) -> Path | None:
        """Where readers find the signing key's public half."""
        return self.signing_key.with_name(self.signing_key.name + ".pub") if self.signing_key else None


APPROVAL_MODES = ("hold", "retry")


@attrs.frozen
class Connection:
    name: str
    type: str
    listen: str
    # None for an MCP connection to a stdio server (``command``); in reader mode, the file's
    # value unchecked (evidence records it as written).
    upstream: str | None
    settings: Any  # the protocol's own attrs object (hoopy.<type>.settings)
    approval_timeout: float
    approvals: str = "hold"  # hold: the caller waits; retry: refused at once with the approval id
    approval_ttl: float = 900.0


@attrs.frozen
class Grant:
    identity: str
    connection: str
    allow: tuple  # of hoopy.policy.rules.Rule
    approve: tuple
    deny: tuple
    expires: datetime | None
    index: int  # position in the file, for messages: grants[3]
    # What becomes of a part no rule can judge before it runs (a `$(...)`, an `eval`):
    # "deny" (refused, the default) or "approve" (held for a reviewer).
    unjudgeable: str = "deny"
    approvals: str | None = None  # overrides the connection's, for what this grant's approve rules hold
    approval_ttl: float | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires


@attrs.frozen
class Masking:
    connection: str
    columns: tuple[str, ...]
    fields: tuple[str, ...]
    patterns: tuple  # of hoopy.policy.masking.Detector
    index: int
    passthrough: tuple[str, ...] = ()  # http: "METHOD /glob" routes whose unreadable bodies pass unmasked


@attrs.frozen
class Config:
    path: Path
    gateway: GatewaySettings
    identities: dict  # name -> hoopy.identity.Identity
    connections: dict  # name -> Connection
    grants: tuple[Grant, ...]
    masking: tuple[Masking, ...]
    # "full" (the gateway, `hoopy check`), "reader" (connections' settings left unread: no
    # secret resolved) or "gateway" (only the [gateway] table was read).
    mode: str = "full"
    notify: tuple = ()  # of hoopy.notify.settings.NotifyTarget

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def masking_for(self, connection: str) -> tuple[Masking, ...]:
        return tuple(m for m in self.masking if m.connection == connection)


class Table:
    """Typed access to one TOML table that records problems under its key.

    Protocol settings modules use it so their messages look like the core's.
    """

    def __init__(self, key: str, data: dict, problems: list[Problem], base_dir: Path):
        self.key = key
        self.data = data
        self.problems = problems
        self.base_dir = base_dir
        self._seen: set[str] = set()

    def name(self, sub: str) -> str:
        return f"{self.key}.{sub}" if self.key else sub

    def problem(self, sub: str | None, message: str) -> None:
        self.problems.append(Problem(self.name(sub) if sub else self.key, message))

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default=None):
        self._seen.add(key)
        return self.data.get(key, default)

    def _get(self, key, required, default, types, what):
        self._seen.add(key)
        if key not in self.data:
            if required:
                self.problem(key, "is required")
            return default
        value = self.data[key]
        if not isinstance(value, types) or isinstance(value, bool) and bool not in (
            types if isinstance(types, tuple) else (types,)
        ):
            self.problem(key, f"must be {what}, not {type(value).__name__}")
            return default
        return value

    def string(self, key, *, required=False, default=None, choices=None):
        value = self._get(key, required, default, str, "a string")
        if value is not None and choices and value not in choices:
            self.problem(key, f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def boolean(self, key, *, default=False):
        return self._get(key, False, default, bool, "true or false")

    def integer(self, key, *, default=None, minimum=None):
        value = self._get(key, False, default, int, "a whole number")
        if value is not None and minimum is not None and value < minimum:
            self.problem(key, f"must be at least {minimum}")
            return default
        return value

    def strings(self, key, *, default=()):
        value = self._get(key, False, None, list, "a list of strings")
        if value is None:
            return tuple(default)
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.problem(f"{key}[{i}]", "must be a string")
            else:
                out.append(item)
        return tuple(out)

    def table(self, key, *, default=None):
        return self._get(key, False, default, dict, "a table")

    def duration(self, key, *, default=None):
        self._seen.add(key)
        if key not in self.data:
            return default
        try:
            return parse_duration(self.data[key])
        except ValueError as e:
            self.problem(key, str(e))
            return default

    def size(self, key, *, default=None):
        self._seen.add(key)
        if key not in self.data:
            return default
        try:
            return parse_size(self.data[key])
        except ValueError as e:
            self.problem(key, str(e))
            return default

    def secret(self, key, *, required=False) -> Secret | None:
        ref = self.string(key, required=required)
        if ref is None:
            return None
        return resolve_secret(ref, self.name(key), self.problems, self.base_dir)

    def secret_value(self, sub: str, ref) -> Secret | None:
        if not isinstance(ref, str):
            self.problem(sub, "must be an \"env:NAME\" or \"file:/path\" reference")
            return None
        return resolve_secret(ref, self.name(sub), self.problems, self.base_dir)

    def file_path(self, key, *, required=False) -> Path | None:
        """A ``file:`` reference to a path that need not exist yet (a key to generate)."""
        ref = self.string(key, required=required)
        if ref is None:
            return None
        if not ref.startswith("file:"):
            self.problem(key, "must be a \"file:/path\" reference")
            return None
        return self.resolve_path(ref[5:])

    def resolve_path(self, p: str) -> Path:
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else self.base_dir / path

    def server_endpoint(self, key, *, required=False) -> str | None:
        desc = self.string(key, required=required)
        if desc is not None:
            err = check_server_endpoint(desc)
            if err:
                self.problem(key, err)
                return None
        return desc

    def client_endpoint(self, key, *, required=False) -> str | None:
        desc = self.string(key, required=required)
        if desc is not None:
            err = check_client_endpoint(desc)
            if err:
                self.problem(key, err)
                return None
        return desc

    def finish(self) -> None:
        """Name every key nobody asked for: a typo must not silently do nothing."""
        for key in self.data:
            if key not in self._seen:
                self.problem(key, "unknown key")


def resolve_secret(ref: str, key: str, problems: list[Problem], base_dir: Path) -> Secret | None:
    if ref.startswith("env:"):
        name = ref[4:]
        if not name:
            problems.append(Problem(key, "\"env:\" needs a variable name"))
            return None
        if name not in os.environ:
            problems.append(Problem(key, f"environment variable {name} is not set"))
            return None
        return Secret(ref, os.environ[name])
    if ref.startswith("file:"):
        p = Path(os.path.expanduser(ref[5:]))
        if not p.is_absolute():
            p = base_dir / p
        try:
            return Secret(ref, p.read_text().strip("\r\n"))
        except OSError as e:
            problems.append(Problem(key, f"cannot read secret file {p}: {e.strerror or e}"))
            return None
    problems.append(
        Problem(key, "secrets are never inline: use \"env:NAME\" or \"file:/path\"")
    )
    return None


def check_postgres_state(url: str) -> list[str]:
    """Problems with a ``postgresql://`` state URL (never echoing a password)."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return ["a PostgreSQL state needs psycopg 3: pip install 'psycopg[binary]'"]
    try:
        info = conninfo_to_dict(url)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else "cannot be parsed"
        # libpq may quote the bad part of the URL: never echo a password in it.
        try:
            from urllib.parse import urlsplit

            secret = urlsplit(url).password
        except ValueError:
            secret = None
        if secret:
            msg = msg.replace(secret, "***")
        return [f"not a valid PostgreSQL URL: {msg}"]
    problems = []
    if not (info.get("host") or info.get("hostaddr")):
        problems.append("the PostgreSQL URL names no host or socket directory "
                        "(postgresql://user@host/db, or ?host=/run/postgresql)")
    # conninfo_to_dict types its values as str | int | None; parsed from a URL they are str.
    if any(p and not p.isdigit() for p in str(info.get("port") or "").split(",")):
        problems.append(f"port {info['port']!r} is not a number")
    if "password" in info:
        problems.append("no password in the state URL: use PGPASSWORD, ~/.pgpass or passfile=/path")
    return problems


def check_server_endpoint(desc: str) -> str | None:
    # The endpoint parsers need no reactor until listen(); passing None keeps
    # `hoopy check` and twistd's option parsing from importing one.
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(None, desc)
    except Exception as e:
        return f"bad endpoint string {desc!r}: {e}"
    return None


def check_client_endpoint(desc: str) -> str | None:
    from twisted.internet.endpoints import clientFromString

    try:
        clientFromString(None, desc)
    except Exception as e:
        return f"bad endpoint string {desc!r}: {e}"
    return None


def listener_address(desc: str) -> tuple[int, str] | None:
    """(port, interface) a TCP server endpoint binds, for finding duplicates."""
    from twisted.internet.endpoints import serverFromString

    try:
        ep = serverFromString(None, desc)
    except Exception:  # a plugin's parser raises anything; the listen check names the bad string
        return None
    port = getattr(ep, "_port", None)
    if not isinstance(port, int) or port == 0:
        return None
    return port, getattr(ep, "_interface", "") or ""


def _overlaps(a: tuple[int, str], b: tuple[int, str]) -> bool:
    wildcard = {"", "0.0.0.0", "::"}
    return a[0] == b[0] and (a[1] == b[1] or a[1] in wildcard or b[1] in wildcard)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


def _parse_time(value, key: str, problems: list[Problem]) -> datetime | None:
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            problems.append(Problem(key, f"{value!r} is not an RFC 3339 time"))
            return None
    else:
        problems.append(Problem(key, "must be an RFC 3339 time such as 2026-12-31T00:00:00Z"))
        return None
    if dt.tzinfo is None:
        problems.append(Problem(key, "needs a time zone (such as Z)"))
        return None
    return dt.astimezone(timezone.utc)


MODES = ("full", "reader", "gateway")


def load(path: str | os.PathLike, mode: str = "full") -> Config:
    """Read and validate the file; raise ConfigError naming every problem.

    ``mode="gateway"`` reads only the [gateway] table (what the reader commands
    need: the state, recordings, admin address, the signing key's public half);
    ``mode="reader"`` also reads identities, grants and masking, and of each
    connection only its type, listen and upstream: no secret is resolved, so
    nobody needs a connection's password to read the record."""
    path = Path(path).absolute()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError([Problem("", f"cannot read {path}: {e.strerror or e}")])
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([Problem("", f"{path}: not valid TOML: {e}")])
    return parse(data, path, mode)


def split_endpoint(desc: str) -> tuple[str, list, dict]:
    """A Twisted endpoint string's kind, positional and keyword arguments (``:`` separates,
    ``\\`` escapes), without importing the endpoint machinery (the reader commands stay light)."""
    parts, cur, i = [], "", 0
    while i < len(desc):
        c = desc[i]
        if c == "\\" and i + 1 < len(desc):
            cur += desc[i + 1]
            i += 2
            continue
        if c == ":":
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    kind, args, kwargs = parts[0].lower(), [], {}
    for p in parts[1:]:
        k, eq, v = p.partition("=")
        if eq:
            kwargs[k] = v
        else:
            args.append(p)
    return kind, args, kwargs


def admin_address(desc: str) -> tuple[str, str, int]:
    """(scheme, host, port) the hoopy command reaches ``admin_listen`` at."""
    kind, args, kw = split_endpoint(desc)
    port = int(kw.get("port") or args[0])
    host = kw.get("interface") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return ("https" if kind == "ssl" else "http"), host, port


def _admin_listen_problem(desc: str) -> str | None:
    """The admin API carries reviewers' tokens: it is reached at an IP literal (a name
    could resolve anywhere), over tcp: or ssl:."""
    import ipaddress

    kind, args, kw = split_endpoint(desc)
    if kind not in ("tcp", "tcp6", "ssl"):
        return f"must be a tcp: or ssl: endpoint (the hoopy command reaches it over HTTP), not {kind}:"
    iface = kw.get("interface", "")
    if iface:
        try:
            ipaddress.ip_address(iface)
        except ValueError:
            return (f"interface={iface} must be an IP address (127.0.0.1, ::1, 10.0.0.5): "
                    "a host name could resolve to another machine, which would receive reviewers' tokens")
    return None


def _anchor_problem(value: str, base: Path) -> str | None:
    from urllib.parse import urlsplit

    if value.startswith("file:"):
        p = Path(os.path.expanduser(value[5:]))
        p = p if p.is_absolute() else base / p
        if not p.parent.is_dir():
            return f"folder {p.parent} does not exist"
        return None
    if value.startswith("syslog:"):
        rest = value[7:]
        if rest.startswith("//"):
            u = urlsplit(value)
            try:
                u.port
            except ValueError:
                return "syslog://HOST[:PORT]: bad port"
            return None if u.hostname else "syslog://HOST[:PORT] needs a host"
        return None if rest.startswith("/") else "syslog:/dev/log (a socket path) or syslog://HOST[:PORT] (UDP)"
    if value.startswith(("http://", "https://")):
        return None if urlsplit(value).hostname else "the URL needs a host"
    return "must be \"file:/path\", \"syslog:/dev/log\", \"syslog://HOST[:PORT]\" or an http(s):// URL"


def _parse_gateway(top: Table, problems: list, base: Path, mode: str = "full") -> GatewaySettings:
    gw = Table("gateway", top.table("gateway", default={}), problems, base)
    state = gw.string("state", default="hoopy.db")
    if state and not state.startswith(("postgresql://", "postgres://")):
        state = str(gw.resolve_path(state))
    elif state:
        for message in check_postgres_state(state):
            problems.append(Problem("gateway.state", message))
    state_reader = gw.string("state_reader")
    if state_reader is not None:
        if not state_reader.startswith(("postgresql://", "postgres://")):
            gw.problem("state_reader", "is a postgresql:// URL (a read-only role for the reader commands)")
            state_reader = None
        elif not (state or "").startswith(("postgresql://", "postgres://")):
            gw.problem("state_reader", "only goes with a postgresql:// state")
            state_reader = None
        else:
            for message in check_postgres_state(state_reader):
                gw.problem("state_reader", message)
    recordings = gw.resolve_path(gw.string("recordings", default="recordings"))
    # Readers of [gateway] alone leave the endpoint's full check to `hoopy check` and the gateway.
    admin_listen = gw.string("admin_listen") if mode == "gateway" else gw.server_endpoint("admin_listen")
    if admin_listen and (err := _admin_listen_problem(admin_listen)):
        gw.problem("admin_listen", err)
        admin_listen = None
    approval_timeout = gw.duration("approval_timeout", default=300.0)
    gw_name = gw.string("name", default=socket.gethostname())
    busy = gw.duration("store_busy_timeout", default=5.0)
    signing_key = gw.file_path("signing_key")
    if signing_key is not None and not signing_key.exists() and not signing_key.parent.is_dir():
        gw.problem("signing_key", f"folder {signing_key.parent} does not exist: a key is created only "
                                  "in an existing folder (is the path mistyped?)")
    anchor = gw.string("audit_anchor")
    if anchor is not None and (err := _anchor_problem(anchor, base)):
        gw.problem("audit_anchor", err)
    if anchor is not None and signing_key is None:
        gw.problem("audit_anchor", "anchors signed heads: it needs signing_key")
    heartbeat = gw.duration("heartbeat", default=60.0)
    if not 0.05 <= heartbeat <= 60:
        gw.problem("heartbeat", "must be between 50ms and 1m (an idle gateway signs at least every minute)")
    sign_interval = gw.duration("sign_interval", default=2.0)
    if not 0.01 <= sign_interval <= 10:
        gw.problem("sign_interval", "must be between 10ms and 10s")
    admin_ca = gw.file_path("admin_ca")
    max_statement = gw.size("max_statement", default=1024 * 1024)
    if max_statement is not None and max_statement < 1024:
        gw.problem("max_statement", "must be at least 1 KiB")
    approval_ttl = gw.duration("approval_ttl", default=900.0)
    console_url = gw.string("console_url")
    if console_url is not None and not re.match(r"^https?://[^\s/]+", console_url):
        gw.problem("console_url", "must be an http:// or https:// URL (where the console is reached)")
        console_url = None
    if mode == "full":
        admin_tls_cert = gw.secret("admin_tls_cert")
        admin_tls_key = gw.secret("admin_tls_key")
    else:
        # Readers never resolve the listener's private key; its certificate (public) is read if it
        # can be, for approve and deny to verify the listener with.
        ref = gw.string("admin_tls_cert")
        gw.string("admin_tls_key")
        admin_tls_cert = (resolve_secret(ref, "gateway.admin_tls_cert", [], base) or Secret(ref, "")) if ref else None
        admin_tls_key = None
    if (gw.has("admin_tls_cert")) != (gw.has("admin_tls_key")):
        gw.problem("admin_tls_key" if gw.has("admin_tls_cert") else "admin_tls_cert",
                   "admin_tls_cert and admin_tls_key go together")
    elif mode == "full" and admin_tls_cert is not None and admin_tls_key is not None:
        err = _check_tls_pair(admin_tls_cert.value, admin_tls_key.value)
        if err:
            gw.problem("admin_tls_cert", err)
    gw.finish()
    return GatewaySettings(
        state=state, recordings=recordings, admin_listen=admin_listen,
        approval_timeout=approval_timeout, name=gw_name, store_busy_timeout=busy,
        signing_key=signing_key, audit_anchor=anchor, state_reader=state_reader,
        heartbeat=heartbeat, sign_interval=sign_interval, admin_ca=admin_ca,
        max_statement=max_statement,
        approval_ttl=approval_ttl, console_url=console_url,
        admin_tls_cert=admin_tls_cert, admin_tls_key=admin_tls_key,
    )


def parse(data: dict, path: Path, mode: str = "full") -> Config:
    problems: list[Problem] = []
    base = path.parent
    top = Table("", data, problems, base)

    # [gateway]
    gateway = _parse_gateway(top, problems, base, mode)
    admin_listen = gateway.admin_listen
    approval_timeout = gateway.approval_timeout
    approval_ttl = gateway.approval_ttl
    if mode == "gateway":
        if problems:
            raise ConfigError(problems)
        return Config(path=path, gateway=gateway, identities={}, connections={}, grants=(), masking=(),
                      mode=mode)

    # Imported here: the reader commands that need only [gateway] never load the protocols.
    from hoopy.identity import parse_identity
    from hoopy.policy.masking import parse_detector
    from hoopy.policy.rules import RuleError
    from hoopy.protocols import PROTOCOLS, parse_rule

    # [identities.NAME]
    identities = {}
    declared = set(top.table("identities", default={}) or {})
    for name, table in (top.table("identities", default={}) or {}).items():
        key = f"identities.{name}"
        if not _NAME.match(name):
            problems.append(Problem(key, "identity names are letters, digits, . _ @ -"))
        if not isinstance(table, dict):
            problems.append(Problem(key, "must be a table"))
            continue
        ident = parse_identity(name, Table(key, table, problems, base))
        if ident is not None:
            identities[name] = ident

    # [connections.NAME]
    connections = {}
    listeners: list[tuple[str, tuple[int, str]]] = []
    if admin_listen and (addr := listener_address(admin_listen)):
        listeners.append(("gateway.admin_listen", addr))
    conn_types: dict[str, str | None] = {}  # every declared connection, even a broken one
    for name, table in (top.table("connections", default={}) or {}).items():
        key = f"connections.{name}"
        if not _NAME.match(name):
            problems.append(Problem(key, "connection names are letters, digits, . _ @ -"))
        if not isinstance(table, dict):
            problems.append(Problem(key, "must be a table"))
            continue
        t = Table(key, table, problems, base)
        ctype = t.string("type", required=True, choices=tuple(PROTOCOLS))
        conn_types[name] = ctype
        listen = t.server_endpoint("listen", required=True)
        if listen and (addr := listener_address(listen)):
            for other, oaddr in listeners:
                if _overlaps(addr, oaddr):
                    t.problem("listen", f"port {addr[0]} is already used by {other}")
            listeners.append((f"{key}.listen", addr))
        timeout = t.duration("approval_timeout", default=approval_timeout)
        approvals_mode = t.string("approvals", default="hold", choices=APPROVAL_MODES)
        ttl = t.duration("approval_ttl", default=approval_ttl)
        if ctype is None:
            continue  # its other keys cannot be judged without a type
        if mode == "reader":
            # Readers see where secrets live, never their values: nothing is resolved.
            settings = {k: v for k, v in t.data.items() if k not in ("type", "listen", "approval_timeout")}
        else:
            settings = PROTOCOLS[ctype].parse_settings(t)
            t.finish()
        if listen:
            connections[name] = Connection(
                name=name, type=ctype, listen=listen, upstream=t.data.get("upstream"),
                settings=settings, approval_timeout=timeout, approvals=approvals_mode, approval_ttl=ttl,
            )

    # Settings that name other parts of the file (an MCP connection's acts_as identity)
    for name, conn in connections.items():
        cross = getattr(conn.settings, "cross_check", None)
        if cross is not None:
            for key, message in cross(declared):
                problems.append(Problem(f"connections.{name}.{key}", message))

    # [[grants]]
    grants = []
    for i, table in enumerate(top._get("grants", False, [], list, "an array of tables") or []):
        key = f"grants[{i}]"
        if not isinstance(table, dict):
            problems.append(Problem(key, "must be a table"))
            continue
        t = Table(key, table, problems, base)
        ident = t.string("identity", required=True)
        conn = t.string("connection", required=True)
        if ident is not None and ident not in declared:
            t.problem("identity", f"unknown identity {ident!r}")
        ctype = None
        if conn is not None:
            if conn not in conn_types:
                t.problem("connection", f"unknown connection {conn!r}")
            ctype = conn_types.get(conn)
        lists = {}
        for word in ("allow", "approve", "deny"):
            rules = []
            for j, text in enumerate(t.strings(word)):
                if ctype is None:
                    continue
                try:
                    rules.append(parse_rule(ctype, text, deny=word == "deny"))
                except RuleError as e:
                    t.problem(f"{word}[{j}]", str(e))
            lists[word] = tuple(rules)
        expires = None
        if t.has("expires"):
            expires = _parse_time(t.raw("expires"), t.name("expires"), problems)
        unjudgeable = t.string("unjudgeable", default="deny", choices=("deny", "approve")) or "deny"
        g_mode = t.string("approvals", choices=APPROVAL_MODES)
        g_ttl = t.duration("approval_ttl")
        t.finish()
        if ident and conn:
            grants.append(Grant(ident, conn, lists["allow"], lists["approve"], lists["deny"], expires, i,
                                unjudgeable, g_mode, g_ttl))

    # [[masking]]
    masking = []
    for i, table in enumerate(top._get("masking", False, [], list, "an array of tables") or []):
        key = f"masking[{i}]"
        if not isinstance(table, dict):
            problems.append(Problem(key, "must be a table"))
            continue
        t = Table(key, table, problems, base)
        conn = t.string("connection", required=True)
        ctype = None
        if conn is not None:
            if conn not in conn_types:
                t.problem("connection", f"unknown connection {conn!r}")
            ctype = conn_types.get(conn)
        columns = t.strings("columns")
        fields = t.strings("fields")
        passthrough = t.strings("passthrough")
        for word, given in (("columns", columns), ("fields", fields), ("passthrough", passthrough)):
            if given and ctype is not None and word not in PROTOCOLS[ctype].masking_keys:
                owners = [p.name for p in PROTOCOLS.values() if word in p.masking_keys]
                t.problem(word, f"{word} apply to {' and '.join(owners)} connections only")
        for j, col in enumerate(columns):
            # The schema too: a column is resolved upstream by its whole name, and a rule that
            # cannot resolve makes its connection refuse every statement.
            if len(col.split(".")) != 3 or not all(p.strip() for p in col.split(".")):
                t.problem(f"columns[{j}]", f"{col!r} is not schema.table.column")
        for j, field in enumerate(fields):
            # A key or a dotted path of keys: an empty part could never match, masking nothing.
            if not all(p.strip() for p in field.split(".")):
                t.problem(f"fields[{j}]", f"{field!r} is not a key or a dotted path of keys (card.number)")
        if ctype == "http":
            for j, route in enumerate(passthrough):
                try:
                    PROTOCOLS["http"].parse_rule(route)
                except RuleError as e:
                    t.problem(f"passthrough[{j}]", str(e))
        detectors = []
        for j, text in enumerate(t.strings("patterns")):
            try:
                detectors.append(parse_detector(text))
            except ValueError as e:
                t.problem(f"patterns[{j}]", str(e))
        t.finish()
        if conn:
            masking.append(Masking(conn, columns, fields, tuple(detectors), i, passthrough))

    # [[notify]]
    from hoopy.notify.settings import parse_target

    notify = []
    top._seen.add("notify")
    # Readers never resolve the webhooks' secrets: [[notify]] is the gateway's alone.
    for i, table in enumerate((top._get("notify", False, [], list, "an array of tables") or [])
                              if mode == "full" else []):
        key = f"notify[{i}]"
        if not isinstance(table, dict):
            problems.append(Problem(key, "must be a table"))
            continue
        t = Table(key, table, problems, base)
        target = parse_target(t, i)
        t.finish()
        if target is not None:
            notify.append(target)

    top.finish()
    if problems:
        raise ConfigError(problems)
    return Config(
        path=path, gateway=gateway, identities=identities, connections=connections,
        grants=tuple(grants), masking=tuple(masking), notify=tuple(notify), mode=mode,
    )


def _check_tls_pair(cert: str, key: str) -> str | None:
    """A PEM certificate and its key, loadable together (checked before anything listens)."""
    try:
        from twisted.internet import ssl

        ssl.PrivateCertificate.loadPEM(cert + "\n" + key)
    except Exception as e:
        return f"the certificate and key cannot be loaded together: {e}"
    return None


def check(path) -> list[Problem]:
    try:
        load(path)
    except ConfigError as e:
        return e.problems
    return []
