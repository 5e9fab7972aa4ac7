"""The working directory as the walk follows it: a path, None (not known), or one of the marks
below. Each statement gives the cwd after it, if it succeeded and if it failed."""
from __future__ import annotations


_UNJUDGED = object()  # a flow that cannot be followed: the cwd after it is unknown
BOTTOM = object()  # unreachable (after `exit`)


def _merge(a, b):
    if a is BOTTOM:
        return b
    if b is BOTTOM:
        return a
    if a is _UNJUDGED or b is _UNJUDGED:
        return None
    return a if a == b else None
