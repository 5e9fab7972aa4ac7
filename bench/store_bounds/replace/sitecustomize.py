# Bound experiment: the store's SQL and file check replaced (NOT a real store).
import sys, os
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))  # (the repository)
from bench.import_hook import on_import  # noqa: E402
import json  # noqa: E402
MODE = os.environ.get("NOOP_MODE", "sql")
_fd = None
def _journal(self, cur, rows):
    global _fd
    if _fd is None:
        _fd = os.open(os.environ.get("NOOP_JOURNAL", "/work/noop.journal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(_fd, "".join(json.dumps(r) + "\n" for r in rows).encode())
    os.fdatasync(_fd)
_off = [0]
def _dsync(self, cur, rows):
    global _fd
    if _fd is None:
        path = os.environ.get("NOOP_JOURNAL", "/work/noop.journal")
        f = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(f, bytes(256 << 20)); os.fsync(f); os.close(f)
        _fd = os.open(path, os.O_WRONLY | os.O_DSYNC | (os.O_DIRECT if os.environ.get("NOOP_DIRECT") else 0))
    b = "".join(json.dumps(r) + "\n" for r in rows).encode()
    b += bytes(-len(b) % 4096)
    if os.environ.get("NOOP_DIRECT"):
        import mmap
        m = mmap.mmap(-1, len(b)); m.write(b); b = m
    os.pwrite(_fd, b, _off[0]); _off[0] += len(b)
def _patch(m):
    if m.__name__ == "hoopy.audit.writer" and MODE == "both":
        orig = m.Dialect.insert_events
        def both(self, cur, rows):
            orig(self, cur, rows)
            _dsync(self, cur, rows)
        m.Dialect.insert_events = both
        return
    if m.__name__ == "hoopy.audit.store" and MODE == "both":
        oc = m.SQLiteEventStore._connect
        def conn(self):
            db = oc(self)
            db.execute("PRAGMA synchronous=" + os.environ.get("NOOP_SYNC", "NORMAL"))
            if os.environ.get("NOOP_NOCKPT"):
                db.execute("PRAGMA wal_autocheckpoint=0")
            return db
        m.SQLiteEventStore._connect = conn
        return
    if m.__name__ == "hoopy.audit.writer":
        m.Dialect.insert_events = (lambda self, cur, rows: None) if MODE == "sql" else _journal if MODE == "journal" else _dsync
    if m.__name__ == "hoopy.audit.store":
        m.SQLiteEventStore._moved = lambda self: None
on_import(("hoopy.audit.writer", "hoopy.audit.store"), _patch)
