"""Play an asciicast v2 recording in this terminal (what ``hoopy replay`` uses)."""
from __future__ import annotations

import json
import sys
import time


def play(path, speed: float = 1.0, idle_limit: float | None = 2.0, out=None):
    out = out or sys.stdout
    last = 0.0
    with open(path, encoding="utf-8") as f:
        header = json.loads(f.readline())
        if header.get("version") != 2:
            raise ValueError(f"{path}: not an asciicast v2 recording")
        for line in f:
            if not line.strip():
                break
            try:
                t, code, data = json.loads(line)
            except ValueError:
                break  # a torn last line of a crashed session: play what is whole
            if code != "o":
                continue
            pause = max(0.0, t - last)
            if idle_limit is not None:
                pause = min(pause, idle_limit)
            if speed > 0 and pause:
                time.sleep(pause / speed)
            last = t
            out.write(data)
            out.flush()
