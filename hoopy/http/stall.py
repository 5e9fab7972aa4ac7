"""The stall timer of an upstream body: the upstream silent for ``timeout`` seconds while nobody
but it is to blame ends the exchange (response_body.py's body protocols share this one rule).
"""
from __future__ import annotations

from hoopy.sockwrite import retarget


def _never() -> bool:
    return False


class Stall:
    """The upstream silent for ``timeout`` seconds: ``expired`` is called, unless ``excused()``
    (the client is the slow one, or the store) says to wait on."""

    def __init__(self, reactor, timeout: float, expired, excused=_never, call=None):
        self.reactor, self.timeout, self.expired, self.excused = reactor, timeout, expired, excused
        if call is not None and call.active():
            # the exchange's upstream timer (Exchange.take_timer), due for this from now on: one
            # timer a request rather than one cancelled and another made (both are only ever
            # reset, cancelled or fired on the reactor thread)
            retarget(call, self._fire)
            call.reset(timeout)
            self.call = call
        else:
            self.call = reactor.callLater(timeout, self._fire)

    def _fire(self):
        if self.excused():
            self.call = self.reactor.callLater(self.timeout, self._fire)
            return
        self.call = None
        self.expired()

    def touch(self):
        if self.call is not None and self.call.active():
            self.call.reset(self.timeout)

    def cancel(self):
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        # Neither is called once cancelled: the body protocol they are methods of (which holds
        # this) is let go, so it frees by reference count rather than by the garbage collector
        self.expired = self.excused = _never
