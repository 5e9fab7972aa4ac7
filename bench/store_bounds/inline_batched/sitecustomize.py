# Bound experiment (NOT a design: it blocks the reactor on the disk): the event log's record built and
# written by the reactor thread, once per turn of the loop for everything appended in that turn (group
# commit on the reactor). No writer thread, no GIL shared with one. What a writer that never takes the
# GIL (the record built on the reactor, the pwrite in C or io_uring) would give at most at -c 8.
import sys, os
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))  # (the repository)
from bench.import_hook import on_import  # noqa: E402


def _patch(m):
    if m.__name__ != "hoopy.audit.writer":
        return
    B = m.BatchedStore

    def _start_writer(self):
        self._to_reactor = lambda f, *a: f(*a)
        self._thread = object()  # (append checks only that it is set)
        self._flush_call = None
        import time
        self._last_sig = time.monotonic()

    def _flush(self):
        self._flush_call = None
        while self._items:
            batch = []
            self._take(batch)
            self._write(batch, False)

    def _schedule(self, delay):
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(delay, self._flush)
        elif delay == 0 and self._flush_call.getTime() > self.reactor.seconds():
            self._flush_call.reset(0)

    def append(self, event, session=None, approval=None, expect_state=None):
        from twisted.internet.defer import Deferred
        d = Deferred()
        data = m.canonical_json(event.data)
        self._items.append((m._clean_event(event), data, m._clean_row(session), m._clean_row(approval),
                            expect_state, d))
        _schedule(self, 0)
        return d

    def append_trailing(self, event):
        self._items.append((m._clean_event(event), m.canonical_json(event.data), None, None, None, None))
        _schedule(self, self.linger)

    def stop(self):
        from twisted.internet.defer import succeed
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        _flush(self)
        self._close()
        return succeed(None)

    sys.stderr.write("store bound: inline, batched (the reactor writes the event log once a loop turn)\n")
    B._start_writer = _start_writer
    B.append = append
    B.append_trailing = append_trailing
    B.stop = stop
    B._flush = _flush


on_import(("hoopy.audit.writer",), _patch)
