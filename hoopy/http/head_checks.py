"""A connection's memo of the checks its last request head passed (``HeadChecks``).

Kept by the client connection (server.py) and read by the exchange (exchange.py): the same head
again on that connection skips the checks of its shape and reuses the upstream headers and the
record's made for it (``ex``, below, is that exchange: exchange.py's ``Exchange``, not imported
here so that the two do not import each other). What may be kept, and what never is, is said on
the class.
"""
from __future__ import annotations


class HeadChecks:
    """What the checks of one request head found, all of them passed: kept by its connection, so
    the next request there with exactly the same method, target and header lines (a keep-alive
    client sending the same request again) is not checked again. Everything here is a pure function
    of those bytes, of the connection's peer, and of the site's masker and header plan (compared by
    identity): the token, the normalized path and query, and (made on first use) the upstream
    request's headers and the record's. Nothing that changes with time or state is kept (who the
    token names, the session, the policy's judgement: each request asks again). Never a WebSocket
    upgrade, never the status path. Nothing here is changed once made: readers get copies."""

    __slots__ = ("method", "uri", "lines", "peer", "masker", "plan", "token", "path", "query", "upstream", "record",
                 "request")

    def __init__(self, ex, token: str):
        self.method, self.uri, self.lines, self.peer = ex.method_b, ex.uri, ex.lines, ex.peer_host
        self.masker, self.plan = ex.site.masker, ex.site.header_plan
        self.token, self.path, self.query = token, ex.path, ex.query
        self.upstream: list | None = None
        self.record: dict | None = None
        # the upstream request's head bytes and its Connection: close, for a request without a body
        # (the upstream client's ``head``: made of the path, query and upstream headers above)
        self.request: tuple[bytes, bool] | None = None

    def same(self, ex) -> bool:
        site = ex.site
        return (self.lines == ex.lines and self.uri == ex.uri and self.method == ex.method_b
                and self.peer == ex.peer_host and self.masker is site.masker and self.plan is site.header_plan)
