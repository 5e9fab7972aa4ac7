"""Where one statement's time goes, as timestamps: put on the gateway's path by bench/pg_instr.py
``--trace`` (as ``sitecustomize``, so hoopy's code is not changed to be measured).

Each probe wraps one method of hoopy's own when its module is first imported and appends
(perf_counter_ns, tag) to a list, written to $HOOPY_TRACE_OUT every 5,000 entries (a gateway
stopped by a signal may lose the last of them; the reader only takes complete statements):

    cin   ClientProtocol.dataReceived entered        (a statement's bytes from the client)
    app   BatchedStore.append returned               (the decision handed to the writer)
    wake  BatchedStore._take entered                 (the writer thread awake)
    w0/w1 SQLiteEventStore._insert_only in / out     (the INSERT and its fsync), or
          EventLog.write in / out                    (the event log's O_DSYNC record)
    back  BatchedStore._written entered              (the reactor has the batch back)
    dec   ClientProtocol._decided_or_fail entered    (the verdict at the connection)
    s0/s1 write_now in / out                         (a send: to upstream after dec, to the client after uin)
    fwd   ClientProtocol._decided_or_fail returned
    uin   UpstreamProtocol.dataReceived entered      (the reply)
    cout  ClientProtocol.upstream_data returned      (the reply sent on)

Each probe costs about a microsecond, inside the interval it ends.
"""
from __future__ import annotations

import functools
import os
import time

from bench.import_hook import on_import  # (the repository is on the path: bench/pg_instr.py puts it there)

_OUT = os.environ.get("HOOPY_TRACE_OUT", "trace.txt")
_T: list = []
_now = time.perf_counter_ns


def _mark(tag: str) -> None:
    _T.append((_now(), tag))
    if len(_T) >= 5000:
        with open(_OUT, "a") as f:
            f.write("".join(f"{t} {g}\n" for t, g in _T))
        _T.clear()


def _around(owner, name: str, before: str | None, after: str | None) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def probe(*args, **kwargs):
        if before:
            _mark(before)
        try:
            return fn(*args, **kwargs)
        finally:
            if after:
                _mark(after)

    setattr(owner, name, probe)


def _patch(module) -> None:
    name = module.__name__
    if name == "hoopy.postgres.protocol":
        c = module.ClientProtocol
        _around(c, "dataReceived", "cin", None)
        _around(c, "_decided_or_fail", "dec", "fwd")
        _around(c, "upstream_data", None, "cout")
        _around(module, "write_now", "s0", "s1")  # (the name protocol.py calls)
    elif name == "hoopy.postgres.upstream":
        _around(module.UpstreamProtocol, "dataReceived", "uin", None)
    elif name == "hoopy.audit.writer":
        _around(module.BatchedStore, "append", None, "app")
        _around(module.BatchedStore, "_take", "wake", None)
        _around(module.BatchedStore, "_written", "back", None)
    elif name == "hoopy.audit.store":
        _around(module.SQLiteEventStore, "_insert_only", "w0", "w1")
    elif name == "hoopy.audit.eventlog":
        _around(module.EventLog, "write", "w0", "w1")


_WANTED = {"hoopy.postgres.protocol", "hoopy.postgres.upstream", "hoopy.audit.writer", "hoopy.audit.store",
           "hoopy.audit.eventlog"}


on_import(_WANTED, _patch)
