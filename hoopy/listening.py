"""One configured listener as a service, and what happens when it cannot open.

A listener that cannot open (the port is taken, the address is not ours) is
not something a service decides about: it tells the gateway
(``Gateway.cannot_listen``), which stops the process, so a gateway never runs
with part of its configuration missing. No service stops the reactor itself.
"""
from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

log = Logger()


class Listener(Service):
    """Listens on ``listen`` with ``factory`` from privilegedStartService (before twistd drops
    privileges); stopping it stops listening. ``what`` names it in logs."""

    def __init__(self, gateway, what: str, listen: str, factory, key: str | None = None):
        self.gateway = gateway
        self.key = key  # the config key of ``listen``, for the one line when it cannot open
        self.what = what
        self.listen = listen
        self.factory = factory
        self.port = None
        self._listening: defer.Deferred | None = None

    def privilegedStartService(self):
        super().privilegedStartService()
        if self.key is not None:
            # twistd bound it before daemonizing (hoopy.listen.bind_all): adopt that socket.
            from hoopy.listen import endpoint

            ep = endpoint(self.gateway, self.key, self.listen)
        else:
            ep = serverFromString(self.gateway.reactor, self.listen)
        d = ep.listen(self.factory)
        d.addCallbacks(self._opened, self._failed)
        self._listening = d

    def startService(self):
        if self._listening is None:  # started without twistd's privileged step (tests, embedding)
            self.privilegedStartService()
        super().startService()

    def _opened(self, port):
        self.port = port
        log.info("{what}: listening on {addr}", what=self.what, addr=port.getHost())

    def _failed(self, failure):
        self.gateway.cannot_listen(self.what, self.listen, failure.getErrorMessage(), key=self.key,
                                   error=failure.value)

    def stopService(self):
        super().stopService()
        self._listening = None
        if self.port is None:
            return defer.succeed(None)
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening)
