"""The SSH relay's private shortcuts on both asyncio loops (hoopy/eventloop.py picks uvloop where it
imports): uvloop's transport keeps the ``data_received`` it found when the connection was made, so a
connection made a hoopy subclass afterwards (private._recast) must be handed to it again, or every
read goes asyncssh's copying way (twice the instructions a MiB relayed, measured); and parts sent
together reach the socket whole and in order, however the kernel takes them."""
import asyncio
import os
import socket
import threading

import pytest

from hoopy.ssh import private

uvloop = pytest.importorskip("uvloop")

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class Base(asyncio.Protocol):
    def __init__(self):
        self.got = []
        self.transport = None
        self.lost = asyncio.get_event_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self._transport = transport  # (where asyncssh keeps it: _recast reads this name)

    def data_received(self, data):
        self.got.append(("base", bytes(data)))

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class Sub(Base):
    def data_received(self, data):
        self.got.append(("sub", bytes(data)))


def _run(loop_name, coro_fn):
    """The coroutine on a loop of its own, in a thread (this one has pytest-twisted's loop)."""
    box = {}

    def main():
        loop = LOOPS[loop_name]()
        try:
            asyncio.set_event_loop(loop)
            box["result"] = loop.run_until_complete(asyncio.wait_for(coro_fn(loop), 30))
        except BaseException as e:
            box["error"] = e
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    t = threading.Thread(target=main)
    t.start()
    t.join(60)
    if "error" in box:
        raise box["error"]
    return box["result"]


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_recast_connection_receives_through_its_new_class(loop_name):
    async def go(loop):
        a, b = socket.socketpair()
        _, proto = await loop.connect_accepted_socket(Base, a)
        a_was = type(proto.transport)
        private._recast(proto, Sub)
        assert type(proto) is Sub and type(proto.transport) is a_was
        b.sendall(b"x" * 1000)
        while sum(len(d) for _, d in proto.got) < 1000:
            await asyncio.sleep(0.01)
        b.close()
        await proto.lost
        return proto.got

    got = _run(loop_name, go)
    assert {who for who, _ in got} == {"sub"}, got[:3]


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_recast_of_a_closing_connection_is_harmless(loop_name):
    async def go(loop):
        a, b = socket.socketpair()
        _, proto = await loop.connect_accepted_socket(Base, a)
        proto.transport.close()
        private._recast(proto, Sub)  # (no set_protocol on a transport already closing)
        await proto.lost
        b.close()
        return type(proto)

    assert _run(loop_name, go) is Sub


class _Sender(private._CoalescedSends):
    """Just enough of a connection for _send_pending: the parts queued for one write."""
    def __init__(self, transport, parts):
        self._pending_sends = [transport, *parts]


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
@pytest.mark.parametrize("sizes", [(5, 7), (100, 1, 200), (3 << 20, 1 << 20, 17, 2 << 20)])
def test_parts_sent_together_arrive_whole_and_in_order(loop_name, sizes):
    parts = [os.urandom(n) for n in sizes]

    async def go(loop):
        a, b = socket.socketpair()
        b.setblocking(False)
        _, proto = await loop.connect_accepted_socket(Base, a)
        _Sender(proto.transport, parts)._send_pending()
        want = sum(sizes)
        got = bytearray()
        while len(got) < want:  # (read while the loop writes what the kernel did not take at once)
            try:
                chunk = b.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            got += chunk
        proto.transport.close()
        b.close()
        return bytes(got)

    assert _run(loop_name, go) == b"".join(parts)
