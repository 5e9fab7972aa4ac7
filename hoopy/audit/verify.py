"""``hoopy audit verify``: the whole chain, then every sealed recording."""
from __future__ import annotations

import json
from pathlib import Path

import attrs

from hoopy.audit.asciicast import sha256_file
from hoopy.audit.chain import Break, verify_rows


@attrs.define
class Result:
    ok: bool
    events: int = 0
    head_seq: int = 0
    head_hash: str = ""
    recordings: int = 0
    problem: str | None = None

    def as_dict(self) -> dict:
        return attrs.asdict(self)

    def __str__(self) -> str:
        if self.ok:
            return (f"ok: {self.events} events, chain intact up to event {self.head_seq} "
                    f"({self.head_hash[:16]}), {self.recordings} sealed recording(s) match their hash")
        return f"broken: {self.problem}"


def verify(reader, recordings_dir: Path) -> Result:
    sealed = []  # (seq, session, file name, sha256)

    def rows():
        for row in reader.events():
            if row["kind"] == "recording.sealed":
                sealed.append(row)
            yield row

    try:
        count, last, head = verify_rows(rows())
    except Break as b:
        return Result(False, problem=str(b))
    res = Result(True, count, last, head)
    for row in sealed:
        data = json.loads(row["data"])
        name = data.get("path")
        if not name or "/" in name or name.startswith("."):
            return Result(False, count, last, head, res.recordings,
                          f"event {row['seq']}: recording path {name!r} is not a file name")
        path = recordings_dir / name
        try:
            digest, size = sha256_file(path)
        except OSError as e:
            return Result(False, count, last, head, res.recordings,
                          f"recording {name} (sealed by event {row['seq']}): missing: {e.strerror or e}")
        if digest != data.get("sha256") or size != data.get("size"):
            return Result(False, count, last, head, res.recordings,
                          f"recording {name} (sealed by event {row['seq']}): changed since it was sealed "
                          f"(sha256 {digest[:16]}..., recorded {str(data.get('sha256'))[:16]}...)")
        res.recordings += 1
    return res
