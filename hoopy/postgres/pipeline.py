"""The client side's vocabulary: its states, the replies it is owed, the
statements it waits to have judged, and the commands it gives its adapter.

A client may pipeline many messages before it reads a reply; the server
answers each in order. ``Expected`` is one reply the client is owed, in a
queue in the order the messages went upstream (or were answered by the
gateway itself: ``SYNTHETIC``).
"""
from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from hoopy.postgres.classify import Classified
    from hoopy.postgres.copy import BinaryCopyMasker
    from hoopy.postgres.rowplan import CopyMask, RowPlan


class State(enum.Enum):
    READY = "ready"  # reading the client's messages
    PARSING = "parsing"  # a long statement is classified off the reactor thread
    READING_PATH = "reading path"  # the session's search path is read again upstream before judging
    JUDGING = "judging"  # paused on the policy's decision
    HELD = "held"  # paused on a reviewer (an approve rule)
    CLOSED = "closed"
    ERROR = "error"  # a protocol error: FATAL sent, closing


class Skip(enum.Enum):
    """Where the extended protocol's error handling stands (everything up to Sync is skipped)."""
    NO = "no"
    REFUSED = "refused"  # the gateway refused a message: it skips the client's messages up to Sync
    UPSTREAM = "upstream"  # the server failed one: it ignores (and answers nothing) up to Sync


class Kind(enum.Enum):
    QUERY = "query"  # a simple Query: replies up to ReadyForQuery
    PARSE = "parse"
    BIND = "bind"
    CLOSE = "close"
    DESCRIBE_STATEMENT = "describe statement"  # ParameterDescription, then RowDescription or NoData
    DESCRIBE_PORTAL = "describe portal"
    DESCRIBE_FOR_MASKING = "describe for masking"  # the gateway's own Describe: not forwarded
    EXECUTE = "execute"
    SYNC = "sync"
    ABORT = "abort"  # a stand-in query that fails, so a refusal aborts the transaction
    ABORT_SYNC = "abort sync"  # the same in the extended protocol: Execute of no portal, Sync
    SYNTHETIC = "synthetic"  # the gateway's own reply, sent when it reaches the head
    SCOPE = "scope"  # the gateway's own query for the search path (hoopy/postgres/scope.py): not forwarded

    # Enum's own __hash__ is a Python function (hash of the name); members are singletons equal
    # only to themselves, so identity hashes alike, in C (replies.py looks a handler up by kind
    # for every reply).
    __hash__ = object.__hash__


STATEMENTS = (Kind.QUERY, Kind.EXECUTE)
# The client's bytes read ahead (in the reader, or before the upstream is ready) while a
# statement is judged: past it, the adapter stops reading from the client.
PIPELINE_BUFFER = 1024 * 1024


class Expected:
    """One reply the client is owed."""

    __slots__ = ("kind", "raw", "sql", "classified", "plan", "rows", "start", "tag", "error", "target", "copy",
                 "forget")

    def __init__(self, kind: Kind, raw: bytes | None = None, sql: str | None = None, classified=None):
        self.kind = kind
        self.raw = raw  # SYNTHETIC and ABORT: the bytes the client sees
        self.sql = sql
        self.classified: Classified | None = classified
        self.plan: RowPlan | CopyMask | None = None  # while a result (or a COPY's lines) is masked
        self.rows = 0
        self.start = time.monotonic()
        self.tag: str | None = None
        self.error: str | None = None  # SQLSTATE of a failed statement
        # PARSE/BIND/CLOSE: a name's undo; DESCRIBE_FOR_MASKING: (execute, portal); SCOPE: the rows read
        self.target: Any = None
        self.copy: BinaryCopyMasker | None = None  # during a binary COPY TO STDOUT
        # Statement names (None: all) the server drops once this completes (DEALLOCATE,
        # DISCARD ALL, a Close): forgotten only then, never on a refused or skipped one.
        self.forget: tuple[str | None, ...] = ()


class Portal:
    """A bound portal as the gateway judged it."""

    __slots__ = ("sql", "params", "result_formats", "judged", "plan", "classified", "executed", "forget")

    def __init__(self, sql: str, params, result_formats=()):
        self.sql = sql
        self.params = params
        self.result_formats = result_formats
        self.judged = False
        self.plan: RowPlan | None = None
        self.classified: Classified | None = None
        self.executed = False  # an Execute went upstream (a later one resumes a suspended portal)
        self.forget: tuple[str | None, ...] = ()  # statement names its DEALLOCATE drops, once its Execute completes


@attrs.define
class Judging:
    """A statement waiting for its decision: what to send once it is allowed."""
    kind: Kind  # QUERY, PARSE, BIND or EXECUTE
    sql: str
    params: list | None = None  # decoded, for the record
    raw_params: tuple | None = None  # a Bind's exact bytes (None for a Query or a cursor's Execute)
    message: bytes = b""  # the client's message payload (Bind, Execute)
    portal: str = ""  # (for a Parse: the statement's name)
    portal_info: Portal | None = None
    classified: Classified | None = None
    types: tuple = ()  # a Parse's parameter type OIDs


# --- commands to the adapter ----------------------------------------------------

@attrs.define
class Decide:
    """Ask the session; answer with ``decided``. ``refusal``: a refusal that needs no rule.
    Not frozen, as Trailing: one is made every statement; nothing changes one once made."""
    operation: object
    refusal: str | None = None


@attrs.frozen
class Check:
    """Could the policy allow this (recording nothing if so)? Answer with ``decided``:
    Allow, or Deny once the refusal is recorded. ``refusal``: one that needs no rule."""
    operation: object
    refusal: str | None = None


@attrs.frozen
class Classify:
    """Classify this SQL off the reactor thread (``classify.PARSES``); answer with ``classified``."""
    sql: str
    scope: object = None  # the session's search path (scope.Scope) to judge names with


@attrs.frozen
class Record:
    """An event, written in order with the others (nothing waits for it)."""
    kind: str
    outcome: str | None
    data: dict


@attrs.define
class Trailing:
    """An event that rides with the next flush (a statement's completion). Not frozen: one is
    made every statement, and a frozen attrs class sets each field through object.__setattr__
    (twice the cost); nothing changes one once made."""
    kind: str
    outcome: str | None
    data: dict


@attrs.frozen
class Redacted:
    count: int
    data: dict


@attrs.frozen
class Attribute:
    values: dict


@attrs.frozen
class CancelUpstream:
    pass


@attrs.frozen
class Close:
    """Close both connections (after sending what is queued)."""
    reason: str
