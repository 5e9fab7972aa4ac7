"""What every protocol raises when its upstream cannot be reached or used."""
from __future__ import annotations


class UpstreamError(Exception):
    """The upstream refused, failed or could not be reached. ``code`` is the
    protocol's own word for it where it has one (a PostgreSQL SQLSTATE)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        # Set where the upstream answered but cannot be used (for `hoopy check --connect`):
        # it was reached, and ``key`` is the setting that says why.
        self.reached = False
        self.key: str | None = None
