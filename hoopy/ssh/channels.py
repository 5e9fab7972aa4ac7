"""The channels of one client connection, each relayed to its own upstream channel.

A session channel (exec, shell, sftp) is judged by the policy service
before anything reaches upstream: the client's bytes are held (its window
stays shut) until the decision, then the two channels are joined with
backpressure both ways (a side that cannot write pauses the other side's
reading). Terminal channels are recorded in asciicast v2; exec channels
without a terminal keep their output, bounded, in their closing event
(hoopy.ssh.channel_end); SFTP requests are read packet by packet and each
file operation is recorded (durable) before the packet goes upstream
(hoopy.ssh.sftp_relay).
"""
from __future__ import annotations

import asyncio
import collections
import time

import asyncssh
from twisted.logger import Logger

from hoopy.audit.asciicast import AsciicastRecorder
from hoopy.policy.rules import Operation, Unit
from hoopy.policy.verdicts import Deny, Hold
from hoopy.ssh import sftp, shell
from hoopy.ssh.awaiting import wait
from hoopy.ssh.channel_end import GATEWAY_FAILED, ChannelEnd
from hoopy.ssh.environment import upstream_env
from hoopy.ssh.masking import StreamMasker, compile_detectors
from hoopy.ssh.refusals import REFUSED_OPERATION, REFUSED_WHY
from hoopy.ssh.sftp_relay import SFTPRelay
from hoopy.ssh.sftpgate import SFTPGate
from hoopy.ssh.upstream import MAX_PACKET, WINDOW
from hoopy.ssh.upstream_session import WRITE_HIGH, UpstreamSession

log = Logger()

STDERR = asyncssh.EXTENDED_DATA_STDERR
REFUSED = 126  # what a shell returns for "found but cannot run"
ATTRIBUTION = {"HOOPY_MODEL": "model", "HOOPY_TOOL_CALL": "tool_call", "HOOPY_MCP_SERVER": "mcp_server"}

# What a client's `env` requests may pass upstream: see hoopy.ssh.environment.


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class ClientSession(SFTPRelay, ChannelEnd, asyncssh.SSHServerSession):
    """One session channel from the client: exec, shell or the sftp subsystem (its SFTP
    requests: SFTPRelay; its end: ChannelEnd)."""

    def __init__(self, client):
        self.client = client  # hoopy.ssh.server.ClientConnection
        self.chan = None
        self.kind = None
        self.command = None
        self.pty = None  # (term_type, term_size, term_modes)
        self.up = None  # the upstream channel, once open
        self.recorder = None
        self.recording = None
        self.tracker = None  # sftp.Tracker for sftp channels
        self.gate = None  # SFTPGate: judges each file request by its resolved path
        self.hold = None
        self.closed = False  # the client's side is gone
        self.exit_status = None
        self.exit_signal = None
        self.bytes_in = self.bytes_out = self.bytes_err = 0
        self.output = bytearray()
        self.truncated = False
        self.input = bytearray()
        self.input_truncated = False
        self.started = time.monotonic()
        self.done = asyncio.get_event_loop().create_future()  # set once the channel is recorded
        self._finishing = None
        self._sftp_queue = collections.deque()
        self._sftp_pump = None
        self._eof_pending = False
        self._ending = []  # "exit" and "eof" in the order the upstream sent them
        self._exited = False
        self._end_known = False  # the upstream ended (or the gateway refused): an end to relay
        self._drained = None  # at the end: resolved once the client has all the output
        self._early = []
        self.maskers = None  # {datatype: StreamMasker} for exec and shell output, where masking applies
        self.up_blocked = False  # the upstream channel asked us to stop writing
        self.env = {}  # what goes upstream (see upstream_env)
        self.env_dropped = []

    # --- requests from the client -------------------------------------------

    def connection_made(self, chan):
        self.chan = chan
        chan.set_write_buffer_limits(WRITE_HIGH)
        self.client.channels.add(self)
        self.client.records.add(self.done)
        self.done.add_done_callback(self.client.records.discard)

    def request_refused(self, request: str, why: str | None):
        """A request on this channel was refused (here or by asyncssh): on the record, with why."""
        why = why or self.__dict__.pop("_why", None) or REFUSED_WHY.get(request) \
            or f"channel request {request!r} is not offered through hoopy"
        detail = {"command": self.command} if self.command else {}
        self.client.refuse(REFUSED_OPERATION.get(request, "channel-request"), request, why,
                           channel=self.kind, **detail)

    def pty_requested(self, term_type, term_size, term_modes):
        if self.kind is not None:
            # After exec/shell the decision (and whether the channel is recorded) is already
            # being made: a late pty-req would reach upstream as a terminal nobody records.
            self._why = f"a terminal asked for after the {self.kind} started (judged without one)"
            return False
        self.pty = (term_type, term_size, term_modes)
        return True

    def shell_requested(self):
        self.kind = "shell"
        return True

    def exec_requested(self, command):
        if not command:
            # An empty command line would open the upstream user's login shell (asyncssh sends a
            # `shell` request for it, sshd runs the shell for it): a shell judged as `exec *`.
            self._why = "an empty command line (upstream it would be the login shell)"
            return False
        self.kind = "exec"
        self.command = command
        return True

    def subsystem_requested(self, subsystem):
        if subsystem != "sftp":
            self._why = f"subsystem {subsystem!r} is not offered through hoopy (only sftp)"
            return False
        self.kind = "sftp"
        return True

    def session_started(self):
        # Nothing the client sends goes anywhere before the policy has spoken
        # (data that arrives meanwhile is held, see data_received).
        asyncio.ensure_future(self._run())

    # --- opening -------------------------------------------------------------

    async def _run(self):
        try:
            await self._open()
        except Exception:
            log.failure("ssh channel {kind} of {peer}", kind=self.kind, peer=self.client.peer)
            await self._fail("hoopy: internal error; see the gateway log", GATEWAY_FAILED)

    @property
    def session(self):
        return self.client.session

    def _operation(self) -> Operation:
        detail: dict[str, object] = {"pty": self.pty is not None}
        if self.env:
            detail["env"] = sorted(self.env)
        if self.env_dropped:
            detail["env_dropped"] = self.env_dropped
        if self.kind == "exec":
            # What the upstream's shell will run, part by part (hoopy.ssh.shell).
            analysis = shell.analyze(self.command, self.client.settings.upstream_shell)
            if analysis.heredocs:
                detail["heredocs"] = [dict(h) for h in analysis.heredocs]
            units = analysis.units
            if self.pty is not None:
                # The keys reach the program: a pager or an editor there is a shell (fails closed).
                escape = shell.terminal_unit(analysis.parts)
                if escape is not None:
                    units += (escape,)
            return Operation("ssh", "exec", self.command, units, detail)
        return Operation("ssh", self.kind, self.kind, (Unit(self.kind),), detail)

    async def _open(self):
        try:
            session, upstream = await self.client.wait_ready()
        except Exception as e:
            await self._fail(f"hoopy: {e}", GATEWAY_FAILED, record=False)
            self.client.close_soon()
            return
        env = {_text(k): _text(v) for k, v in self.chan.get_environment().items()}
        attribution = {ATTRIBUTION[k]: env.pop(k) for k in list(env) if k in ATTRIBUTION}
        if attribution:
            try:
                await wait(session.attribute(**attribution))
            except Exception:
                return await self._fail("hoopy: refused: the audit store cannot record this session",
                                        REFUSED)
        self.env, self.env_dropped = upstream_env(env)
        if self.pty is not None or self.kind == "shell":
            # A shell without a terminal (`ssh -T`, a script on stdin) is recorded too: its commands
            # arrive as input, so nothing else would say what ran.
            if not self._start_recording(env):
                # Fail closed: a terminal nobody records is not run.
                return await self._fail("hoopy: refused: the recording of this terminal cannot be written",
                                        REFUSED)
        decision = await wait(session.decide(self._operation()))
        if isinstance(decision, Hold):
            self.hold = decision
            why = f" ({decision.reason})" if decision.reason and self.kind == "exec" else ""
            self._notice(f"hoopy: {self._what()} is held for approval {decision.id}{why}; "
                         f"waiting for a reviewer (hoopy approve {decision.id})")
            self._marker(f"approval {decision.id} requested")
            decision = await wait(decision.resolution)
            self.hold = None
            self._marker(f"approval {decision.approval} "
                         f"{'denied' if isinstance(decision, Deny) else 'approved'}")
        if self.closed:
            return await self._finish()
        if isinstance(decision, Deny):
            if decision.status == "pending":  # retry mode: nothing ran; the agent runs it again once approved
                return await self._fail(f"hoopy: {decision.reason}\nhoopy: {decision.detail}", REFUSED)
            return await self._fail(f"hoopy: refused: {decision.reason}", REFUSED)
        kw = {"env": self.env, "encoding": None, "window": WINDOW, "max_pktsize": MAX_PACKET}
        if self.pty is not None:
            term_type, term_size, term_modes = self.pty
            kw.update(term_type=term_type, term_size=term_size, term_modes=term_modes, request_pty="force")
        else:
            kw["request_pty"] = False
        if self.kind == "sftp":
            kw["subsystem"] = "sftp"
            self.tracker = sftp.Tracker()
            self.gate = SFTPGate(self)
        if self.kind in ("exec", "shell"):
            # Terminals too: what the client sees, and so what the recording holds, is masked.
            detectors = tuple(d for m in session.masking() for d in m.patterns)
            if detectors:
                try:
                    compiled = compile_detectors(detectors)
                except ValueError as e:
                    return await self._fail(f"hoopy: refused: {e}", REFUSED)
                self.maskers = {None: StreamMasker(compiled), STDERR: StreamMasker(compiled)}
        try:
            up, _ = await upstream.create_session(
                lambda: UpstreamSession(self), self.command if self.kind == "exec" else None, **kw)
        except (asyncssh.Error, OSError) as e:
            why = getattr(e, "reason", None) or str(e) or type(e).__name__
            return await self._fail(f"hoopy: the upstream refused the {self.kind} channel: {why}",
                                    GATEWAY_FAILED)
        if self.closed:
            up.close()
            return
        self.up = up
        early, self._early = b"".join(self._early), []
        if early:
            if self.tracker is not None:
                self._sftp_requests(early)
            else:
                up.write(early)
        if self._eof_pending and not self._sftp_queue:
            up.write_eof()
        self.chan.resume_reading()

    def _what(self) -> str:
        return f"command {self.command!r}" if self.kind == "exec" else self.kind

    def _start_recording(self, env):
        name = self.client.recording_name()
        term_type, term_size, _ = self.pty if self.pty is not None else (None, None, None)
        width, height = (term_size[0], term_size[1]) if term_size else (80, 24)
        title = f"{self.session.identity} on {self.session.connection}: " + (
            self.command if self.kind == "exec" else self.kind)
        try:
            self.recorder = AsciicastRecorder(
                self.client.gateway.recordings / name, self.session, width, height,
                term=term_type or None, shell=env.get("SHELL"), title=title,
                command=self.command if self.kind == "exec" else None)
        except OSError as e:
            log.error("recording {name}: {e}", name=name, e=str(e))
            return False
        self.recording = name
        for data in self._early:  # typed before the recording could start
            self.recorder.input(data)
        if self.session.recording is None:
            self.session.set_recording(name)
        return True

    def _marker(self, label):
        if self.recorder is not None:
            self.recorder.marker(label)

    def _notice(self, line: str):
        if self.closed:
            return
        nl = "\r\n" if self.pty is not None else "\n"
        data = (line.replace("\n", nl) + nl).encode() if nl != "\n" else (line + nl).encode()
        self.chan.write_stderr(data)
        if self.recorder is not None:
            self.recorder.output(data)

    async def _fail(self, message: str, status: int, record: bool = True):
        self._notice(message)
        self.exit_status = status
        self.reason = message
        self._end_known = True
        if record:
            await self._finish()
        self._exit()
        if not record and not self.done.done():
            self.done.set_result(None)

    # --- bytes both ways ------------------------------------------------------

    def data_received(self, data, datatype):
        self.bytes_in += len(data)
        if self.recorder is not None:
            self.recorder.input(data)
        elif self.kind == "exec" and not self.input_truncated:
            # What an exec without a terminal reads (a script piped to `sh`, a file to `tee`) is
            # kept as its output is, bounded, in its event.
            room = self.client.settings.exec_output_limit - len(self.input)
            self.input_truncated = len(data) > room
            self.input += data[:max(room, 0)]
        if self.up is None:
            # Early bytes (before the decision): held here, bounded by the channel window.
            self._early.append(data)
            # asyncssh resumes reading right after session_started(), so pause here:
            # the rest waits in the channel window and the client is flow-controlled.
            self.chan.pause_reading()
            return
        if self.tracker is not None:
            return self._sftp_requests(data)
        self.up.write(data)

    def from_upstream(self, data, datatype):
        if datatype == STDERR:
            self.bytes_err += len(data)
        else:
            self.bytes_out += len(data)
        if self.tracker is not None:
            # Whole packets only: the gateway's own requests' answers stay here, and its own
            # replies to refused requests go between packets.
            try:
                pkts, mine = self.tracker.read_responses(data)
            except sftp.SFTPError as e:
                return self._abort(f"hoopy: {e}")
            self.gate.answered(mine)
            data = b"".join(pkts)
            if not data:
                return
        if self.maskers is not None:
            masker = self.maskers[STDERR if datatype == STDERR else None]
            before = sum(masker.counts.values())
            data = masker.feed(data)
            if self.recorder is not None and sum(masker.counts.values()) != before:
                self._marker_redacted(masker, before)
            if not data:
                return
        self._deliver(data, datatype)

    def _marker_redacted(self, masker, before):
        """A marker in the recording where values were masked (how many so far, by which pattern)."""
        n = sum(masker.counts.values()) - before
        self.recorder.marker(f"redacted {n} ({', '.join(sorted(masker.counts))})")

    def _deliver(self, data, datatype):
        if self.recorder is not None:
            self.recorder.output(data)
        elif self.kind == "exec" and not self.truncated:
            room = self.client.settings.exec_output_limit - len(self.output)
            if len(data) > room:
                self.truncated = True
                data_kept = data[:max(room, 0)]
            else:
                data_kept = data
            self.output += data_kept
        if self.closed:
            return
        if datatype == STDERR:
            self.chan.write_stderr(data)
        else:
            self.chan.write(data)

    def flush_masked(self):
        """The held-back tail of masked output, once upstream has no more."""
        if self.maskers is not None:
            for datatype, masker in self.maskers.items():
                before = sum(masker.counts.values())
                tail = masker.flush()
                if self.recorder is not None and sum(masker.counts.values()) != before:
                    self._marker_redacted(masker, before)
                if tail:
                    self._deliver(tail, datatype)

    def eof_received(self):
        if self.up is not None:
            if self._sftp_queue or self._sftp_pump is not None:
                self._eof_pending = True
            else:
                self.up.write_eof()
        else:
            self._eof_pending = True
        return True  # half-open: the command's output still flows back

    def terminal_size_changed(self, width, height, pixwidth, pixheight):
        if self.pty is not None:
            self.pty = (self.pty[0], (width, height, pixwidth, pixheight), self.pty[2])
        if self.recorder is not None:
            self.recorder.resize(width, height)
        if self.up is not None:
            self.up.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal):
        if self.up is not None:
            self.up.send_signal(signal)

    def break_received(self, msec):
        if self.up is not None:
            self.up.send_break(msec)
            return True
        self._why = "a break before the channel is open upstream"
        return False

    # Backpressure: the client cannot take more, so stop reading upstream, and back.
    def pause_writing(self):
        if self.up is not None and self._drained is None:
            self.up.pause_reading()

    def resume_writing(self):
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
        elif self.up is not None:
            self.up.resume_reading()
