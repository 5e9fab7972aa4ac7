"""How a channel ends through the gateway (issue 11 item 2): exit status and EOF reach the client
in sshd's order, after all the output and after the channel's event is durable."""
from __future__ import annotations

import subprocess
import sys

from tests.test_ssh import agent_key, setup, sshd  # noqa: F401  (fixtures)

ORDER_CLIENT = r'''
import asyncio, sys
import asyncssh

async def main(port, key):
    async with asyncssh.connect("127.0.0.1", int(port), username="agent", client_keys=[key],
                                known_hosts=None, agent_path=None, config=[]) as c:
        for cmd, slow in (("head -c 3000000 /dev/zero", True), ("exit 3", False), ("kill -TERM $$", False)):
            seen, got = [], [0]

            class S(asyncssh.SSHClientSession):
                def connection_made(self, chan):
                    self.chan = chan
                def data_received(self, data, datatype):
                    got[0] += len(data)
                def eof_received(self):
                    seen.append(("eof", got[0]))
                def exit_status_received(self, status):
                    seen.append((f"exit {status}", got[0]))
                def exit_signal_received(self, signal, core, msg, lang):
                    seen.append((f"signal {signal}", got[0]))
                def connection_lost(self, exc):
                    seen.append(("close", got[0]))

            chan, session = await c.create_session(S, cmd, encoding=None, window=65536)
            if slow:  # read nothing for a while: the gateway holds what it cannot send
                chan.pause_reading()
                await asyncio.sleep(2)
                chan.resume_reading()
            await chan.wait_closed()
            print(cmd, seen)

asyncio.run(main(*sys.argv[1:]))
'''


def test_exit_status_comes_after_all_the_output_and_before_close(setup):
    s = setup(allow=["exec head -c 3000000 /dev/zero", "exec exit 3", "exec kill -TERM $$"])
    r = subprocess.run([sys.executable, "-c", ORDER_CLIENT, str(s.port), str(s.key)],
                       capture_output=True, text=True, timeout=90)
    lines = dict(line.split(" [", 1) for line in r.stdout.splitlines())
    assert len(lines) == 3, (r.stdout, r.stderr)
    big = eval("[" + lines["head -c 3000000 /dev/zero"])
    # Every byte arrived before the status, EOF and close; each of these came once.
    assert sorted(w for w, _ in big) == ["close", "eof", "exit 0"], big
    assert all(n == 3_000_000 for _, n in big), big
    assert big[-1][0] == "close"
    assert sorted(w for w, _ in eval("[" + lines["exit 3"])) == ["close", "eof", "exit 3"]
    assert sorted(w for w, _ in eval("[" + lines["kill -TERM $$"])) == ["close", "eof", "signal TERM"]
    # Each status went out after its event was written: the events are all there.
    assert [e["data"]["exit_status"] for e in s.gw.events("ssh.exec")] == [0, 3, None]
