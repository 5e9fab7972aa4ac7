"""Parsing of the human units the config uses: durations ("5m") and sizes ("1MiB")."""
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_FACTOR = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_FACTOR = {
    None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
    "gb": 1000**3, "gib": 1024**3,
}


def parse_duration(value) -> float:
    """Seconds from ``30``, ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"2d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"30s\" or \"5m\"")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_FACTOR[m.group(2)]
    raise ValueError(f"{value!r} is not a duration such as \"30s\" or \"5m\"")


def parse_size(value) -> int:
    """Bytes from ``1024``, ``"64KiB"``, ``"1MiB"``, ``"2GB"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as \"1MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(m.group(1)) * _SIZE_FACTOR[unit]
    raise ValueError(f"{value!r} is not a size such as \"64KiB\" or \"1MiB\"")


def format_duration(seconds: float) -> str:
    """The way the config writes it: "15m", "1h30m", "45s"."""
    s = int(round(seconds))
    if s <= 0:
        return "0s"
    out = ""
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= n:
            out += f"{s // n}{unit}"
            s %= n
    return out
