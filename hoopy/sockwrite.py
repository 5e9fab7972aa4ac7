"""Write to a TCP transport now, not on the next reactor turn.

Twisted's ``transport.write`` only buffers: it registers the socket for
writability and sends on the next loop iteration, then unregisters it. On
the asyncio reactor that is two ``epoll_ctl`` calls and a loop turn for
every small reply, about a quarter of the CPU of a request/reply proxy.
When nothing is buffered, sending right away is what the transport would
do next anyway; whatever the kernel does not take goes through the normal
path, with its backpressure. TLS transports and anything else take the
normal path.
"""
from __future__ import annotations

from twisted.internet import tcp

_PLAIN = (tcp.Server, tcp.Client)


def write_now(transport, data: bytes) -> None:
    if (type(transport) in _PLAIN and data and not transport.TLS and transport.connected
            and not transport.disconnecting and not transport._writeDisconnected
            and not transport.dataBuffer and not transport._tempDataBuffer):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error the transport reports on its own path
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
