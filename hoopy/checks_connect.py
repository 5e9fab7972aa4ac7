"""``hoopy check --connect``: reach every upstream as the gateway would, and say what is wrong.

One line per check, naming the connection's key (``connections.pg.upstream: ok: ...``):
reachable, login (with the gateway's own credential), TLS verified, the SSH host key, every
masked column and table resolves, every table and function a grant names exists (a warning:
a grant may be written ahead of a table). Exit 2 on any problem, 0 otherwise (warnings too).

The checks use the gateway's own code for each upstream (hoopy.postgres.upstream,
hoopy.ssh.upstream, the TLS policy of hoopy.http), so what passes here is what the gateway
does. A check never writes upstream: PostgreSQL gets catalog reads, SSH one ``printf``.
"""
from __future__ import annotations

import sys
from typing import Any

import attrs

OK, WARN, ERROR = "ok", "warning", "error"
TIMEOUT = 10.0


@attrs.define
class Line:
    key: str
    level: str
    message: str


def main(cfg, config_path, out=None) -> int:
    """Run every check; print a line each; 2 on any error, else 0."""
    out = out or sys.stdout
    from hoopy.eventloop import install_reactor

    install_reactor()
    from twisted.internet import defer, reactor

    lines: list[Line] = []
    box: dict = {}

    async def everything():
        for conn in cfg.connections.values():
            check = CHECKS.get(conn.type)
            if check is None:
                continue
            try:
                await check(reactor, cfg, conn, lines)
            except Exception as e:  # a check that breaks is a problem, never a pass
                lines.append(Line(f"connections.{conn.name}", ERROR, f"could not be checked: {e!r}"))

    def run():
        d = defer.ensureDeferred(everything())
        d.addErrback(lambda f: box.setdefault("error", f))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    if "error" in box:
        lines.append(Line("", ERROR, f"the checks failed: {box['error'].getErrorMessage()}"))
    for ln in lines:
        print(f"{config_path}: {ln.key}: {ln.level}: {ln.message}", file=out)
    errors = sum(1 for ln in lines if ln.level == ERROR)
    warnings = sum(1 for ln in lines if ln.level == WARN)
    print(f"{config_path}: connect: {len(lines)} checks, {errors} problem(s), {warnings} warning(s)", file=out)
    return 2 if errors else 0


# --- postgres -------------------------------------------------------------------------------------

def _lit(values) -> str:
    return ",".join("'" + v.replace("'", "''") + "'" for v in values) or "NULL"


def _grant_objects(cfg, conn):
    """(key, object name as units show it, is a function) of every allow and approve rule's
    named objects (globs skipped: they name no one object)."""
    from hoopy.postgres.rules import _pattern

    out = []
    for g in cfg.grants:
        if g.connection != conn.name:
            continue
        for word in ("allow", "approve"):
            for j, rule in enumerate(getattr(g, word)):
                for obj in rule.text.split()[1:]:
                    obj = obj.rstrip(",")
                    name, glob = _pattern(obj)
                    if glob:
                        continue
                    func = name.endswith("()")
                    out.append((f"grants[{g.index}].{word}[{j}]", name, func))
    return out


async def check_postgres(reactor, cfg, conn, lines):
    from twisted.internet.endpoints import clientFromString

    from hoopy.postgres import upstream_side as us
    from hoopy.postgres.rows import catalog_query
    from hoopy.postgres.rules import object_name
    from hoopy.postgres.upstream import UpstreamProtocol, _Quiet
    from hoopy.upstream import UpstreamError

    s = conn.settings
    key = f"connections.{conn.name}"
    masks = []  # (key, configured text, normalized)
    for m in cfg.masking_for(conn.name):
        for j, c in enumerate(m.columns):
            masks.append((f"masking[{m.index}].columns[{j}]", c,
                          c.lower() if '"' not in c else c.replace('"', "")))
    objects = _grant_objects(cfg, conn)
    relnames = {n.rsplit(".", 1)[-1].strip('"') for _, n, f in objects if not f}
    relnames |= {n.split(".")[1] for _, _, n in masks if n.count(".") == 2}
    funcs = {n[:-2].rsplit(".", 1)[-1].strip('"') for _, n, f in objects if f}
    sql = (catalog_query([n for _, _, n in masks]) + ";"
           f"SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
           f"ON n.oid = c.relnamespace WHERE c.relname = ANY(ARRAY[{_lit(relnames)}]::text[]);"
           f"SELECT n.nspname, p.proname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n "
           f"ON n.oid = p.pronamespace WHERE p.proname = ANY(ARRAY[{_lit(funcs)}]::text[]);"
           "SELECT current_database(), current_user")
    database = s.upstream_database or s.upstream_user
    params = {"user": s.upstream_user, "database": database, "application_name": "hoopy check --connect"}
    password = s.upstream_password.value if s.upstream_password is not None else None
    side = us.UpstreamSide(s.upstream_user, password, s.upstream_tls, params, sql)
    p = UpstreamProtocol(s, side)
    reached = {}

    def connected(proto):
        reached["tcp"] = True

    def refused(f):
        p.fail(UpstreamError(f"cannot connect: {f.getErrorMessage()}", "08001"))

    try:
        ep = clientFromString(reactor, s.upstream)
    except Exception as e:
        lines.append(Line(f"{key}.upstream", ERROR, f"not a client endpoint: {e}"))
        return
    ep.connect(_Quiet(p)).addCallbacks(connected, refused)
    timer = reactor.callLater(TIMEOUT, lambda: p.fail(UpstreamError(f"no answer within {TIMEOUT:g}s", "08001")))
    try:
        up = await p.ready
    except UpstreamError as e:
        if not reached.get("tcp"):
            lines.append(Line(f"{key}.upstream", ERROR, f"unreachable: {s.upstream}: {e.message}"))
            return
        lines.append(Line(f"{key}.upstream", OK, f"reachable: {s.upstream}"))
        code = e.code or ""
        if code.startswith("28"):
            lines.append(Line(f"{key}.upstream_password" if password is not None else f"{key}.upstream_user",
                              ERROR, f"login refused as {s.upstream_user}: {e.message} ({code})"))
        elif code == "3D000":
            lines.append(Line(f"{key}.upstream_database", ERROR, f"{e.message} ({code})"))
        elif p.tls or "TLS" in e.message or "SSL" in e.message or "certificate" in e.message:
            lines.append(Line(f"{key}.upstream_tls", ERROR,
                              f"TLS ({s.upstream_tls}) failed: {e.message}"))
        else:
            lines.append(Line(f"{key}.upstream_user", ERROR, f"the session did not start: {e.message} ({code})"))
        return
    finally:
        if timer.active():
            timer.cancel()
    try:
        lines.append(Line(f"{key}.upstream", OK, f"reachable: {s.upstream}"))
        results = list(up.info.catalog)
        db, user = (results[-1][0] if results and results[-1] else [database, s.upstream_user])
        lines.append(Line(f"{key}.upstream_user", OK, f"login ok as {user}, database {db}"
                          + ("" if s.upstream_database else
                             " (upstream_database is not set: each client's own database is used)")))
        if s.upstream_tls == "verify-full":
            lines.append(Line(f"{key}.upstream_tls", OK, "TLS, certificate and host name verified"))
        elif s.upstream_tls in ("require", "prefer"):
            lines.append(Line(f"{key}.upstream_tls", WARN if p.tls else (ERROR if s.upstream_tls == "require" else WARN),
                              ("TLS, certificate not verified" if p.tls else "no TLS: the server does not offer it")
                              + f" (upstream_tls = {s.upstream_tls}; verify-full checks the certificate)"))
        cols, _rels, tables, procs = results[0], results[1], results[2], results[3]
        resolved = {f"{r[2]}.{r[3]}.{r[4]}" for r in cols}
        existing = {object_name(r[0], r[1]) for r in tables}
        plain = {f"{r[0]}.{r[1]}" for r in tables}
        for mkey, text, name in masks:
            if name in resolved:
                children = sum(1 for r in cols if f"{r[2]}.{r[3]}" != name.rsplit(".", 1)[0]
                               and r[4] == name.rsplit(".", 1)[1])
                more = f" (and {children} inheriting or partition tables)" if children else ""
                lines.append(Line(mkey, OK, f"{text} resolves (connection {conn.name}, database {db}){more}"))
            elif name.count(".") == 2 and name.rsplit(".", 1)[0] in plain:
                lines.append(Line(mkey, ERROR, f"{text}: table {name.rsplit('.', 1)[0]} has no column "
                                  f"{name.rsplit('.', 1)[1]} in database {db}: connection {conn.name} "
                                  "would refuse every statement"))
            else:
                lines.append(Line(mkey, ERROR, f"{text}: no table {name.rsplit('.', 1)[0]} in database {db}: "
                                  f"connection {conn.name} would refuse every statement"))
        fexisting = {object_name(r[0], r[1]) + "()" for r in procs}
        for gkey, name, func in objects:
            if name in (fexisting if func else existing):
                continue
            what = "function" if func else "table or view"
            lines.append(Line(gkey, WARN, f"{name}: no such {what} (connection {conn.name}, database {db})"))
    finally:
        up.transport.write(b"X\x00\x00\x00\x04")  # Terminate
        up.transport.loseConnection()


# --- ssh ---------------------------------------------------------------------------------------------

async def check_ssh(reactor, cfg, conn, lines):
    import asyncio

    from twisted.internet.defer import Deferred

    from hoopy.ssh.upstream import Upstream, check_upstream_shell
    from hoopy.upstream import UpstreamError

    s = conn.settings
    key = f"connections.{conn.name}"
    up = Upstream(s)

    def aio(coro):
        return Deferred.fromFuture(asyncio.ensure_future(coro))

    try:
        c = await aio(up.connect())
    except UpstreamError as e:
        if not getattr(e, "reached", False):
            lines.append(Line(f"{key}.upstream", ERROR, str(e)))
            return
        lines.append(Line(f"{key}.upstream", OK, f"reachable: {up.name}"))
        which = getattr(e, "key", "upstream")
        if which == "upstream_known_hosts":
            lines.append(Line(f"{key}.upstream_known_hosts", ERROR, str(e) + await _offered_key(aio, up)))
        else:
            lines.append(Line(f"{key}.{which}", ERROR, f"{e} (as {s.upstream_user})"))
        return
    c.close()
    lines.append(Line(f"{key}.upstream", OK, f"reachable: {up.name}"))
    lines.append(Line(f"{key}.upstream_known_hosts", OK, "the host key matches upstream_known_hosts"))
    lines.append(Line(f"{key}.upstream_key", OK, f"login ok as {s.upstream_user}"))
    try:
        problem = await aio(check_upstream_shell(s))
    except UpstreamError as e:
        problem = str(e)
    lines.append(Line(f"{key}.upstream_shell", ERROR if problem else OK,
                      problem or f"{s.upstream_shell} reads lines as the login shell does"))


async def _offered_key(aio, up) -> str:
    """What the upstream offers, for the operator to compare out of band (never trusted here)."""
    import asyncssh

    try:
        k = await aio(asyncssh.get_server_host_key(up.host, up.port))
    except Exception:
        return ""
    if k is None:
        return ""
    return (f"; it offers {k.get_algorithm()} {k.get_fingerprint()}: if that is right, "
            f"put \"[{up.host}]:{up.port} {k.export_public_key().decode().strip()}\" in upstream_known_hosts")


# --- http and mcp ----------------------------------------------------------------------------------------

async def _http_probe(reactor, url: str, creator, headers: dict):
    """(status line or None, error or None, tls handshake done) of one GET of ``url``'s path."""
    from urllib.parse import urlsplit

    from twisted.internet import defer
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
    from twisted.internet.interfaces import IHandshakeListener
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    done: defer.Deferred = defer.Deferred()
    state = {"tls": False, "tcp": False}

    @implementer(IHandshakeListener)
    class P(Protocol):
        buf = b""

        def connectionMade(self):
            state["tcp"] = True
            host = u.hostname if u.port is None else f"{u.hostname}:{u.port}"
            req = [f"GET {u.path or '/'} HTTP/1.1", f"Host: {host}", "Connection: close",
                   "User-Agent: hoopy-check"] + [f"{k}: {v}" for k, v in headers.items()]
            self.transport.write(("\r\n".join(req) + "\r\n\r\n").encode("latin-1"))

        def handshakeCompleted(self):
            state["tls"] = True

        def dataReceived(self, data):
            self.buf += data
            if b"\r\n" in self.buf and not done.called:
                done.callback(self.buf.split(b"\r\n", 1)[0].decode("latin-1"))
                self.transport.loseConnection()

        def connectionLost(self, reason):
            if not done.called:
                done.errback(reason)

    class F(Factory):
        noisy = False
        protocol = P

    ep: Any = HostnameEndpoint(reactor, u.hostname or "", port, timeout=TIMEOUT)
    if creator is not None:
        ep = wrapClientTLS(creator, ep)

    def fail(why) -> None:
        if not done.called:
            done.errback(why)

    d = ep.connect(F())
    d.addErrback(fail)
    timer = reactor.callLater(TIMEOUT, fail, TimeoutError(f"no answer within {TIMEOUT:g}s"))
    try:
        line = await done
        return line, None, state
    except Exception as e:
        return None, (getattr(e, "value", e)), state
    finally:
        if timer.active():
            timer.cancel()


def _reason(e) -> str:
    if hasattr(e, "getErrorMessage"):
        return e.getErrorMessage()
    return " ".join((str(e) or type(e).__name__).split())[:300]


async def _check_url(reactor, key, url, creator, headers, lines, ca_key):
    line, err, state = await _http_probe(reactor, url, creator, headers)
    if not state["tcp"]:
        lines.append(Line(f"{key}.upstream", ERROR, f"unreachable: {url}: {_reason(err)}"))
        return None
    lines.append(Line(f"{key}.upstream", OK, f"reachable: {url}"))
    if creator is not None:
        if not state["tls"]:
            lines.append(Line(f"{key}.{ca_key}", ERROR, f"TLS not verified: {_reason(err)}"))
            return None
        lines.append(Line(f"{key}.{ca_key}", OK, "TLS, certificate and host name verified"))
    if line is None:
        lines.append(Line(f"{key}.upstream", ERROR, f"no HTTP answer: {_reason(err)}"))
        return None
    return line


async def check_http(reactor, cfg, conn, lines):
    from urllib.parse import urlsplit

    from hoopy.http.tls import upstream_tls_policy as _tls_policy

    s = conn.settings
    key = f"connections.{conn.name}"
    u = urlsplit(s.upstream)
    creator = None
    if u.scheme == "https":
        port = u.port or 443
        creator = _tls_policy(s).creatorForNetloc(u.hostname.encode("idna"), port)
    headers = {k: v.value for k, v in s.upstream_headers.items()}
    line = await _check_url(reactor, key, s.upstream, creator, headers, lines, "upstream_ca")
    if line is None:
        return
    status = line.split(" ", 2)
    code = status[1] if len(status) > 1 else "?"
    where = "upstream_headers" if headers else "upstream"
    if code in ("401", "403", "407"):
        lines.append(Line(f"{key}.{where}", WARN, f"GET {u.path or '/'} answered {line!r}: "
                          + ("the credential in upstream_headers may be wrong" if headers else
                             "the upstream wants a credential (upstream_headers)")))
    else:
        lines.append(Line(f"{key}.{where}", OK, f"GET {u.path or '/'} answered {line!r}"))


async def check_mcp(reactor, cfg, conn, lines):
    import shutil
    from urllib.parse import urlsplit

    s = conn.settings
    key = f"connections.{conn.name}"
    if s.command:
        path = {k: v for k, v in s.env.items() if isinstance(v, str)}.get("PATH")
        exe = shutil.which(s.command[0], path=path)
        lines.append(Line(f"{key}.command", OK if exe else ERROR,
                          f"{s.command[0]} is {exe}" if exe else f"{s.command[0]}: not found or not executable"))
        return
    from twisted.internet import ssl

    u = urlsplit(s.upstream)
    creator = ssl.optionsForClientTLS(u.hostname) if u.scheme == "https" else None
    headers = {k: v.value for k, v in s.upstream_headers.items()}
    line = await _check_url(reactor, key, s.upstream, creator, headers, lines, "upstream")
    if line is not None:
        lines.append(Line(f"{key}.upstream", OK, f"GET answered {line!r}"))


CHECKS = {"postgres": check_postgres, "ssh": check_ssh, "http": check_http, "mcp": check_mcp}
