"""The ssh connection service: an asyncssh server on the connection's listen endpoint.

asyncssh runs on the asyncio loop that Twisted's asyncio reactor drives, so
this Service starts and closes an asyncssh server; on stopService every
client is disconnected and its session recorded before the store closes.
"""
from __future__ import annotations

import asyncio
import os

import asyncssh
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from hoopy.ssh.server import ClientConnection
from hoopy.ssh.upstream import MAX_PACKET, WINDOW, Upstream

log = Logger()

LISTEN_BACKLOG = 128  # as sshd's


def listen_address(desc: str) -> tuple[str, int]:
    ep = serverFromString(None, desc)
    port = getattr(ep, "_port", None)
    if not isinstance(port, int):
        raise ValueError(f"{desc!r}: ssh listens on tcp:PORT[:interface=ADDR] only")
    return getattr(ep, "_interface", "") or "", port


def host_key(path) -> asyncssh.SSHKey:
    """The gateway's host key, generated (ed25519, mode 0600) the first time."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519", comment="hoopy host key")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    log.info("ssh: generated host key {path}", path=str(path))
    return key


class SSHService(Service):
    def __init__(self, gateway, connection):
        self.gateway = gateway
        self.connection = connection
        self.settings = connection.settings
        self.upstream = Upstream(self.settings)
        self.host, self.port = listen_address(connection.listen)
        self.server = None
        self.clients: set[ClientConnection] = set()

    def startService(self):
        super().startService()
        key = host_key(self.settings.host_key)
        listen_key = f"connections.{self.connection.name}.listen"
        bound = getattr(self.gateway, "prebound", {}).pop(listen_key, None)
        # A socket bound before twistd daemonized (hoopy.listen), or the address.
        where = {"sock": bound[0]} if bound is not None else {"host": self.host or None, "port": self.port}
        d = Deferred.fromFuture(asyncio.ensure_future(asyncssh.create_server(
            lambda: ClientConnection(self), **where,
            server_host_keys=[key], encoding=None, line_editor=False,
            agent_forwarding=False, x11_forwarding=False, allow_scp=False,
            password_auth=False, kbdint_auth=False, gss_host=None,
            login_timeout=self.settings.login_timeout, server_version="hoopy",
            keepalive_interval=60, keepalive_count_max=3,
            # asyncio accepts up to `backlog` connections in one go before any is counted against
            # MAX_UNAUTHENTICATED: it bounds both the kernel's queue and that burst of descriptors.
            backlog=LISTEN_BACKLOG,
            encryption_algs=list(self.settings.ciphers),
            # Bigger packets from the client mean fewer trips through Python per MiB.
            window=WINDOW, max_pktsize=MAX_PACKET,
        )))

        def listening(server):
            self.server = server
            log.info("ssh {name} listening on {host}:{port}", name=self.connection.name,
                     host=self.host or "*", port=self.port)

        def failed(f):
            self.gateway.cannot_listen(f"ssh {self.connection.name}", self.connection.listen,
                                       f.getErrorMessage(), key=listen_key, error=f.value)

        d.addCallbacks(listening, failed)
        self._starting = d

    def stopService(self):
        super().stopService()
        if self.server is not None:
            self.server.close()
        ds = [c.terminate("gateway shutdown") for c in list(self.clients)]
        return DeferredList(ds, consumeErrors=True) if ds else succeed(None)


def make_service(gateway, connection):
    return SSHService(gateway, connection)
