"""JSON read and written for the masker, and the C scans that spare it work.

``loads`` parses with orjson, and with json where orjson refuses (NaN, huge integers); ``dumps``
writes back with the one that read. ``valid`` and ``masked_key`` are hoopy/http/_jsonmask.c's
(optional) where it is built and not turned off (``HOOPY_JSONMASK=python``); the Python code
stays the reference and the fallback.
"""
from __future__ import annotations

import json
import re

import orjson

from hoopy.http.redaction import MaskError
from hoopy.policy.masking import MASK


def _load_valid():
    """hoopy/http/_jsonmask.c's ``valid`` (True: certainly JSON that loads parses), or None."""
    import os

    if os.environ.get("HOOPY_JSONMASK") == "python":
        return None
    try:
        from hoopy.http import _jsonmask
    except ImportError:
        return None
    return getattr(_jsonmask, "valid", None)  # None: a module built from an older _jsonmask.c


# A body the raw path takes (no backslash) is checked by this scan instead of being parsed (the parse
# built a million objects for nothing but to know it parses); False: parsed as before.
valid = _load_valid()


def loads(text):
    """(value, True) parsed by orjson, or (value, False) by json (NaN, huge integers); ValueError."""
    try:
        return orjson.loads(text), True
    except orjson.JSONDecodeError as e:
        if "depth" in str(e):  # orjson stops at 1,024 levels (older releases crashed the process)
            raise MaskError("the JSON body is nested too deeply to be masked")
    try:
        return json.loads(text), False
    except RecursionError:
        raise MaskError("the JSON body is nested too deeply to be masked")


def dumps(value, fast: bool) -> bytes:
    if fast:
        try:
            return orjson.dumps(value)
        except (orjson.JSONEncodeError, TypeError):
            pass
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


MASKED_KEY = re.compile(re.escape(MASK) + r'[^"]*"\s*:')  # what masked_key_py tells, the reference
# The same search in linear time: the run after a mask stops at the next mask (the last mask of a run
# reaches the quote the first one would; "[REDACTED]" cannot overlap itself). The regex above read
# the rest of a quoted run again from every mask in it: a string of 200,000 masked addresses held
# the thread for minutes.
_MASKED_KEY_LINEAR = re.compile(re.escape(MASK) + r'(?:[^"\[]|\[(?!' + re.escape(MASK[1:]) + r'))*+"\s*:')
assert MASK == "[REDACTED]"  # the regex above is written for a mask of this shape


def masked_key_py(text: str) -> bool:
    """Whether ``MASKED_KEY.search(text)`` finds a mask that ends a key (in linear time)."""
    return _MASKED_KEY_LINEAR.search(text) is not None


def _load_masked_key():
    if valid is None:
        return masked_key_py
    from hoopy.http import _jsonmask

    c = getattr(_jsonmask, "masked_key", None)
    if c is None:
        return masked_key_py  # a module built from an older _jsonmask.c
    return lambda text: c(text, MASK)


masked_key = _load_masked_key()
