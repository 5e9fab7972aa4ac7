"""SFTP on a session channel: the client's requests, read packet by packet, each file
operation judged and recorded (durable) before its packet goes upstream.

A part of hoopy.ssh.channels.ClientSession (its state is set up there): this is the
path of its bytes once the channel is an sftp subsystem.
"""
from __future__ import annotations

import asyncio

from twisted.logger import Logger

from hoopy.ssh import sftp

log = Logger()


class SFTPRelay:
    """The client's SFTP requests to upstream: plain ones at once, judged ones in order."""

    def _sftp_requests(self, data):
        try:
            reqs = self.tracker.read_requests(data)
        except sftp.SFTPError as e:
            return self._abort(f"hoopy: {e}")
        if not self._sftp_queue and all(r.access is None and r.action is None for r in reqs):
            if reqs:
                self.up.write(b"".join(r.pkt for r in reqs))
            return
        self._sftp_queue.extend(reqs)
        if self._sftp_pump is None:
            self.chan.pause_reading()
            self._sftp_pump = asyncio.ensure_future(self._pump_sftp())

    async def _pump_sftp(self):
        try:
            while self._sftp_queue and not self.closed:
                run = []
                while self._sftp_queue and self._sftp_queue[0].access is None and self._sftp_queue[0].action is None:
                    run.append(self._sftp_queue.popleft().pkt)
                if run:
                    self.up.write(b"".join(run))
                    continue
                req = self._sftp_queue.popleft()
                try:
                    await self.gate.handle(req)
                except asyncio.TimeoutError:
                    return self._abort("hoopy: the upstream did not resolve an SFTP path")
                except Exception as e:
                    log.error("ssh sftp: {e}", e=e)
                    return self._abort("hoopy: refused: the audit store cannot record this file operation")
                if self.up is None or self.closed:
                    return
            if self._eof_pending and self.up is not None:
                self.up.write_eof()
        finally:
            self._sftp_pump = None
            if not self.closed and not self.up_blocked:
                self.chan.resume_reading()

    def _abort(self, message):
        self._notice(message)
        if self.up is not None:
            self.up.close()
        if not self.closed:
            self.chan.close()