# Bound experiment: the writer of events-only appends in a child process (storechild.py), over a
# socketpair with JSON lines; sessions and approvals stay on the writer thread. Not a real store.
import sys, os
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))  # (the repository)
from bench.import_hook import on_import  # noqa: E402
import json, socket, subprocess, itertools  # noqa: E402,E401
def _patch(m):
    if m.__name__ != "hoopy.audit.writer":
        return
    B = m.BatchedStore
    oa, ot = B.append, B.append_trailing
    st = {}
    def start(self):
        if "sock" in st:
            return st["sock"]
        a, b = socket.socketpair()
        path = getattr(self, "_where", None) or self.path
        st["child"] = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "storechild.py"), str(b.fileno()), path, self.gateway],
                                       pass_fds=[b.fileno()], env={**os.environ, "HOOPY_SRC": os.environ.get("HOOPY_SRC", "/work/main")})
        b.close(); a.setblocking(False)
        st["sock"] = a; st["ids"] = itertools.count(); st["waiting"] = {}; st["buf"] = b""
        loop = self.reactor._asyncioEventloop
        def readable():
            data = a.recv(1 << 20)
            buf = st["buf"] + data
            *lines, st["buf"] = buf.split(b"\n")
            for l in lines:
                i, seq, h = l.split()
                dd, ev = st["waiting"].pop(int(i))
                dd.callback(m.StoredEvent(int(seq), h.decode(), ev))
        loop.add_reader(a.fileno(), readable)
        return a
    def send(self, ev, dref):
        a = start(self)
        data = m.canonical_json(ev.data)
        i = None
        if dref is not None:
            i = next(st["ids"]); st["waiting"][i] = (dref, ev)
        a.send((json.dumps([i, ev.time_us, ev.session, ev.identity, ev.connection, ev.protocol, ev.peer, ev.kind, ev.outcome, data]) + "\n").encode())
    def append(self, event, session=None, approval=None, expect_state=None):
        if session is not None or approval is not None or expect_state is not None or self._thread is None:
            return oa(self, event, session, approval, expect_state)
        dref = m.Deferred()
        send(self, event, dref)
        return dref
    def append_trailing(self, event):
        if self._thread is None:
            return ot(self, event)
        send(self, event, None)
    B.append = append; B.append_trailing = append_trailing
on_import(("hoopy.audit.writer",), _patch)
