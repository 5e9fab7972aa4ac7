"""How a session channel ends: the upstream's exit and EOF relayed in the order sshd sent
them, once the channel's closing event is durable; the client going away.

A part of hoopy.ssh.channels.ClientSession (its state is set up there).
"""
from __future__ import annotations

import asyncio
import time

from hoopy.session import IN, OUT
from hoopy.ssh import private
from hoopy.ssh.awaiting import quiet, wait

GATEWAY_FAILED = 255  # what ssh itself returns when the connection fails


class ChannelEnd:
    """The end of a session channel, both sides'.

    sshd ends a channel with exit-status (or exit-signal), EOF and close, in either order of
    the first two. A client may close as soon as it sees EOF (OpenSSH's ControlMaster, node's
    ssh2), so a status sent after EOF is lost to it. So neither goes to the client as it
    arrives: both wait until the channel's event is durable, then go in the order sshd sent
    them, then close (see _exit).
    """

    def upstream_eof(self):
        self.flush_masked()
        if "eof" not in self._ending:
            self._ending.append("eof")

    def upstream_exit(self, status=None, signal=None):
        if signal is not None:
            self.exit_signal = signal
        else:
            self.exit_status = status
        if "exit" not in self._ending:
            self._ending.append("exit")

    def upstream_closed(self, exc):
        """The upstream channel ended: pass its exit on, record, close."""
        self.up_exc = exc
        self.flush_masked()
        if self.exit_status is None and self.exit_signal is None:
            why = getattr(exc, "reason", None) or (str(exc) if exc else "") or "closed without an exit status"
            self._notice(f"hoopy: the upstream connection was lost: {why}")
            self.exit_status = GATEWAY_FAILED
            self.reason = f"upstream lost: {why}"
        self._end_known = True
        self._finish()  # relays the end once the channel's event is durable

    def _exit(self):
        """Relay the end as sshd sent it: exit-status/signal and EOF in its order, then close."""
        if self.closed or self._exited:
            return
        self._exited = True
        asyncio.ensure_future(self._send_end())

    async def _send_end(self):
        # exit-status is a channel request: it would overtake output still waiting for the
        # client's window, which sshd never does. So wait for that output to go first: with
        # limits of 0, asyncssh calls resume_writing once all of it is sent.
        if self.chan.get_write_buffer_size():
            self._drained = asyncio.get_running_loop().create_future()
            self.chan.set_write_buffer_limits(0, 0)
            await self._drained
        if self.closed:
            return
        order = self._ending if "exit" in self._ending else ["exit", *self._ending]
        if "eof" not in order:
            order = [*order, "eof"]
        for what in order:
            if what == "exit":
                if self.exit_signal is not None:
                    sig, core, msg = self.exit_signal
                    private.send_exit_signal(self.chan, sig, core, msg)
                else:
                    status = self.exit_status if self.exit_status is not None else GATEWAY_FAILED
                    private.send_exit_status(self.chan, status)
            else:
                self.chan.write_eof()
        self.chan.close()

    def connection_lost(self, exc):
        """The client's channel is gone (closed, or the client vanished)."""
        self.closed = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self.client.channels.discard(self)
        if not getattr(self, "_counted_closed", False):
            self._counted_closed = True
            self.client.sessions -= 1
        if self.hold is not None:
            # This channel's approval only: other channels of the session may be held too.
            self.client.session.expire_hold(self.hold.approval.id, "the client went away")
        if self.up is not None:
            self.up.close()
        if self._finishing is None and self.kind is not None and self.session is not None:
            if self.exit_status is None:
                self.reason = "client closed the channel" if exc is None else f"client lost: {exc}"
            asyncio.ensure_future(self._finish())
        elif self.kind is None and not self.done.done():
            self.done.set_result(None)

    def client_gone(self):
        """The whole client connection ended."""
        if not self.closed:
            self.connection_lost(None)

    def _finish(self):
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self._record_end())
        return self._finishing

    async def _record_end(self):
        try:
            session = self.session
            if session is None:
                return
            session.count_bytes(IN, self.bytes_in)
            session.count_bytes(OUT, self.bytes_out + self.bytes_err)
            data = {
                "exit_status": self.exit_status,
                "exit_signal": self.exit_signal[0] if self.exit_signal else None,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "bytes_err": self.bytes_err,
                "duration_s": round(time.monotonic() - self.started, 3), "pty": self.pty is not None,
            }
            if getattr(self, "reason", None):
                data["reason"] = self.reason
            if self.kind == "exec":
                data["command"] = self.command
                if self.recorder is None:
                    data["output"] = self.output.decode("utf-8", "replace")
                    data["output_truncated"] = self.truncated
                    data["input"] = self.input.decode("utf-8", "replace")
                    data["input_truncated"] = self.input_truncated
            if self.tracker is not None:
                for action in self.tracker.unclosed():
                    await quiet(wait(session.event(action.kind, "ok", **action.data)))
            if self.recording:
                data["recording"] = self.recording
            if self.maskers is not None:
                counts = {}
                for m in self.maskers.values():
                    for name, n in m.counts.items():
                        counts[name] = counts.get(name, 0) + n
                if counts:
                    data["redacted"] = counts
                    where = "terminal output" if self.recorder is not None else f"{self.kind} output"
                    await quiet(wait(session.redacted(sum(counts.values()), where=where, channel=self.kind,
                                                       command=self.command, patterns=counts,
                                                       recording=self.recording)))
            ok = self.exit_status == 0 and self.exit_signal is None
            await quiet(wait(session.event(f"ssh.{self.kind}", "ok" if ok else "failed", **data)))
            if self._end_known:
                self._exit()  # the status reaches the client once it is on the record
            if self.recorder is not None:
                # The recording holds masked output only; its seal says how much was masked.
                sealed = {"redacted": data["redacted"]} if data.get("redacted") else {}
                await quiet(wait(self.recorder.seal(**sealed)))
        finally:
            if self._end_known:
                self._exit()  # (once: a no-op when already relayed above)
            if not self.done.done():
                self.done.set_result(None)