"""``hoopy init``: a first, working, commented ``hoopy.toml`` from the upstreams given as flags.

It writes one connection per upstream (``--postgres URL``, ``--ssh USER@HOST[:PORT] --ssh-key
FILE``, ``--http URL``), one agent identity and one reviewer (their tokens printed once, only
their hashes kept), read-only grants for the agent, and prints the client commands to try.
A password in a URL is never written into the file: it becomes an ``env:`` reference and the
``export`` line is printed. The upstream SSH host key is fetched and shown for confirmation
(``--accept-host-key`` to take it unasked; without a terminal and without that flag: refused).
The written file is loaded as ``hoopy check`` would before anything is written.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
import urllib.parse
from pathlib import Path

import attrs

AGENT = "agent"
REVIEWER = "reviewer"
# The usual ports; where one is taken on 127.0.0.1, the system picks a free one instead.
PORTS = {"postgres": 15432, "ssh": 2222, "http": 8080, "admin": 8099}
PG_TLS = {"disable": "disable", "allow": "prefer", "prefer": "prefer", "require": "require",
          "verify-full": "verify-full"}
SSH_READS = ["exec uptime", "exec whoami", "exec hostname", "exec id", "exec df -h", "exec free -m",
             "exec ls *", "exec ps *"]


class InitError(Exception):
    """A refusal, with the exit status it deserves (1 refused, 2 bad input)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _q(value: str) -> str:
    """A TOML basic string (JSON's escaping is valid TOML)."""
    return json.dumps(value, ensure_ascii=False)


def _endpoint_host(host: str) -> str:
    return host.replace("\\", "\\\\").replace(":", "\\:")  # Twisted endpoint strings escape ":"


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(preferred: int, taken: set) -> int:
    if preferred not in taken and port_free(preferred):
        taken.add(preferred)
        return preferred
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


# --- the upstreams, from their flags --------------------------------------------------------------


@attrs.frozen
class Postgres:
    host: str
    port: int
    user: str
    password: str | None
    database: str
    tls: str
    socket_dir: str | None = None

    @property
    def upstream(self) -> str:
        if self.socket_dir:
            path = f"{self.socket_dir.rstrip('/')}/.s.PGSQL.{self.port}"
            return f"unix:path={_endpoint_host(path)}"
        return f"tcp:host={_endpoint_host(self.host)}:port={self.port}"


def parse_postgres(url: str) -> Postgres:
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port or 5432
    except ValueError as e:
        raise InitError(f"--postgres {url!r}: not a URL: {e}")
    if u.scheme not in ("postgresql", "postgres"):
        raise InitError(f"--postgres: {url!r} is not a postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE URL")
    query = dict(urllib.parse.parse_qsl(u.query))
    socket_dir = query.pop("host", None)
    sslmode = query.pop("sslmode", "prefer")
    if query:
        raise InitError(f"--postgres: hoopy init understands only the sslmode and host parameters, "
                        f"not {', '.join(sorted(query))} (edit the written file for more)")
    if sslmode not in PG_TLS:
        raise InitError(f"--postgres: sslmode={sslmode} is not one of {', '.join(PG_TLS)} "
                        "(verify-ca is not offered: use verify-full)")
    if socket_dir is not None and not socket_dir.startswith("/"):
        raise InitError("--postgres: ?host= names a socket folder (/run/postgresql)")
    host = u.hostname or ""
    if not host and socket_dir is None:
        raise InitError(f"--postgres {url!r} names no host (postgresql://USER@HOST:5432/DATABASE)")
    user = urllib.parse.unquote(u.username) if u.username else _os_user()
    password = urllib.parse.unquote(u.password) if u.password is not None else None
    database = urllib.parse.unquote(u.path.lstrip("/")) or user
    return Postgres(host=host, port=port, user=user, password=password, database=database,
                    tls=PG_TLS[sslmode], socket_dir=socket_dir)


def _os_user() -> str:
    import getpass

    return getpass.getuser()  # what libpq uses when a URL names no user


@attrs.frozen
class SSHTarget:
    user: str
    host: str
    port: int
    key: Path

    @property
    def upstream(self) -> str:
        return f"tcp:host={_endpoint_host(self.host)}:port={self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def parse_ssh(target: str, key: str | None) -> SSHTarget:
    user, at, rest = target.rpartition("@")
    if not at or not user or not rest:
        raise InitError(f"--ssh {target!r}: give USER@HOST[:PORT] (the upstream login the gateway uses)")
    host, port = rest, 22
    if rest.startswith("["):  # [::1]:2222
        end = rest.find("]")
        host, tail = rest[1:end], rest[end + 1:]
        if end < 0 or (tail and not tail.startswith(":")):
            raise InitError(f"--ssh {target!r}: [IPv6]:PORT")
        port_text = tail[1:] if tail else ""
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:
        port_text = ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InitError(f"--ssh {target!r}: {port_text!r} is not a port")
        port = int(port_text)
    if not host or any(c.isspace() for c in host + user):
        raise InitError(f"--ssh {target!r}: give USER@HOST[:PORT]")
    if key is None:
        raise InitError("--ssh needs --ssh-key FILE: the private key the gateway logs in upstream with")
    path = Path(key).expanduser().absolute()
    try:
        import asyncssh

        asyncssh.read_private_key(str(path))
    except OSError as e:
        raise InitError(f"--ssh-key {key}: cannot read it: {e.strerror or e}")
    except Exception as e:  # asyncssh.KeyImportError, KeyEncryptionError
        raise InitError(f"--ssh-key {key}: not a private key without passphrase: {e}")
    return SSHTarget(user=user, host=host, port=port, key=path)


def fetch_host_key(target: SSHTarget, timeout: float = 15.0):
    """The key the upstream SSH server shows (asyncssh.SSHKey); raises InitError."""
    import asyncio

    import asyncssh

    async def get():
        return await asyncio.wait_for(asyncssh.get_server_host_key(target.host, target.port), timeout)

    try:
        key = asyncio.run(get())
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as e:
        raise InitError(f"--ssh: cannot reach {target.host}:{target.port} to read its host key: "
                        f"{e or type(e).__name__}", 1)
    if key is None:
        raise InitError(f"--ssh: {target.host}:{target.port} showed no host key", 1)
    return key


def parse_http(url: str) -> str:
    try:
        u = urllib.parse.urlsplit(url)
        u.port
    except ValueError as e:
        raise InitError(f"--http {url!r}: not a URL: {e}")
    if u.scheme not in ("http", "https") or not u.hostname:
        raise InitError(f"--http {url!r} is not an http:// or https:// URL")
    if u.query or u.fragment or u.username or u.password:
        raise InitError(f"--http {url!r}: an upstream URL has no user, query or fragment "
                        "(credentials go in upstream_headers, as env: or file: references)")
    return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path.rstrip("/"), "", ""))


# --- the file ----------------------------------------------------------------------------------


@attrs.define
class Plan:
    """What ``hoopy init`` writes and prints."""

    config: Path
    text: str = ""
    files: dict = attrs.field(factory=dict)  # Path -> (bytes, mode), beside the config
    env: dict = attrs.field(factory=dict)  # variable -> value to export
    tokens: dict = attrs.field(factory=dict)  # identity -> token
    commands: list = attrs.field(factory=list)  # (comment, command line)


def _shown(path: Path) -> str:
    """A path as the user can type it from here."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path)


def _identity_block(name, kind, token, role=None, ssh_key=None, scram=False) -> list[str]:
    from hoopy.identity import ScramVerifier, hash_token

    lines = [f"[identities.{name}]", f'kind = "{kind}"']
    if role:
        lines.append(f'roles = ["{role}"]   # approves or denies held operations (hoopy approve ID, '
                     "or the web console)")
    lines.append(f'token_sha256 = "{hash_token(token).hex()}"')
    if scram:
        lines.append(f'token_scram = "{ScramVerifier.make(token)}"   # PostgreSQL logins (SCRAM)')
    if ssh_key:
        lines.append(f"ssh_keys = [{_q(ssh_key)}]")
    return lines


def plan(config: Path, postgres: Postgres | None, ssh: SSHTarget | None, host_key, http: str | None,
         when: str | None = None) -> Plan:
    """The file and everything beside it; nothing is written here."""
    from hoopy.identity import new_token

    config = config.absolute()
    p = Plan(config=config)
    taken: set = set()
    admin_port = pick_port(PORTS["admin"], taken)
    agent_token, reviewer_token = new_token(), new_token()
    p.tokens = {AGENT: agent_token, REVIEWER: reviewer_token}
    c = _shown(config)
    agent_pub = None
    if ssh is not None:
        import asyncssh

        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{AGENT}@hoopy")
        agent_key = config.with_name(f"{AGENT}_ed25519")
        p.files[agent_key] = (key.export_private_key(), 0o600)
        agent_pub = key.export_public_key().decode().strip()
        p.files[agent_key.with_name(agent_key.name + ".pub")] = ((agent_pub + "\n").encode(), 0o644)

    out = [
        f"# hoopy.toml, written by `hoopy init` {when or time.strftime('%Y-%m-%d %H:%M:%S %Z')}: a first",
        "# configuration. Every key, with its meaning: docs/hoopy.toml and docs/operators.md.",
        f"#   check it:  hoopy check -c {c}",
        f"#   run it:    twistd -n hoopy -c {c}      (in the foreground; without -n it daemonizes)",
        "# Secrets are never written here: \"env:NAME\" reads an environment variable, \"file:PATH\" a file",
        "# (relative paths are relative to this file). Tokens are kept only as hashes.",
        "",
        "[gateway]",
        'state = "hoopy.db"                 # SQLite: events (hash-chained), sessions, approvals',
        'recordings = "recordings"          # terminal recordings of SSH sessions (asciicast v2)',
        f'admin_listen = "tcp:{admin_port}:interface=127.0.0.1"   # admin API and web console: '
        f"http://127.0.0.1:{admin_port}/ui/",
        'approval_timeout = "5m"            # a held operation waits this long for the reviewer',
        'signing_key = "file:gateway.key"   # Ed25519 key signing the audit chain: made at the first start;',
        "                                   # its public half (gateway.key.pub) is what auditors check with",
        "",
        "# --- identities: every caller is named (NIST AC-2). `hoopy token new NAME` makes more. -------",
        *_identity_block(AGENT, "agent", agent_token, ssh_key=agent_pub, scram=postgres is not None),
        "",
        *_identity_block(REVIEWER, "human", reviewer_token, role="reviewer"),
        "",
        "# --- connections: one listener per upstream; the gateway holds the upstream credential -------",
    ]
    grants, masking = [], []
    if postgres is not None:
        port = pick_port(PORTS["postgres"], taken)
        out += ["[connections.postgres]", 'type = "postgres"',
                f'listen = "tcp:{port}:interface=127.0.0.1"   # clients connect here, with a token as password',
                f"upstream = {_q(postgres.upstream)}",
                f"upstream_user = {_q(postgres.user)}"]
        if postgres.password is not None:
            p.env["HOOPY_POSTGRES_PASSWORD"] = postgres.password
            out.append('upstream_password = "env:HOOPY_POSTGRES_PASSWORD"   # from the URL; never inline')
        else:
            out.append('# upstream_password = "env:HOOPY_POSTGRES_PASSWORD"   # if the server asks for one')
        out += [f"upstream_database = {_q(postgres.database)}    # pinned, whatever database a client names",
                f'upstream_tls = "{postgres.tls}"   # disable | prefer | require | verify-full (libpq sslmode words)',
                "# tls_cert = \"file:tls.crt\"   # optional, with tls_key: offer TLS to clients", ""]
        grants += ["[[grants]]", f'identity = "{AGENT}"', 'connection = "postgres"',
                   'allow = ["read"]                   # read-only: SELECT anything; every write and DDL is refused',
                   '# approve = ["write public.invoices"]   # ...or held until the reviewer approves', ""]
        masking = ["# --- masking: values that never reach the caller; each redaction is recorded",
                   "# [[masking]]",
                   '# connection = "postgres"',
                   '# columns = ["public.customers.ssn"]     # by source column',
                   '# patterns = ["email", "credit_card"]    # detectors, on every value', ""]
        p.commands.append((
            "PostgreSQL, as the agent (the token is the password):",
            f"PGPASSWORD={agent_token} psql "
            + shlex.quote(f"host=127.0.0.1 port={port} user={AGENT} dbname={postgres.database}")
            + " -c 'select current_user'"))
    if ssh is not None:
        port = pick_port(PORTS["ssh"], taken)
        kh = config.with_name("ssh.known_hosts")
        line = f"{ssh.known_hosts_name} {host_key.export_public_key().decode().strip()}"
        p.files[kh] = ((line + "\n").encode(), 0o644)
        out += ["[connections.ssh]", 'type = "ssh"',
                f'listen = "tcp:{port}:interface=127.0.0.1"    # clients log in with their key, as their identity',
                f"upstream = {_q(ssh.upstream)}",
                f"upstream_user = {_q(ssh.user)}",
                f"upstream_key = {_q('file:' + str(ssh.key))}   # the gateway's key upstream",
                'upstream_known_hosts = "file:ssh.known_hosts"   # the host key confirmed at init; '
                "another is refused",
                "# upstream_shell = \"bash\"   # the upstream user's login shell, which runs every command: "
                "\"sh\" for dash or ash",
                "# host_key: the gateway's own host key, made beside this file at the first start", ""]
        grants += ["[[grants]]", f'identity = "{AGENT}"', 'connection = "ssh"',
                   "allow = [" + ", ".join(_q(r) for r in SSH_READS) + "]   # commands that only read",
                   '# approve = ["shell", "exec systemctl restart *"]   # ...held until the reviewer approves', ""]
        p.commands.append((
            "SSH, as the agent (its key was written beside the config):",
            f"ssh -p {port} -i {shlex.quote(_shown(config.with_name(AGENT + '_ed25519')))} "
            f"{AGENT}@127.0.0.1 uptime"))
    if http is not None:
        port = pick_port(PORTS["http"], taken)
        out += ["[connections.http]", 'type = "http"',
                f'listen = "tcp:{port}:interface=127.0.0.1"    # clients send Authorization: Bearer TOKEN',
                f"upstream = {_q(http)}",
                '# upstream_headers = { Authorization = "env:API_AUTH" }   # injected; the caller never sees it',
                ""]
        grants += ["[[grants]]", f'identity = "{AGENT}"', 'connection = "http"',
                   'allow = ["GET /**", "HEAD /**"]     # read-only: any other method is refused',
                   '# approve = ["POST /v1/refunds"]   # ...or held until the reviewer approves', ""]
        p.commands.append(("HTTP, as the agent:",
                           f"curl -H {shlex.quote('Authorization: Bearer ' + agent_token)} "
                           f"http://127.0.0.1:{port}/"))
    out += ["# --- grants: least privilege, deny by default (NIST AC-6); docs/hoopy.toml lists the rule words",
            *grants, *masking]
    p.text = "\n".join(out).rstrip("\n") + "\n"
    p.commands.append(("What happened (every event, failed logins included):", f"hoopy events -c {c}"))
    p.commands.append(("As the reviewer: held operations, and deciding one:",
                       f"hoopy approvals -c {c};  HOOPY_TOKEN={reviewer_token} hoopy approve ID -c {c}"))
    p.commands.append(("The auditor's archive, with report.html:",
                       f"hoopy evidence export -c {c} -o evidence.tar.gz"))
    return p


def validate(p: Plan) -> list:
    """Load the planned file as ``hoopy check`` does, in a scratch folder, with the env set."""
    import tempfile

    from hoopy import config as configmod

    with tempfile.TemporaryDirectory(prefix="hoopy-init-") as tmp:
        path = Path(tmp) / p.config.name
        path.write_text(p.text)
        for f, (data, mode) in p.files.items():
            (Path(tmp) / f.name).write_bytes(data)
        saved = {k: os.environ.get(k) for k in p.env}
        os.environ.update(p.env)
        try:
            configmod.load(path)
        except configmod.ConfigError as e:
            return e.problems
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return []


def write(p: Plan, force: bool) -> None:
    targets = [p.config, *p.files]
    existing = [f for f in targets if f.exists()]
    if existing and not force:
        raise InitError(f"{', '.join(_shown(f) for f in existing)} already exist"
                        f"{'s' if len(existing) == 1 else ''}: not overwritten (--force overwrites; "
                        "-o FILE writes elsewhere)", 1)
    p.config.parent.mkdir(parents=True, exist_ok=True)
    for f, (data, mode) in [(p.config, (p.text.encode(), 0o600)), *p.files.items()]:
        tmp = f.with_name(f".{f.name}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        tmp.replace(f)


def confirm_host_key(target: SSHTarget, key, accept: bool, stdin=None, stderr=None) -> None:
    stdin = stdin or sys.stdin
    stderr = stderr or sys.stderr
    fp = key.get_fingerprint("sha256")
    shown = f"{key.get_algorithm()} {fp}"
    print(f"The SSH host {target.host}:{target.port} shows this host key:\n  {shown}", file=stderr)
    if accept:
        print("Accepted (--accept-host-key).", file=stderr)
        return
    if not stdin.isatty():
        raise InitError(
            f"cannot confirm the host key of {target.host}:{target.port} ({shown}) without a terminal: "
            "compare it with the host's own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` there), "
            "then run again with --accept-host-key", 1)
    print("Is this the host's key (compare it with `ssh-keygen -lf` on the host)? [y/N] ", end="",
          file=stderr, flush=True)
    answer = stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise InitError("host key not accepted: nothing written", 1)


def report(p: Plan, out=None) -> None:
    """What init prints: tokens (once), exports, how to start, the commands to try."""
    out = out or sys.stdout
    c = _shown(p.config)
    w = lambda s="": print(s, file=out)  # noqa: E731
    w(f"wrote {c} (and {', '.join(_shown(f) for f in p.files)})" if p.files else f"wrote {c}")
    w()
    w("Tokens, shown this once (the file keeps only their hashes):")
    for name, token in p.tokens.items():
        w(f"  {name:<9} {token}")
    if p.env:
        w()
        w("The upstream password is not in the file; the gateway (and `hoopy check`) read it from:")
        for k, v in p.env.items():
            w(f"  export {k}={shlex.quote(v)}")
    w()
    w("Start the gateway (another terminal; Ctrl-C stops it):")
    w(f"  twistd -n hoopy -c {c}")
    w()
    w("Then try:")
    for comment, cmd in p.commands:
        w(f"  # {comment}")
        w(f"  {cmd}")


def run(args) -> int:
    if not (args.postgres or args.ssh or args.http):
        print("hoopy: init: say what the gateway fronts: --postgres URL, --ssh USER@HOST[:PORT] "
              "--ssh-key FILE, --http URL (one or more)", file=sys.stderr)
        return 2
    try:
        if args.ssh_key and not args.ssh:
            raise InitError("--ssh-key goes with --ssh USER@HOST[:PORT]")
        pg = parse_postgres(args.postgres) if args.postgres else None
        http = parse_http(args.http) if args.http else None
        ssh = parse_ssh(args.ssh, args.ssh_key) if args.ssh else None
        config = Path(args.output).expanduser().absolute()
        if config.exists() and not args.force:  # before asking anything about host keys
            raise InitError(f"{_shown(config)} already exists: not overwritten (--force overwrites; "
                            "-o FILE writes elsewhere)", 1)
        host_key = None
        if ssh is not None:
            host_key = fetch_host_key(ssh)
            confirm_host_key(ssh, host_key, args.accept_host_key)
        p = plan(config, pg, ssh, host_key, http)
        problems = validate(p)
        if problems:  # a bug in init: never leave a file that check refuses
            raise InitError("the file init made does not pass `hoopy check` (a bug, please report it):\n  "
                            + "\n  ".join(str(x) for x in problems), 1)
        write(p, args.force)
    except InitError as e:
        print(f"hoopy: init: {e}", file=sys.stderr)
        return e.code
    report(p)
    return 0


def add_parser(sub) -> None:
    sp = sub.add_parser("init", help="write a first, working hoopy.toml for the upstreams you name",
                        description="Writes a commented hoopy.toml with one connection per upstream, an "
                                    "agent identity and a reviewer (tokens printed once), read-only "
                                    "grants, and prints the client commands to try.")
    sp.add_argument("--postgres", metavar="URL",
                    help="a PostgreSQL upstream: postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
                         "[?sslmode=...] (a password becomes an env: reference, never written)")
    sp.add_argument("--ssh", metavar="USER@HOST[:PORT]", help="an SSH upstream and the login the gateway uses there")
    sp.add_argument("--ssh-key", metavar="FILE", help="the private key the gateway logs in with (with --ssh)")
    sp.add_argument("--accept-host-key", action="store_true",
                    help="trust the SSH host key the upstream shows without asking (compare its "
                         "fingerprint yourself); without a terminal, init refuses unless given")
    sp.add_argument("--http", metavar="URL", help="an HTTP upstream: http(s)://HOST[:PORT][/PATH]")
    sp.add_argument("-o", "--output", default="hoopy.toml", metavar="FILE",
                    help="the file to write (default: hoopy.toml); its folder is made if absent")
    sp.add_argument("--force", action="store_true", help="overwrite FILE (and the files beside it) if present")
    sp.set_defaults(fn=run)
