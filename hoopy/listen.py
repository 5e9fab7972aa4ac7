"""Listeners bound before twistd daemonizes, and one line when one cannot be.

``twistd hoopy`` binds every listener (each connection's ``listen``, the admin
``admin_listen``) while it builds the service, before it daemonizes and before it
sheds privileges: a port in use or not permitted stops the start with one line on the
terminal naming the connection and its ``listen`` key, and exit status 1, never a
traceback or a gateway left running without it. The services then adopt the bound
sockets (hoopy.listening.Listener, the ssh service). A gateway built another way (the tests)
binds when its services start; a failure there is ``Gateway.cannot_listen``'s.
"""
from __future__ import annotations

import os
import socket

from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

BACKLOG = 50  # Twisted's default


class ListenError(Exception):
    """A listener that cannot be bound; str() is the one line the operator reads."""


def describe(key: str, desc: str, error) -> str:
    why = getattr(error, "strerror", None) or str(error) or type(error).__name__
    errno_ = getattr(error, "errno", None)
    hint = ""
    if errno_ in (13, 1):  # EACCES, EPERM
        hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif errno_ == 98:  # EADDRINUSE
        hint = " (another process listens there: `ss -ltnp` names it)"
    return f"hoopy: {key} = {desc!r}: cannot listen: {why}{hint}"


def _address(desc: str):
    """(family, address, TLS context factory or None, unix mode) for endpoints bound here, else None."""
    from twisted.internet.endpoints import (
        SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint, serverFromString)

    ep = serverFromString(None, desc)
    if isinstance(ep, (TCP4ServerEndpoint, TCP6ServerEndpoint, SSL4ServerEndpoint)):
        iface = ep._interface or ("::" if isinstance(ep, TCP6ServerEndpoint) else "")
        family = socket.AF_INET6 if ":" in iface else socket.AF_INET
        ctx = ep._sslContextFactory if isinstance(ep, SSL4ServerEndpoint) else None
        return family, (iface, ep._port), ctx, None
    if isinstance(ep, UNIXServerEndpoint):
        return socket.AF_UNIX, ep._address, None, ep._mode
    return None  # systemd: and the like come bound already; others bind when they start


def prebind(desc: str):
    """A listening, non-blocking socket for ``desc`` (OSError if it cannot be had), with its
    family and TLS context; None when this kind of endpoint is bound by its service."""
    found = _address(desc)
    if found is None:
        return None
    family, addr, ctx, mode = found
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's own ports
        else:
            try:
                # A socket file left by a previous run (Twisted's unix: endpoint removes it too).
                if os.path.exists(addr) and not _answers(addr):
                    os.unlink(addr)
            except OSError:
                pass
        s.bind(addr)
        if family == socket.AF_UNIX and mode is not None:
            os.chmod(addr, mode)
        s.listen(BACKLOG)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s, family, ctx


def _answers(path: str) -> bool:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        c.connect(path)
        return True
    except OSError:
        return False
    finally:
        c.close()


@implementer(IStreamServerEndpoint)
class Adopted:
    """The endpoint of a socket bound before daemonizing: listen() adopts it (once)."""

    def __init__(self, reactor, bound):
        self.reactor = reactor
        self.bound = bound

    def listen(self, factory):
        if self.bound is None:
            return defer.fail(ListenError("this listener's socket was already adopted"))
        (s, family, ctx), self.bound = self.bound, None
        if ctx is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            factory = TLSMemoryBIOFactory(ctx, False, factory)
        try:
            return defer.succeed(self.reactor.adoptStreamPort(s.fileno(), family, factory))
        except Exception:
            return defer.fail()
        finally:
            s.close()  # the port holds its own copy of the descriptor


def endpoint(gateway, key: str, desc: str):
    """The endpoint a service listens on: its socket bound before daemonizing, or ``desc``."""
    bound = getattr(gateway, "prebound", {}).pop(key, None)
    if bound is not None:
        return Adopted(gateway.reactor, bound)
    from twisted.internet.endpoints import serverFromString

    return serverFromString(gateway.reactor, desc)


def bind_all(config) -> dict:
    """Bind every listener of this config now (twistd: before it daemonizes): key -> bound
    socket, for ``Gateway.prebound``. Raises SystemExit with one line naming the key when
    one cannot be bound (exit status 1)."""
    listeners = [(f"connections.{c.name}.listen", c.listen) for c in config.connections.values()]
    if config.gateway.admin_listen:
        listeners.append(("gateway.admin_listen", config.gateway.admin_listen))
    bound: dict = {}
    for key, desc in listeners:
        try:
            b = prebind(desc)
        except OSError as e:
            for s, _, _ in bound.values():
                s.close()
            raise SystemExit(describe(key, desc, e)) from None
        if b is not None:
            bound[key] = b
    return bound
