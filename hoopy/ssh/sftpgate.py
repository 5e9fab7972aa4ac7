"""The SFTP requests of one channel, judged by path before they reach the upstream.

Each request that names a file (open, opendir, stat, remove, rename, mkdir, rmdir, setstat,
symlink, link, readlink) is judged on the path the *upstream* resolves it to: the gateway asks
the upstream itself (SFTP REALPATH, with an id of its own that never reaches the client), so
`..`, symlinks and relative paths (against the upstream user's home) mean what the server makes
of them. A path whose last name does not exist yet (a file to create) is its resolved directory
plus that name; for requests that act on a link itself (lstat, readlink, remove, rename) the
directory is resolved and the name kept. Reads are `sftp read`, changes `sftp write` (both ends
of a rename or link).

What stays open: between this check and the request, something on the upstream host could swap
a directory on the path for a symlink (a race no proxy can close; grant paths whose directories
the upstream user cannot rewrite).

A refused request gets SSH_FX_PERMISSION_DENIED from the gateway, with the reason, and never
goes upstream; a held one waits for a reviewer (the requests after it wait in order).
"""
from __future__ import annotations

import asyncio
import posixpath

from hoopy.policy.rules import Operation, Unit
from hoopy.policy.verdicts import Deny, Hold
from hoopy.ssh import sftp
from hoopy.ssh.awaiting import wait

# The upstream answers its own REALPATH at once; one that does not in this long is broken.
RESOLVE_TIMEOUT = 30.0

_NAMES = {sftp.OPEN: "open", sftp.OPENDIR: "opendir", sftp.STAT: "stat", sftp.LSTAT: "lstat",
          sftp.READLINK: "readlink", sftp.SETSTAT: "setstat", sftp.FSETSTAT: "setstat", sftp.MKDIR: "mkdir",
          sftp.REMOVE: "remove", sftp.RMDIR: "rmdir", sftp.RENAME: "rename", sftp.SYMLINK: "symlink",
          sftp.EXTENDED: "extended"}
_QUIET = (sftp.STAT, sftp.LSTAT, sftp.READLINK)  # looked up, not recorded when allowed


class Refused(Exception):
    pass


class SFTPGate:
    def __init__(self, channel):
        self.ch = channel  # hoopy.ssh.channels.ClientSession
        self.tracker = channel.tracker
        self.waiters: dict[int, asyncio.Future] = {}

    # --- answers from the upstream -----------------------------------------------------------

    def answered(self, mine):
        for rid, answer in mine:
            fut = self.waiters.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(answer)

    async def _ask(self, packet_of):
        rid = self.tracker.own_id()
        fut = asyncio.get_running_loop().create_future()
        self.waiters[rid] = fut
        self.ch.up.write(packet_of(rid))
        try:
            return await asyncio.wait_for(fut, RESOLVE_TIMEOUT)
        finally:
            self.waiters.pop(rid, None)

    async def realpath(self, path: str) -> str | None:
        got = await self._ask(lambda rid: sftp.realpath_request(rid, path))
        return got if isinstance(got, str) else None

    async def missing(self, path: str) -> bool:
        """Is there nothing at all at path, not even a link (SFTP LSTAT: no such file)?"""
        return await self._ask(lambda rid: sftp.lstat_request(rid, path)) == sftp.NO_SUCH_FILE

    async def resolve(self, path: str, follow: bool) -> str | None:
        if follow:
            got = await self.realpath(path)
            if got is not None:
                return got
            # The server cannot resolve it. A name that is not there yet (a server whose REALPATH
            # wants the file to exist) is created in its directory: judge that. But a link it
            # cannot resolve (longer than its REALPATH follows, dangling) the kernel may still
            # follow, elsewhere: not judged, refused.
            if not await self.missing(path):
                return None
        parent, name = sftp.split_parent(path)
        if name in ("", ".", ".."):
            return await self.realpath(path)
        base = await self.realpath(parent)
        if base is None:
            return None
        return posixpath.join(base, name)

    # --- one request -------------------------------------------------------------------------

    async def handle(self, req: sftp.Request):
        """Judge, record and forward one request (or answer it here). Raises on a store failure."""
        session = self.ch.session
        if req.refuse is not None:
            # On the record like any refusal (the event), and answered here.
            op = Operation("ssh", f"sftp.{req.access}", f"sftp {_NAMES.get(req.type, req.type)}",
                           (Unit("refused", req.refuse),), {"paths": [sftp.display(p) for p, _ in req.paths]})
            decision = await wait(session.decide(op))
            return self.answer(req, sftp.PERMISSION_DENIED, f"hoopy: refused: {decision.reason}")
        if req.access is None:
            if req.action is not None:
                await wait(session.event(req.action.kind, "ok", **req.action.data))
            self.ch.up.write(req.pkt)
            return
        resolved = []
        for path, follow in req.paths:
            got = await self.resolve(path, follow)
            if got is None:
                return self.answer(req, sftp.NO_SUCH_FILE,
                                   f"hoopy: {sftp.display(path)!r} does not resolve on the upstream")
            resolved.append(got)
        kind = f"sftp.{req.access}"
        subjects: list[str | None] = list(resolved) if resolved else [req.handle_path]  # None: unknown
        name = _NAMES.get(req.type, f"request {req.type}")
        if req.type == sftp.EXTENDED and req.action is not None:
            name = req.action.data.get("name") or req.action.kind.split(".", 1)[1]
        shown = [sftp.display(s) for s in subjects]
        text = f"sftp {name} " + " ".join(str(s) for s in shown)
        # Rules match the exact path (key); people and the record read it shown (subject).
        op = Operation("ssh", kind, text, tuple(Unit(kind, d, key=s) for s, d in zip(subjects, shown)),
                       {"request": name, "paths": [sftp.display(p) for p, _ in req.paths],
                        "resolved": [sftp.display(r) for r in resolved]})
        j = session.judge(op)
        if j.outcome != "allow":
            decision = await wait(session.decide(op))
            if isinstance(decision, Hold):
                self.ch._notice(f"hoopy: {text} is held for approval {decision.id}; "
                                f"waiting for a reviewer (hoopy approve {decision.id})")
                decision = await wait(decision.resolution)
            if isinstance(decision, Deny):
                return self.answer(req, sftp.PERMISSION_DENIED, f"hoopy: refused: {decision.reason}")
            rule = decision.rule
        else:
            rule = j.rule
        if req.type == sftp.OPEN and resolved:
            self.tracker.opened(req.rid, resolved[0])
        if req.action is not None:
            data = dict(req.action.data)
            if resolved and resolved != [p for p, _ in req.paths]:
                data["resolved"] = sftp.display(resolved[0]) if len(resolved) == 1 else [sftp.display(r) for r in resolved]
            data["rule"] = rule
            await wait(session.event(req.action.kind, "ok", **data))
        elif req.type not in _QUIET:
            await wait(session.event("sftp.request", "ok", request=name, paths=[sftp.display(r) for r in resolved],
                                      rule=rule))
        if self.ch.up is not None and not self.ch.closed:
            self.ch.up.write(req.pkt)

    def answer(self, req: sftp.Request, code: int, message: str):
        assert req.rid is not None  # only INIT has none, and it is never judged
        self.tracker.refused(req.rid)
        if not self.ch.closed:
            self.ch._deliver(sftp.status(req.rid, code, message), None)

