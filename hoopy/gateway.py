"""The gateway: what every protocol service stands on.

One object per process, holding the config, identities, the state store,
the policy and approval services, metrics and the open sessions. It is a
MultiService: the store starts first and stops last, so on SIGTERM every
protocol service ends its sessions and they are recorded before the store
closes.
"""
from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList, gatherResults, succeed
from twisted.logger import Logger
from zope.interface import implementer

from hoopy.audit.events import Event
from hoopy.audit.failures import AuthFailureLog
from hoopy.audit.store import StateConflict, open_store
from hoopy.causal import InFlight
from hoopy.identity import Directory
from hoopy.metrics import Metrics
from hoopy.policy.approvals import ApprovalService
from hoopy.policy.service import PolicyService
from hoopy.protocols import PROTOCOLS
from hoopy.reach import Upstreams
from hoopy.session import ISessionHost, Session

log = Logger()

@implementer(ISessionHost)
class Gateway(MultiService):
    def __init__(self, config, reactor=None, store=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        self.name_ = config.gateway.name
        self.identities = Directory(config.identities)
        self.metrics = Metrics()
        self.upstreams = Upstreams(self)  # reachability: /health, hoopy_upstream_up, the probe
        self._byte_counters: dict = {}
        self.auth_failures = AuthFailureLog(self.record, reactor)
        self.store = store or open_store(config, reactor)
        self.store.on_error = self._store_failed
        gw = config.gateway
        self.store.sign_interval = gw.sign_interval
        self.store.heartbeat = gw.heartbeat
        self.anchor = None
        # The key is read (or made) now, before twistd daemonizes, so a key that cannot be
        # used stops the start with a message on the terminal.
        self._key_created = self._load_signing_key()
        self.approvals = ApprovalService(self.store, self.identities, reactor, self.metrics)
        self.policy = PolicyService(config, self.store, self.approvals, self.metrics)
        self.recordings = config.gateway.recordings
        self.sessions: dict[str, Session] = {}
        self._stopping = False  # cannot_listen asked the reactor to stop
        self.in_flight = InFlight()  # MCP tool calls now running: what operations record as caused_by
        self.notifier = None
        if config.notify:
            from hoopy.notify.delivery import Notifier

            self.notifier = Notifier(self, config.notify)
            self.notifier.setName("notify")
            self.notifier.setServiceParent(self)
            self.store.observers.append(self.notifier.observe)

    def _store_failed(self, error):
        self.metrics.store_errors.inc()
        if self.notifier is not None:
            self.notifier.store_failed(error)

    # --- building ----------------------------------------------------------

    def add_connections(self):
        for conn in self.config.connections.values():
            svc = PROTOCOLS[conn.type].make_service(self, conn)
            svc.setName(f"connection:{conn.name}")
            svc.setServiceParent(self)

    def add_admin(self):
        if self.config.gateway.admin_listen:
            from hoopy.admin.api import make_service

            svc = make_service(self, self.config.gateway.admin_listen)
            svc.setName("admin")
            svc.setServiceParent(self)

    # --- sessions -----------------------------------------------------------

    def new_session(self, identity: str, connection, peer: str, credential: str | None = None) -> Session:
        """A session object; ``start()`` records it (and fails if it cannot). ``credential``:
        the per-child credential it authenticated with (hoopy.identity.Directory.issue)."""
        return Session(self, identity, connection.name, connection.type, peer, credential=credential)

    def session_started(self, session: Session):
        self.sessions[session.id] = session
        self.metrics.sessions.labels(session.protocol, session.connection).inc()
        self.metrics.sessions_open.labels(session.protocol, session.connection).inc()

    def session_ended(self, session: Session):
        if self.sessions.pop(session.id, None) is not None:
            self.metrics.sessions_open.labels(session.protocol, session.connection).dec()

    def record(self, kind: str, outcome: str | None = None, *, connection=None, peer=None,
               identity=None, **data):
        """An event outside any session: a failed login, a refused connection."""
        return self.store.append(Event(
            kind=kind, outcome=outcome, identity=identity,
            connection=connection.name if connection is not None else None,
            protocol=connection.type if connection is not None else None,
            peer=peer, data=data))

    def auth_failed(self, connection, peer: str, user: str, method: str, reason: str = "bad credentials"):
        # The admin API has no connection name: its failures are labelled "admin".
        self.metrics.auth_failures.labels(connection.type, connection.name or connection.type).inc()
        return self.auth_failures.failed(connection, peer, user, method, reason)

    def count_bytes(self, session: Session, direction: str, n: int):
        self.byte_counter(session, direction).inc(n)

    def byte_counter(self, session: Session, direction: str):
        """The counter ``count_bytes(session, direction, n)`` adds ``n`` to (its ``inc(n)``): for a
        protocol that counts every read, kept for the session."""
        key = (session.protocol, session.connection, direction)
        child = self._byte_counters.get(key)
        if child is None:  # labels() costs more than the increment: once per key
            child = self._byte_counters[key] = self.metrics.bytes.labels(*key)
        return child

    # --- lifecycle ------------------------------------------------------------

    def _load_signing_key(self):
        """This node's Ed25519 key (made if its file is absent and its folder there), before the
        store opens: a key that cannot be used stops the gateway."""
        from hoopy.audit.signing import SigningKeyError, load_signer

        path = self.config.gateway.signing_key
        if path is None:
            return False
        try:
            signer, created = load_signer(path)
        except SigningKeyError as e:
            raise SystemExit(f"hoopy: {e}")
        self.store.signer = signer
        if self.config.gateway.audit_anchor:
            from hoopy.audit.anchor import Anchor

            self.anchor = Anchor(self.config.gateway.audit_anchor, self.config.base_dir)
            self.store.anchor = self.anchor
        return created

    def _announce_key(self, created: bool):
        signer = self.store.signer
        path = self.config.gateway.signing_key
        if signer is None:
            log.warn("the audit chain is not signed: set [gateway] signing_key = \"file:...\" "
                     "(see docs/operators.md)")
            return
        if created:
            log.warn("\n" + "*" * 78 + "\n"
                     "* NEW SIGNING KEY for gateway {name}: {path}\n"
                     "* public key {pub} (key id {kid}), also in {path}.pub\n"
                     "* Give this public key to whoever audits: hoopy audit verify --key {pub}\n"
                     "* If this node already had a key, the path is wrong: a new key is a new identity.\n"
                     + "*" * 78, name=self.name_, path=str(path), pub=signer.public.text, kid=signer.key_id)
        else:
            log.info("signing the audit chain with key {kid} ({path})", kid=signer.key_id, path=str(path))

    def startService(self):
        created, self._key_created = self._key_created, False
        self._announce_key(created)
        if self.anchor is not None:
            self.anchor.start()  # a thread: started here, after twistd has daemonized
        self.store.start()
        if created:
            signer = self.store.signer
            self.store.append(Event(
                kind="audit.key.created", outcome="ok",
                data={"key_id": signer.key_id, "public_key": signer.public.text,
                      "path": str(signer.path)})).addErrback(
                lambda f: log.error("the new signing key's event was not recorded: {e}",
                                    e=f.getErrorMessage()))
        # Approvals left pending by a previous run can never resume their caller.
        reader = self.store.reader()
        try:
            stale = reader.approvals("pending")
        finally:
            reader.close()
        if getattr(self.store, "shared", False):
            # Other nodes hold their own: expire only what this node held.
            stale = [row for row in stale if row["gateway"] == self.name_]
        for row in stale:
            self.store.append(Event(
                kind="approval.expired", outcome="expired", session=row["session"],
                identity=row["requester"], connection=row["connection"], protocol=row["protocol"],
                data={"approval": row["id"], "operation": row["operation"],
                      "reason": "the gateway restarted while it was pending"}),
                approval={"id": row["id"], "state": "expired",
                          "reason": "the gateway restarted while it was pending"},
                # A reviewer on another node may have decided it meanwhile.
                expect_state="pending").addErrback(lambda f: f.trap(StateConflict))
        super().startService()
        self.upstreams.start()
        log.info("hoopy gateway {name} started: {n} connection(s)", name=self.name_,
                 n=len(self.config.connections))

    def stopService(self):
        # Children first (listeners close, sessions end and are recorded),
        # then anything still open, then the store.
        self.upstreams.stop()
        d = super().stopService() or succeed(None)
        d.addCallback(lambda _: self.end_all_sessions("gateway shutdown"))
        d.addCallback(lambda _: gatherResults(self.auth_failures.flush()))
        d.addCallback(lambda _: self.store.stop())
        if self.anchor is not None:
            from twisted.internet.threads import deferToThread

            d.addCallback(lambda _: deferToThread(self.anchor.stop))
        return d

    def cannot_listen(self, what: str, listen: str, why: str, key: str | None = None, error=None) -> None:
        """A configured listener cannot open: the gateway does not run without it (an operator
        would otherwise find a connection silently missing). The one place that stops the
        reactor for it; the services only report. Under twistd the listeners were bound before
        it daemonized (hoopy.listen), so this is for a failure after that: still one line, and
        exit status 1."""
        if key is not None:
            from hoopy.listen import describe

            log.critical("{line}; the gateway stops", line=describe(key, listen, error if error is not None else why))
        else:
            log.critical("{what}: cannot listen on {listen}: {why}; the gateway stops", what=what,
                         listen=listen, why=why)
        if not self._stopping:
            self._stopping = True
            if getattr(self, "under_twistd", False):
                import atexit
                import os

                # twistd exits 0 once its reactor stops; nothing else can say the start failed.
                atexit.register(os._exit, 1)
            self.reactor.callWhenRunning(self.reactor.stop)

    def end_all_sessions(self, reason: str):
        ds = []
        for session in list(self.sessions.values()):
            for a in self.approvals.cancel_session(session, reason):
                ds.append(a)
            if session.terminate is not None:
                try:
                    ds.append(session.terminate(reason))
                except Exception:
                    log.failure("terminating session {id}", id=session.id)
            ds.append(session.end(reason))
        ds.extend(self.approvals.expire_all(reason))  # retry-mode ones outlive their session
        return DeferredList([d for d in ds if d is not None], consumeErrors=True)
