"""One client's SSH connection to the gateway: authentication, its session, its upstream.

The SSH user name is the identity; its key must be one of the identity's
``ssh_keys``. An unknown user and a wrong key get the same answer (the
next auth method, then a disconnect), as from sshd. Once authenticated the
session is recorded and the gateway connects upstream; channels that open
meanwhile wait for that (``wait_ready``).
"""
from __future__ import annotations

import asyncio

import asyncssh
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hoopy.policy.rules import Operation
from hoopy.policy.verdicts import Deny, Hold
from hoopy.ssh import private
from hoopy.ssh.refusals import REFUSED_OPERATION, REFUSED_WHY
from hoopy.ssh.awaiting import quiet, wait
from hoopy.ssh.channels import ClientSession
from hoopy.ssh.forward import ForwardSession, UpstreamForward
from hoopy.upstream import UpstreamError

log = Logger()


class SessionRefused(Exception):
    pass


# Connections still authenticating (as sshd's MaxStartups): past this many, a new one is closed at
# once, so a flood of connections that never log in (each kept up to login_timeout) cannot take
# every file descriptor of the gateway, which every protocol and the audit store share.
MAX_UNAUTHENTICATED = 256

# Session channels open at once on one connection (as sshd's MaxSessions). Each may hold a channel
# window of input (8 MiB) while it waits for the policy or a reviewer: without a bound one
# connection could make the gateway hold any amount.
MAX_SESSIONS = 10

# Port-forward channels open (or waiting for their decision) at once on one connection: each may
# be an approval for reviewers and a channel window of data in the gateway.
MAX_FORWARDS = 64

# asyncssh keeps every `env` request of a channel: without a bound, a client sending env requests
# without end (each up to a packet) makes the gateway hold any amount (sshd keeps 128 at most).
MAX_ENV = 64
MAX_ENV_BYTES = 4096

# Refusals of one connection recorded one by one; past this many they are counted, and one
# event at the end says how many more there were of each kind (a client looping on a refused
# request cannot fill the store).
MAX_REFUSALS_RECORDED = 100


class ClientConnection(asyncssh.SSHServer):
    def __init__(self, service):
        self.service = service
        self.gateway = service.gateway
        self.connection = service.connection
        self.settings = service.connection.settings
        self.conn = None
        self.peer = "unknown"
        self.user = None
        self.rejected_keys = 0
        self.session = None
        self.upstream = None
        self.ready = None  # the future of (session, upstream connection)
        self.channels = set()  # open session channels
        self.sessions = 0  # session channels accepted and not yet closed
        self.forwards = 0  # direct-tcpip channels requested and not yet closed
        self.records = set()  # the `done` futures of channels still being recorded
        self.recordings = 0
        self.end_reason = None
        self.ended = asyncio.get_event_loop().create_future()
        self.refused = False  # closed at once: too many connections authenticating
        self.refusals = 0  # refusals recorded one by one
        self.refusals_suppressed = {}  # operation -> how many more, beyond MAX_REFUSALS_RECORDED

    # --- authentication ----------------------------------------------------------

    def connection_made(self, conn):
        self.conn = private.gateway_connection(conn, self._asyncssh_refused)
        peer = conn.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.service.clients.add(self)
        pending = sum(1 for c in self.service.clients if c.ready is None)
        if pending > MAX_UNAUTHENTICATED:
            log.warn("ssh {peer}: refused: {n} connections are already authenticating", peer=self.peer,
                     n=pending - 1)
            self.refused = True
            conn.abort()

    def begin_auth(self, username):
        self.user = username
        return True

    def password_auth_supported(self):
        return False

    def kbdint_auth_supported(self):
        return False

    def host_based_auth_supported(self):
        return False

    def public_key_auth_supported(self):
        return True

    def validate_public_key(self, username, key):
        ident = self.gateway.identities.match_ssh_key(username, key.get_algorithm(), key.public_data)
        if ident is None:
            self.rejected_keys += 1
            return False
        self.credential = ident.credential  # a per-child credential (hoopy.mcp), or None
        return True

    def validate_ca_key(self, username, key):
        return False  # certificates are not identities

    def auth_completed(self):
        self.user = self.conn.get_extra_info("username") or self.user  # the name that authenticated
        self.ready = asyncio.ensure_future(self._start(self.user))
        self.ready.add_done_callback(lambda f: f.exception())  # retrieved by channels

    async def _start(self, identity):
        session = self.gateway.new_session(identity, self.connection, self.peer,
                                           credential=getattr(self, "credential", None))
        try:
            await wait(session.start())
        except Exception as e:
            log.error("ssh {peer}: session not recorded, refused: {e}", peer=self.peer, e=e)
            raise SessionRefused("refused: the audit store cannot record this session")
        self.session = session
        session.terminate = self.terminate
        try:
            self.upstream = await self.service.upstream.connect(self._upstream_lost)
        except UpstreamError as e:
            self.gateway.upstreams.failed(self.connection, str(e), reachable=getattr(e, "reached", False))
            self.end_reason = f"upstream failed: {e}"
            try:
                await wait(session.event("ssh.upstream", "failed", upstream=self.service.upstream.name,
                                         reason=str(e)))
            except Exception as not_recorded:  # the upstream's failure is what the caller hears of
                log.error("ssh {peer}: upstream failure not recorded: {e}", peer=self.peer, e=not_recorded)
            raise
        self.gateway.upstreams.succeeded(self.connection)
        return session, self.upstream

    async def wait_ready(self):
        if self.ready is None:
            raise SessionRefused("not authenticated")
        return await asyncio.shield(self.ready)

    def _upstream_lost(self, exc):
        if self.conn is not None and not self.ended.done():
            self.end_reason = self.end_reason or "upstream connection lost"
            # Let each channel report and record first; then the client goes too.
            asyncio.get_event_loop().call_later(1.0, self._close_if_idle)

    def _close_if_idle(self):
        if not self.channels and self.conn is not None:
            self.conn.close()
        elif self.conn is not None:
            asyncio.get_event_loop().call_later(1.0, self._close_if_idle)

    def close_soon(self):
        asyncio.get_event_loop().call_later(0.5, self._close_if_idle)

    def recording_name(self) -> str:
        n = self.recordings
        self.recordings += 1
        return f"{self.session.id}.cast" if n == 0 else f"{self.session.id}.{n}.cast"

    # --- channels --------------------------------------------------------------------

    def session_requested(self):
        if self.ready is None:
            return False
        if self.sessions >= MAX_SESSIONS:
            self._refuse_open("session", "session", f"more than {MAX_SESSIONS} session channels open at once")
        if self.conn.no_more_sessions:
            self._refuse_open("session", "session", "a session channel after no-more-sessions@openssh.com")
        self.sessions += 1
        session = ClientSession(self)
        # The connection's encoding, window and packet size; env requests bounded; refusals recorded.
        chan = private.gateway_channel(self.conn.create_server_channel(), MAX_ENV, MAX_ENV_BYTES,
                                       session.request_refused)
        return chan, session

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        if self.forwards >= MAX_FORWARDS:
            self._refuse_open("forward", f"forward {dest_host}:{dest_port}",
                              f"more than {MAX_FORWARDS} port-forward channels open or waiting")
        self.forwards += 1
        return self._counted_forward(dest_host, dest_port, orig_host, orig_port)

    async def _counted_forward(self, *args):
        try:
            return await self._forward(*args)
        except BaseException:
            self.forwards -= 1  # never opened; an opened one counts down when it closes
            raise

    async def _forward(self, host, port, orig_host, orig_port):
        try:
            session, upstream = await self.wait_ready()
        except Exception as e:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, f"hoopy: {e}")
        target = f"{host}:{port}"
        op = Operation.single("ssh", "forward", f"forward {target}", target, origin=f"{orig_host}:{orig_port}",
                              canonical=target)  # (the origin port differs on every try)
        decision = await wait(session.decide(op))
        if isinstance(decision, Hold):
            decision = await wait(decision.resolution)
        if isinstance(decision, Deny):
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            f"hoopy: refused: {decision.reason}")
        fwd = ForwardSession(self, target)
        try:
            fwd.up, _ = await upstream.create_connection(lambda: UpstreamForward(fwd), host, port)
        except asyncssh.ChannelOpenError as e:
            self._record_refusal("ssh.forward", "failed", target=target,
                                 reason=f"the upstream refused the forward: {e.reason}")
            raise asyncssh.ChannelOpenError(e.code, f"hoopy: upstream: {e.reason}")
        return fwd

    # No rule grants these: each refusal is recorded with its reason.

    def server_requested(self, listen_host, listen_port):
        self._global_detail = {"text": f"tcpip-forward {listen_host}:{listen_port}"}
        return False

    def unix_server_requested(self, listen_path):
        self._global_detail = {"text": f"streamlocal-forward {listen_path}"}
        return False

    def unix_connection_requested(self, dest_path):
        self._refuse_open("direct-streamlocal", f"direct-streamlocal {dest_path}",
                          "forwarding to a socket on the upstream host is not offered through hoopy")

    def tun_requested(self, unit):
        self._refuse_open("tun", f"tun {unit if unit is not None else 'any'}",
                          "tunnel devices (-w) are not offered through hoopy")

    def tap_requested(self, unit):
        self._refuse_open("tun", f"tap {unit if unit is not None else 'any'}",
                          "tunnel devices (-w) are not offered through hoopy")

    # --- refusals on the record ------------------------------------------------------------

    def _refuse_open(self, operation, text, reason):
        """Record a refused channel open and refuse it with the reason (the client shows it)."""
        self.refuse(operation, text, reason)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"hoopy: refused: {reason}")

    def _asyncssh_refused(self, what, name, reason):
        """asyncssh refused a channel open or a global request on its own (or at our word)."""
        if what == "open":
            self.refuse(REFUSED_OPERATION.get(name, "channel-open"), f"channel open {name}",
                        reason if reason not in ("Unknown channel type",) else f"channel type {name!r} is not offered")
            return
        detail = self.__dict__.pop("_global_detail", None) or {"text": f"global request {name}"}
        self.refuse(REFUSED_OPERATION.get(name, "global-request"), detail["text"],
                    REFUSED_WHY.get(name) or f"global request {name!r} is not offered through hoopy")

    def refuse(self, operation: str, text: str, reason: str, **detail):
        """Record one refusal (an ``operation`` event, outcome ``refused``) and log it."""
        log.info("ssh {peer}: refused {operation} {text!r}: {reason}", peer=self.peer, operation=operation,
                 text=text[:200], reason=reason)
        if self.refusals >= MAX_REFUSALS_RECORDED:
            self.refusals_suppressed[operation] = self.refusals_suppressed.get(operation, 0) + 1
            return
        self.refusals += 1
        self._record_refusal("operation", "refused", operation=operation, text=text, units=[],
                             rule=None, reason=reason, **detail)

    def _record_refusal(self, kind, outcome, **data):
        if self.ready is None:
            return  # not logged in: no session to record it in (auth.failed says who tried)

        async def record():
            # Until the login is done, however it went: the session may exist even though the
            # upstream failed (that failure is recorded where it happens).
            await asyncio.wait([self.ready])
            if self.session is not None and not self.session.ended:
                try:
                    await wait(self.session.event(kind, outcome, **data))
                except Exception as e:
                    log.error("ssh {peer}: refusal not recorded: {e}", peer=self.peer, e=e)

        f = asyncio.ensure_future(record())
        self.records.add(f)
        f.add_done_callback(self.records.discard)

    # --- the end -------------------------------------------------------------------------

    def connection_lost(self, exc):
        self.service.clients.discard(self)
        if self.ready is None:
            if self.user is not None and not self.refused:
                self.gateway.auth_failed(self.connection, self.peer, self.user, "publickey",
                                         reason=f"no accepted key ({self.rejected_keys} offered)")
            if not self.ended.done():
                self.ended.set_result(None)
            return
        reason = self.end_reason or ("client closed" if exc is None else f"client lost: {exc}")
        asyncio.ensure_future(self._end(reason))

    async def _end(self, reason):
        try:
            for ch in list(self.channels):
                ch.client_gone()
            # Each channel records its end (and seals its recording) before the session ends.
            if self.records:
                await asyncio.wait(list(self.records), timeout=30)
            if self.session is not None and self.refusals_suppressed:
                await _quiet_event(self.session, "operation", "suppressed", reason=(
                    f"more than {MAX_REFUSALS_RECORDED} refusals on one connection: the rest counted"),
                    counts=self.refusals_suppressed, units=[], rule=None)
            if self.session is not None:
                # Held port forwards have no channel yet to notice the client going: expire them.
                await asyncio.gather(*(wait(d) for d in self.gateway.approvals.cancel_session(
                    self.session, "the client went away")))
            if not self.ready.done():  # still logging in upstream: let it finish, then close it
                await asyncio.wait([self.ready], timeout=self.settings.connect_timeout + 5)
            if self.upstream is not None:
                self.upstream.close()
            if self.session is not None:
                await wait(self.session.end(reason))
        except Exception as e:
            log.error("ssh {peer}: end not recorded: {e}", peer=self.peer, e=e)
        finally:
            if not self.ended.done():
                self.ended.set_result(None)

    def terminate(self, reason):
        """Close this client's connection (gateway shutdown); fires once it is recorded."""
        self.end_reason = reason
        if self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, f"hoopy: {reason}")
        return Deferred.fromFuture(asyncio.shield(self.ended))


async def _quiet_event(session, kind, outcome, **data):
    await quiet(wait(session.event(kind, outcome, **data)))
