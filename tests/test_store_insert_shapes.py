"""The writer's INSERT writes ``signature`` as SQL NULL for every row but a signed batch's last one
(hoopy/audit/writer.py Dialect.insert_events: binding None costs sqlite3 an adapter lookup). A batch
longer than one INSERT (``rows_per_insert``), signed and not, with and without session rows, must
come back exactly: every event, in order, the chain intact, the signature on the last row only,
and it verifies."""
import sqlite3

import pytest_twisted
from twisted.internet import defer

from hoopy.audit.chain import verify_rows
from hoopy.audit.events import Event
from hoopy.audit.signing import Signer
from hoopy.audit.store import SQLiteEventStore
from hoopy.audit.writer import Dialect


def _rows(path):
    c = sqlite3.connect(path)
    c.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in c.execute("SELECT * FROM events ORDER BY seq")]
    finally:
        c.close()


def test_the_two_shapes():
    d = Dialect("?")
    plain, signed = d._insert_sql(2), d._insert_sql(2, True)
    assert plain.count("?") == 2 * 14 and plain.count("NULL") == 2
    assert signed.count("?") == 14 + 15 and signed.count("NULL") == 1
    assert signed.endswith("?)") and plain.endswith("NULL)")


@pytest_twisted.ensureDeferred
async def test_a_long_batch_signed_and_not(tmp_path):
    path = tmp_path / "s.db"
    s = SQLiteEventStore(path, "n")
    signer = s.signer = Signer.generate()
    s.sign_interval = 3600.0
    s.start()
    n = Dialect.rows_per_insert * 2 + 5
    try:
        # Appended in one reactor turn: the writer takes them as one batch (max_batch 512).
        ds = [s.append(Event(kind="k", data={"i": i})) for i in range(n)]
        ds.append(s.append(Event(kind="session.end", session="x"), session={"id": "x", "ended_us": 1}))
        first = await defer.gatherResults(ds)
        ds = [s.append(Event(kind="k", data={"i": i})) for i in range(n)]  # no SIGN_KINDS: unsigned
        second = await defer.gatherResults(ds)
    finally:
        await s.stop()
    rows = _rows(path)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert [(st.seq, st.hash) for st in first + second] == [(r["seq"], r["hash"]) for r in rows[:2 * n + 1]]
    assert [r["data"] for r in rows[:n]] == [f'{{"i":{i}}}' for i in range(n)]
    verify_rows(rows)
    signed = [r for r in rows if r["signature"] is not None]
    # The session.end batch's last row (and the heartbeat the stop may add), nothing else.
    assert signed and signed[0]["seq"] == n + 1 and signed[0]["kind"] == "session.end"
    assert all(r["kind"] == "audit.heartbeat" for r in signed[1:])
    assert signed[0]["signature"] == signer.sign(n + 1, signed[0]["hash"])
