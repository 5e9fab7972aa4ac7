"""The upstream half of a session channel: everything it gets goes back to the client's half
(hoopy.ssh.channels.ClientSession), and its flow control pauses the client's reading."""
from __future__ import annotations

import asyncssh

from hoopy.ssh import private

# How much a channel may buffer toward a peer that is not reading before the other side is
# paused (asyncssh's default is 64 KiB: in bulk transfers that paused and resumed the other
# side every few packets). Resumed when a quarter is left.
WRITE_HIGH = 512 * 1024


class UpstreamSession(asyncssh.SSHClientSession):
    """The upstream half of a session channel: everything goes back to the client."""

    def __init__(self, down):
        self.down = down  # hoopy.ssh.channels.ClientSession (not imported: it imports this)
        self.chan = None

    def connection_made(self, chan):
        self.chan = private.gateway_upstream_channel(chan)  # data packets sent with fewer copies
        chan.set_write_buffer_limits(WRITE_HIGH)

    def data_received(self, data, datatype):
        self.down.from_upstream(data, datatype)

    def eof_received(self):
        self.down.upstream_eof()
        return True

    def exit_status_received(self, status):
        self.down.upstream_exit(status=status)

    def exit_signal_received(self, signal, core_dumped, msg, lang):
        self.down.upstream_exit(signal=(signal, core_dumped, msg))

    def pause_writing(self):
        self.down.up_blocked = True
        if not self.down.closed:
            self.down.chan.pause_reading()

    def resume_writing(self):
        self.down.up_blocked = False
        if not self.down.closed and self.down._sftp_pump is None:
            self.down.chan.resume_reading()

    def connection_lost(self, exc):
        self.down.upstream_closed(exc)