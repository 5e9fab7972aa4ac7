# Prototype: the store's writer in a child process (bound experiment, not a real store).
import json, os, select, socket, sqlite3, sys
sys.path.insert(0, os.environ["HOOPY_SRC"])
from hoopy.audit.chain import GENESIS, NO_WRITES, link_v2
from hoopy.audit.writer import Dialect
fd = int(sys.argv[1]); path = sys.argv[2]; gateway = sys.argv[3]
s = socket.socket(fileno=fd)
db = sqlite3.connect(path, timeout=5, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
d = Dialect("?")
buf = b""; pending = []; waited = False
while True:
    r, _, _ = select.select([s], [], [], 0.005 if pending else None)
    if r:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for l in lines:
            m = json.loads(l)
            pending.append(m)
            if m[0] is not None:
                waited = True
        if not waited:
            continue
    if not pending:
        continue
    cur = db.cursor()
    cur.execute("BEGIN IMMEDIATE")
    seq, prev = d.head(cur) or (0, GENESIS)
    rows, out = [], []
    for m in pending:
        seq += 1
        row = [seq, m[1], gateway] + m[2:9] + [m[9], NO_WRITES]
        h = link_v2(prev, row)
        row += (prev, h); rows.append(row); prev = h
        if m[0] is not None:
            out.append(f"{m[0]} {seq} {h}\n")
    d.insert_events(cur, rows)
    cur.execute("COMMIT")
    if out:
        s.sendall("".join(out).encode())
    pending = []; waited = False
