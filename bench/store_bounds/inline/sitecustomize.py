# Bound experiment (NOT a design: it blocks the reactor on the disk): the event log's record written
# by the reactor thread itself, no writer thread and no hand-off either way. What removing both thread
# hand-offs of a statement's decision would give at most (an asynchronous write, io_uring or AIO, would
# keep the reactor free and get close to this). Trailing events ride with the next decision; the index
# into SQLite runs on the reactor too, when due.
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
        import time
        self._last_sig = time.monotonic()

    def append(self, event, session=None, approval=None, expect_state=None):
        from twisted.internet.defer import Deferred
        d = Deferred()
        data = m.canonical_json(event.data)
        self._items.append((m._clean_event(event), data, m._clean_row(session), m._clean_row(approval),
                            expect_state, d))
        batch = []
        self._take(batch)
        self._write(batch, False)
        return d

    def append_trailing(self, event):
        self._items.append((m._clean_event(event), m.canonical_json(event.data), None, None, None, None))

    def stop(self):
        from twisted.internet.defer import succeed
        if self._items:
            batch = []
            self._take(batch)
            self._write(batch, False)
        self._close()
        return succeed(None)

    sys.stderr.write("store bound: inline (the reactor writes the event log)\n")
    B._start_writer = _start_writer
    B.append = append
    B.append_trailing = append_trailing
    B.stop = stop


on_import(("hoopy.audit.writer",), _patch)
