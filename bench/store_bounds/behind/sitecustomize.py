# Bound experiment: events-only batches durable in a preallocated O_DSYNC journal, handed back, THEN
# inserted into SQLite (synchronous=NORMAL). Not a real store (no recovery).
import sys, os
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))  # (the repository)
from bench.import_hook import on_import  # noqa: E402
import json  # noqa: E402
_fd = None
_off = [4096]
def _journal(rows):
    global _fd
    if _fd is None:
        path = os.environ.get("NOOP_JOURNAL", "/work/behind.journal")
        f = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(f, bytes(256 << 20)); os.fsync(f); os.close(f)
        _fd = os.open(path, os.O_WRONLY | os.O_DSYNC)
    b = json.dumps(rows).encode()
    b += bytes(-len(b) % 4096)
    os.pwrite(_fd, b, _off[0]); _off[0] += len(b)
def _patch(m):
    if m.__name__ != "hoopy.audit.store":
        return
    S = m.SQLiteEventStore
    oc = S._connect
    def conn(self):
        db = oc(self)
        db.execute("PRAGMA synchronous=NORMAL")
        return db
    S._connect = conn
    def _write(self, batch, sign=False):
        if self._db is None or not self._only_events(batch) or os.environ.get("BEHIND_OFF"):
            return orig_write(self, batch, sign)
        captured = []
        class Cap:
            pass
        d = self.dialect
        head = self._head or d.head(self._db.cursor()) or (0, m.GENESIS)
        real = d.insert_events
        d.insert_events = lambda cur, rows: captured.extend(rows)
        try:
            results, self._head, _, signed = m.write_batch(d, None, batch, head, self.gateway, self.signer, sign)
        finally:
            del d.insert_events
        _journal(captured)
        self._committed(len(results), signed)
        self._to_reactor(self._written, results)
        real(self._db.cursor(), captured)
        self._moved()
    orig_write = S._write
    S._write = _write
on_import(("hoopy.audit.store",), _patch)
