"""The channels of one client connection, each relayed to its own upstream channel.

A session channel (exec, shell, sftp) is judged by the policy service
before anything reaches upstream: the client's bytes are held (its window
stays shut) until the decision, then the two channels are joined with
backpressure both ways (a side that cannot write pauses the other side's
reading). Terminal channels are recorded in asciicast v2; exec channels
without a terminal keep their output, bounded, in their closing event;
SFTP requests are read packet by packet and each file operation is
recorded (durable) before the packet goes upstream.
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
from hoopy.session import IN, OUT
from hoopy.ssh import private, sftp, shell
from hoopy.ssh.environment import upstream_env
from hoopy.ssh.masking import StreamMasker, compile_detectors
from hoopy.ssh.refusals import REFUSED_OPERATION, REFUSED_WHY
from hoopy.ssh.sftpgate import SFTPGate
from hoopy.ssh.upstream import MAX_PACKET, WINDOW

log = Logger()

STDERR = asyncssh.EXTENDED_DATA_STDERR
REFUSED = 126  # what a shell returns for "found but cannot run"
GATEWAY_FAILED = 255  # what ssh itself returns when the connection fails
# How much a channel may buffer toward a peer that is not reading before the other side is
# paused (asyncssh's default is 64 KiB: in bulk transfers that paused and resumed the other
# side every few packets). Resumed when a quarter is left.
WRITE_HIGH = 512 * 1024
ATTRIBUTION = {"HOOPY_MODEL": "model", "HOOPY_TOOL_CALL": "tool_call", "HOOPY_MCP_SERVER": "mcp_server"}

# What a client's `env` requests may pass upstream: see hoopy.ssh.environment.


async def wait(d):
    """Await a Twisted Deferred from asyncio code."""
    return await d.asFuture(asyncio.get_running_loop())


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class ClientSession(asyncssh.SSHServerSession):
    """One session channel from the client: exec, shell or the sftp subsystem."""

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

    # --- sftp: record each file operation before it goes upstream ---------------

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

    # --- closing -------------------------------------------------------------
    #
    # sshd ends a channel with exit-status (or exit-signal), EOF and close, in either order of
    # the first two. A client may close as soon as it sees EOF (OpenSSH's ControlMaster, node's
    # ssh2), so a status sent after EOF is lost to it. So neither goes to the client as it
    # arrives: both wait until the channel's event is durable, then go in the order sshd sent
    # them, then close (see _exit).

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
                    await _quiet(wait(session.event(action.kind, "ok", **action.data)))
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
                    await _quiet(wait(session.redacted(sum(counts.values()), where=where, channel=self.kind,
                                                       command=self.command, patterns=counts,
                                                       recording=self.recording)))
            ok = self.exit_status == 0 and self.exit_signal is None
            await _quiet(wait(session.event(f"ssh.{self.kind}", "ok" if ok else "failed", **data)))
            if self._end_known:
                self._exit()  # the status reaches the client once it is on the record
            if self.recorder is not None:
                # The recording holds masked output only; its seal says how much was masked.
                sealed = {"redacted": data["redacted"]} if data.get("redacted") else {}
                await _quiet(wait(self.recorder.seal(**sealed)))
        finally:
            if self._end_known:
                self._exit()  # (once: a no-op when already relayed above)
            if not self.done.done():
                self.done.set_result(None)


async def _quiet(aw):
    try:
        await aw
    except Exception as e:  # the store is down: logged there; the channel still closes
        log.error("ssh: event not recorded: {e}", e=e)


class UpstreamSession(asyncssh.SSHClientSession):
    """The upstream half of a session channel: everything goes back to the client."""

    def __init__(self, down: ClientSession):
        self.down = down
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
