"""Trailing events wait in the store's own deque, not the writer's queue: the writer looks there
when something it must write arrives, and within ``linger`` of its last batch; only a trailing
event that finds it idle wakes it. None may be lost, none may wait past a linger or two, and the
chain keeps the order the reactor appended them in."""
import sqlite3
import threading
import time

import pytest_twisted
from twisted.internet import defer, reactor, task

from hoopy.audit.chain import verify_rows
from hoopy.audit.events import Event
from hoopy.audit.store import SQLiteEventStore


def _rows(path):
    c = sqlite3.connect(path)
    c.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in c.execute("SELECT * FROM events ORDER BY seq")]
    finally:
        c.close()


async def _until(cond, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "not written in time"
        await task.deferLater(reactor, 0.005, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_lone_trailing_event_is_written_within_linger(tmp_path):
    """An idle writer (disarmed) is woken by a trailing event; one after a batch (armed) is
    taken at the end of the writer's linger without any wake-up."""
    path = tmp_path / "s.db"
    s = SQLiteEventStore(path, "n")
    s.start()
    try:
        s.append_trailing(Event(kind="t", data={"i": 0}))  # the writer idle: woken
        await _until(lambda: len(_rows(path)) == 1)
        await s.append(Event(kind="d", data={"i": 1}))
        s.append_trailing(Event(kind="t", data={"i": 2}))  # just after a batch: armed
        await _until(lambda: len(_rows(path)) == 3)
        # Long idle (disarmed again), then one more: still written.
        await task.deferLater(reactor, 0.05, lambda: None)
        assert not s._armed
        s.append_trailing(Event(kind="t", data={"i": 3}))
        await _until(lambda: len(_rows(path)) == 4)
    finally:
        await s.stop()
    rows = _rows(path)
    assert [r["kind"] for r in rows] == ["t", "d", "t", "t"]
    count, last, _ = verify_rows(rows)
    assert count == last == 4


@pytest_twisted.ensureDeferred
async def test_trailing_events_go_before_the_next_decision_in_append_order(tmp_path):
    path = tmp_path / "s.db"
    s = SQLiteEventStore(path, "n")
    s.start()
    try:
        for i in range(200):
            await s.append(Event(kind="decision", data={"i": i}))
            s.append_trailing(Event(kind="outcome", data={"i": i}))
            if i % 7 == 0:
                await task.deferLater(reactor, 0.006 if i % 2 else 0, lambda: None)  # linger passes, or not
        ds = []
        for i in range(300):  # a burst: many trailing among many decisions
            s.append_trailing(Event(kind="outcome2", data={"i": i}))
            ds.append(s.append(Event(kind="decision2", data={"i": i})))
        await defer.gatherResults(ds)
    finally:
        await s.stop()  # what still trails is written before the store closes
    rows = _rows(path)
    got = [(r["kind"], int(r["data"].split(":")[1].rstrip("}"))) for r in rows]
    want = [(k, i) for i in range(200) for k in ("decision", "outcome")]
    want += [(k, i) for i in range(300) for k in ("outcome2", "decision2")]
    assert got == want
    count, last, _ = verify_rows(rows)
    assert count == last == 1000


@pytest_twisted.ensureDeferred
async def test_trailing_events_racing_the_writer_disarming_are_never_lost(tmp_path, monkeypatch):
    """A trailing event appended while the writer disarms (its linger just ran out with nothing
    there) must still be written: the writer looks once more after disarming, and an append that
    finds it disarmed wakes it. Many short gaps around the linger make the race likely."""
    path = tmp_path / "s.db"
    s = SQLiteEventStore(path, "n")
    monkeypatch.setattr(s, "linger", 0.001)
    s.start()
    n = 0
    try:
        for i in range(400):
            await s.append(Event(kind="d", data={"i": i}))
            await task.deferLater(reactor, (i % 5) * 0.0005, lambda: None)
            s.append_trailing(Event(kind="t", data={"i": i}))
            n += 2
        await _until(lambda: len(_rows(path)) == n, seconds=10)
    finally:
        await s.stop()
    assert len(_rows(path)) == n


@pytest_twisted.ensureDeferred
async def test_a_trailing_flood_is_written_in_batches_and_all_of_it(tmp_path):
    path = tmp_path / "s.db"
    s = SQLiteEventStore(path, "n")
    s.start()
    try:
        for i in range(3000):
            s.append_trailing(Event(kind="t", data={"i": i}))
        await _until(lambda: len(_rows(path)) == 3000, seconds=20)
    finally:
        await s.stop()
    assert threading.active_count() >= 1
    count, last, _ = verify_rows(_rows(path))
    assert count == last == 3000
