"""From a client's authentication to a ready upstream, for ``ClientProtocol``.

The session is opened first (on the record before anything reaches the server),
then the upstream is connected with the client's parameters and the catalog read
(the search path, the masked columns); the client is greeted as a server greets
it and what it sent meanwhile goes to a new ``ClientSide``. A masking rule that
does not resolve hands the connection to ``UnresolvedMasking`` instead. Anything
that fails on the way ends the connection with a FATAL: nothing runs unrecorded.
"""
from __future__ import annotations

import secrets

import attrs
from twisted.logger import Logger

from hoopy.postgres import codec
from hoopy.postgres.client_side import ClientSide
from hoopy.postgres.pipeline import PIPELINE_BUFFER
from hoopy.postgres.rows import MaskRules, catalog_query
from hoopy.postgres.scope import SCOPE_QUERY, SCOPE_RESULTS, Scope
from hoopy.postgres.startup import attribution, parse_options, passes_upstream, quote_option
from hoopy.postgres.unresolved_masking import UnresolvedMasking
from hoopy.postgres.upstream import ClientReading, connect, log_failure
from hoopy.session import IN
from hoopy.upstream import UpstreamError

log = Logger()


class Opening:
    def __init__(self, client):
        self.client = client  # the ClientProtocol
        self.early = bytearray()  # sent after authenticating, before the upstream is ready
        self.rules = MaskRules(client.service.detectors, configured=client.service.mask_columns)

    def start(self, c):
        """The handshake's Authenticated: open the session."""
        client = self.client
        self.early += c.rest
        client.session = session = client.gateway.new_session(c.user, client.connection, client.peer,
                                                              credential=c.credential)
        session.terminate = client.terminate
        session.start().addCallbacks(self._session_started, self._session_failed, callbackArgs=(c,))

    def receive_data(self, data):
        """The client's bytes while the session and the upstream open: kept for the client side."""
        client = self.client
        client.session.count_bytes(IN, len(data))
        self.early += data
        if len(self.early) > PIPELINE_BUFFER:
            client.pause("connecting")

    def take_early(self) -> bytes:
        early, self.early = bytes(self.early), bytearray()
        return early

    def _session_failed(self, f):
        log.error("postgres session not recorded: {e}", e=f.getErrorMessage())
        self.client.session = None
        self.client.fatal("08004", "hoopy cannot record this session: refused")

    def _session_started(self, _, c):
        client = self.client
        if client.closed:
            return client.session.end("client disconnected")
        options, rest = parse_options(c.params.get("options", ""))
        ours = attribution(c.params, options)
        client._attribute(application_name=c.params.get("application_name"), model=ours.get("model"),
                          tool_call=ours.get("tool_call"), mcp_server=ours.get("mcp_server"))
        settings = client.settings
        params = {"user": settings.upstream_user,
                  "database": settings.upstream_database or c.params.get("database") or c.user}
        params.update((k, v) for k, v in c.params.items() if passes_upstream(k))
        if rest:
            params["options"] = " ".join(quote_option(w) for w in rest)
        # The session's search path (read again by the client side when it may change), then
        # the masked columns.
        catalog = SCOPE_QUERY + (catalog_query(self.rules.configured) if self.rules.configured else "")
        d = connect(client.gateway.reactor, settings, params, catalog)
        d.addCallbacks(self._upstream_ready, self._upstream_failed)

    def _upstream_failed(self, f):
        client = self.client
        e = f.value
        code, message = (e.code or "08001", e.message) if isinstance(e, UpstreamError) else ("08001", str(e))
        client.gateway.upstreams.failed(client.connection, message if code == "08001" else f"{message} ({code})",
                                        reachable=getattr(e, "reached", False))
        if code.startswith("28"):
            # Do not show the client the upstream's authentication story.
            log.error("upstream authentication failed: {m}", m=message)
            code, message = "08001", "the gateway could not authenticate upstream"
        if client.session is not None:
            client.session.event("upstream.failed", "error", code=code, message=message).addErrback(
                log_failure("upstream failure not recorded"))
        if code not in ("08001", "08006"):
            # e.g. 57P03 "starting up": to the client, the upstream is not available.
            message, code = f"{message} (upstream SQLSTATE {code})", "08001"
        client.fatal(code, "hoopy: " + message)

    def _upstream_ready(self, up):
        client = self.client
        client.up = up
        client.gateway.upstreams.succeeded(client.connection)
        if client.closed:
            up.transport.loseConnection()
            return
        ready = up.info
        results = list(ready.catalog) + [[]] * (SCOPE_RESULTS + 2)
        # The catalog's rows (hundreds: pg_catalog's relations) are read once, below; an idle
        # connection must not keep them (nor the bytes that followed ReadyForQuery).
        up.info = attrs.evolve(ready, catalog=[], rest=b"")
        if self.rules.configured:
            self.rules.load(results[SCOPE_RESULTS:SCOPE_RESULTS + 2])
            missing = self.rules.unresolved()
            if missing:
                return UnresolvedMasking(client).begin(up, missing)
        client._count_in, client._count_out = client.session.byte_counts()
        client.cs = cs = ClientSide(self.rules, max_statement=client.gateway.config.gateway.max_statement,
                                    scope=Scope.from_results(results[:SCOPE_RESULTS]), statuses=ready.statuses)
        up.client = client
        client.transport.registerProducer(up.transport, True)
        up.transport.registerProducer(ClientReading(client), True)
        # The server's own pid (drivers compare it with pg_backend_pid() and with
        # notifications); a secret key of ours binds a cancel to this client.
        cancel_keys = client.service.cancel_keys
        key = secrets.token_bytes(4)
        while (ready.pid, key) in cancel_keys:
            key = secrets.token_bytes(4)
        client.key = (ready.pid, key)
        cancel_keys[client.key] = client
        greeting = [codec.parameter_status(k, v) for k, v in ready.statuses.items()]
        greeting += [codec.backend_key(ready.pid, key), codec.ready(b"I")]
        cs.to_client.append(b"".join(greeting))
        client.timer.cancel()
        if ready.rest:
            cs.receive_upstream(ready.rest)
        early = self.take_early()
        client.resume("connecting")
        cs.receive_data(early)
        client.run()
