"""The session's search path, kept known: names are judged with the session's real
search path, read upstream at connect (scope.SCOPE_QUERY, by the adapter) and again
after any statement that may have changed it. Until then it is unknown: a statement
waits for the new one, or, in the middle of an extended-protocol batch where no query
can be slipped in, an unqualified name is refused. A mixin of ``ClientSide``
(hoopy/postgres/client_side.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from hoopy.postgres import codec, wire
from hoopy.postgres.pipeline import Expected, Judging, Kind, Skip, State
from hoopy.postgres.scope import SCOPE_QUERY, Scope

_SKIP_NO = Skip.NO  # (as a global: see client_side.py)


class SearchPath:
    # What it shares with the ClientSide it is mixed into (set in ClientSide.__init__).
    state: State
    skip: Skip
    scope: Scope
    scope_due: bool
    scope_reading: Expected | None
    path_dirty: bool
    ext_open: bool
    tx_status: bytes
    pending: Judging | None

    if TYPE_CHECKING:  # ClientSide's, called from here
        def forward(self, t: bytes, p: bytes) -> None: ...

        def expect(self, e: Expected) -> None: ...

        def judge(self, j: Judging, read_path: bool = True) -> None: ...

        def pump(self) -> None: ...

    def search_path_may_change(self) -> None:
        self.scope = Scope.unknown(self.scope)
        self.scope_due = True
        self.path_dirty = True  # a transaction's end may change it back

    def read_scope_if_due(self) -> None:
        """Send SCOPE_QUERY upstream if the path must be read and the upstream is between
        statements (after a Query or a Sync, before a Parse)."""
        if not self.scope_due or self.scope_reading is not None or self.ext_open or self.skip is not _SKIP_NO:
            return
        if self.tx_status == wire.IN_FAILED_TRANSACTION:
            # Every query fails until the transaction ends (ROLLBACK needs no name looked up):
            # read it after that.
            return
        e = Expected(Kind.SCOPE)
        e.target = []  # its result sets, rows of text
        self.scope_reading = e
        self.scope_due = False
        self.forward(wire.QUERY, codec.cstr(SCOPE_QUERY))
        self.expect(e)

    def scope_read(self, e: Expected) -> None:
        """SCOPE_QUERY's ReadyForQuery: the path is known again; a statement waiting for it goes on."""
        self.scope_reading = None
        if e.error is None:
            self.scope = Scope.from_results(e.target)
            if self.tx_status == wire.IDLE:
                self.path_dirty = False
        else:
            # An aborted transaction (or another failure): read it again before a later
            # statement; this one is judged with the path unknown (an unqualified name is
            # refused), never by asking again at once, which could go on for ever.
            self.scope = Scope.unknown(self.scope)
            self.scope_due = True
        if self.state is State.READING_PATH:
            self.state = State.READY
            j, self.pending = self.pending, None
            assert j is not None  # READING_PATH: judge() left it pending
            self.judge(j, read_path=e.error is None)
            self.pump()
