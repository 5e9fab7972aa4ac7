"""Bind parameters as recorded: text decoded, binary decoded by type or shown as hex."""
from __future__ import annotations

import struct

MAX_PARAM_RECORDED = 1_000


def decode_param(value, fmt: int, type_oid: int):
    if value is None:
        return None
    if fmt == 0:
        text = value.decode("utf-8", "replace")
        return text if len(text) <= MAX_PARAM_RECORDED else text[:MAX_PARAM_RECORDED] + "..."
    try:
        if type_oid == 23 and len(value) == 4:
            return struct.unpack("!i", value)[0]
        if type_oid == 20 and len(value) == 8:
            return struct.unpack("!q", value)[0]
        if type_oid == 21 and len(value) == 2:
            return struct.unpack("!h", value)[0]
        if type_oid == 16 and len(value) == 1:
            return value != b"\0"
        if type_oid == 701 and len(value) == 8:
            return struct.unpack("!d", value)[0]
        if type_oid == 700 and len(value) == 4:
            return struct.unpack("!f", value)[0]
        if type_oid in (25, 1043, 1042, 19, 114):
            return value.decode("utf-8", "replace")[:MAX_PARAM_RECORDED]
    except (struct.error, UnicodeDecodeError):
        pass
    h = value[:MAX_PARAM_RECORDED // 2].hex()
    return "\\x" + h + ("..." if len(value) > MAX_PARAM_RECORDED // 2 else "")
