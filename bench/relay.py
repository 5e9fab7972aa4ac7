#!/usr/bin/env python3
"""The floor: a bare byte relay on the same Twisted asyncio reactor as hoopy,
with immediate sends (hoopy.sockwrite.write_now), no parsing, no events.

    python3 bench/relay.py LISTEN_PORT UPSTREAM_PORT
"""
from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from twisted.internet import asyncioreactor  # noqa: E402

asyncioreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402

from hoopy.sockwrite import write_now  # noqa: E402


class Up(Protocol):
    def __init__(self, down):
        self.down = down

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.down.up = self
        if self.down.pending:
            write_now(self.transport, b"".join(self.down.pending))
            self.down.pending.clear()
        self.down.transport.resumeProducing()

    def dataReceived(self, data):
        write_now(self.down.transport, data)

    def connectionLost(self, reason):
        self.down.transport.loseConnection()


class Down(Protocol):
    up = None

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.pending = []
        self.transport.pauseProducing()
        connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", int(sys.argv[2])), Up(self))

    def dataReceived(self, data):
        if self.up is None:
            self.pending.append(data)
        else:
            write_now(self.up.transport, data)

    def connectionLost(self, reason):
        if self.up is not None:
            self.up.transport.loseConnection()


reactor.listenTCP(int(sys.argv[1]), Factory.forProtocol(Down), interface="127.0.0.1")
reactor.run()
