"""The SQLite state store's writer and the file at its path: a file deleted, renamed away or
replaced under a running gateway is noticed at the next commit (those events are refused, never
reported durable into a file nobody reads) and every later append is refused, saying so, until the
gateway is started again (a replaced file may have taken the old connection's WAL; an empty store
made silently would start a second chain); what was written before stays readable. And a writer that cannot keep up refuses appends past ``max_pending`` instead of
queueing them without end."""
from __future__ import annotations

import os
import shutil
import sqlite3
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from hoopy.audit.events import Event
from hoopy.audit.store import SQLiteEventStore, StoreError


def ev(i: int) -> Event:
    return Event("operation", "allowed", session="s1", identity="agent", connection="db",
                 protocol="postgres", peer="127.0.0.1:1", data={"text": f"SELECT {i}"})


def rows(path) -> list:
    """The events as a reader sees them (the file, and what the event log holds past it)."""
    from hoopy.audit.store import SQLiteReader

    r = SQLiteReader(path)
    try:
        return [tuple(x) for x in r.db.execute("SELECT seq, data FROM events ORDER BY seq")]
    finally:
        r.close()


def chained(path) -> bool:
    """Every event's prev is the hash before it (GENESIS first)."""
    from hoopy.audit.chain import GENESIS

    db = sqlite3.connect(path)
    try:
        prev = GENESIS
        for p, h in db.execute("SELECT prev, hash FROM events ORDER BY seq"):
            if p != prev:
                return False
            prev = h
        return True
    finally:
        db.close()


async def refused(d) -> str:
    try:
        await d
    except StoreError as e:
        return str(e)
    raise AssertionError("the append was reported durable")


@pytest.fixture
def store(tmp_path):
    s = SQLiteEventStore(str(tmp_path / "state" / "hoopy.db"), "gw", reactor)
    s.start()
    yield s
    if s._stopped is None:
        pytest_twisted.blockon(s.stop())


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("how", ["deleted", "renamed away", "replaced", "directory removed"])
async def test_a_file_moved_under_the_store_refuses_every_append_after(store, tmp_path, how):
    path = store.path
    for i in range(3):
        await store.append(ev(i))
    if how == "deleted":
        os.unlink(path)
    elif how == "renamed away":
        os.rename(path, path + ".old")
    elif how == "directory removed":
        shutil.rmtree(tmp_path / "state")
    else:
        other = SQLiteEventStore(str(tmp_path / "other.db"), "gw2", reactor)
        other.start()
        await other.append(ev(100))
        await other.stop()
        os.replace(str(tmp_path / "other.db"), path)
    why = await refused(store.append(ev(3)))
    assert store.path in why and ("gone" in why or "replaced" in why) and "restart" in why
    assert not store.healthy
    assert "restart" in await refused(store.append(ev(4)))  # and so on, until a restart
    store.append_trailing(ev(5))  # (logged as lost)
    await store.stop()
    if how == "renamed away":
        # what was durable went with the file (its WAL checkpointed into it at the close), and the
        # refused one too (committed there before the move was seen: recorded, its operation refused)
        # (then the event saying the file was lost to the store, seq 4 refused: tests/test_store_file_attacks.py)
        assert [d for _, d in rows(path + ".old")][:4] == [f'{{"text":"SELECT {i}"}}' for i in range(4)]
        assert os.path.getsize(path + "-wal") == 0  # nothing left for the next file at the path
        assert chained(path + ".old")
    if how == "replaced":
        assert [d for _, d in rows(path)] == ['{"text":"SELECT 100"}']
        assert chained(path)
    if how in ("deleted", "directory removed"):
        assert not os.path.exists(path)  # nothing made behind the operator's back


@pytest_twisted.ensureDeferred
async def test_appends_past_max_pending_are_refused_not_queued(store):
    store.max_pending = 10
    hold = threading.Event()
    write = store._write

    def stalled(batch, sign=False):  # a disk that hangs
        hold.wait(30)
        write(batch, sign)

    store._write = stalled
    first = store.append(ev(0))  # taken by the writer, stalled in its write
    for _ in range(200):
        if not store._items:
            break
        await defer.succeed(None)
        await deferLater(0.005)
    waiting = [store.append(ev(i)) for i in range(1, 11)]  # ten wait in the queue
    why = await refused(store.append(ev(11)))
    assert "behind" in why
    store.append_trailing(ev(12))  # logged, not queued
    assert len(store._items) == 10
    hold.set()
    await first
    for d in waiting:
        await d
    assert len(rows(store.path)) == 11


def deferLater(seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_relative_path_is_held_where_it_was_opened(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = SQLiteEventStore("rel.db", "gw", reactor)
    s.start()
    try:
        await s.append(ev(0))
        monkeypatch.chdir("/")  # (a daemon's chdir after the store opened)
        await s.append(ev(1))
        assert s.healthy
    finally:
        await s.stop()
    assert len(rows(str(tmp_path / "rel.db"))) == 2
