"""direct-tcpip channels: a client's port forward, relayed to the same forward from the upstream host.

The policy has judged the target (``forward HOST:PORT``) before the upstream
channel is opened (see ``ClientConnection._forward``); from then on bytes
flow both ways with backpressure, and the end is one ``ssh.forward`` event.
"""
from __future__ import annotations

import time

import asyncssh
from twisted.logger import Logger

from hoopy.session import IN, OUT

log = Logger()


class ForwardSession(asyncssh.SSHTCPSession):
    """A client's direct-tcpip channel, relayed to the same forward from the upstream host."""

    def __init__(self, client, target: str):
        self.client = client
        self.target = target
        self.chan = None
        self.up = None
        self.closed = False
        self.bytes_in = self.bytes_out = 0
        self.started = time.monotonic()

    def connection_made(self, chan):
        self.chan = chan

    def data_received(self, data, datatype):
        self.bytes_in += len(data)
        self.up.write(data)

    def eof_received(self):
        self.up.write_eof()
        return True

    def pause_writing(self):
        self.up.pause_reading()

    def resume_writing(self):
        self.up.resume_reading()

    def from_upstream(self, data):
        self.bytes_out += len(data)
        if not self.closed:
            self.chan.write(data)

    def connection_lost(self, exc):
        if not self.closed:
            self.client.forwards -= 1
        self.closed = True
        if self.up is not None:
            self.up.close()
        self._record()

    def upstream_closed(self, exc):
        if not self.closed:
            self.chan.close()
        self._record()

    def _record(self):
        if getattr(self, "_recorded", False):
            return
        self._recorded = True
        session = self.client.session
        session.count_bytes(IN, self.bytes_in)
        session.count_bytes(OUT, self.bytes_out)
        d = session.event("ssh.forward", "ok", target=self.target, bytes_in=self.bytes_in,
                          bytes_out=self.bytes_out, duration_s=round(time.monotonic() - self.started, 3))
        d.addErrback(lambda f: log.error("ssh: forward end not recorded: {e}", e=f.getErrorMessage()))


class UpstreamForward(asyncssh.SSHTCPSession):
    def __init__(self, down: ForwardSession):
        self.down = down

    def data_received(self, data, datatype):
        self.down.from_upstream(data)

    def eof_received(self):
        if not self.down.closed:
            self.down.chan.write_eof()
        return True

    def pause_writing(self):
        if not self.down.closed:
            self.down.chan.pause_reading()

    def resume_writing(self):
        if not self.down.closed:
            self.down.chan.resume_reading()

    def connection_lost(self, exc):
        self.down.upstream_closed(exc)
