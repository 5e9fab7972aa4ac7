"""stdio MCP servers that hoopy starts: one per hoopy session, with only the environment
the connection gives (never the gateway's own, which holds secrets), optionally as
another user, at most ``max_children`` at once, stopped when the session ends.

Placeholders in ``env`` give a child credentials of ``acts_as`` that live as long as
it does: ``{token}`` (a bearer token, also a PostgreSQL password) and
``{ssh_key_file}`` (a private key file, 0600, in a directory only the child's user can
read, removed when the child ends). Operations made with them are linked to this child's
tool calls exactly (hoopy.causal).
"""
from __future__ import annotations

import os
import pwd
import shutil
import tempfile

from twisted.logger import Logger

from hoopy.config import Secret
from hoopy.mcp.channels import StdioChannel

log = Logger()


class ChildLimit(Exception):
    pass


class Child:
    def __init__(self, channel, credential_id, tmpdir):
        self.channel = channel
        self.credential_id = credential_id
        self.tmpdir = tmpdir


class Children:
    def __init__(self, gateway, connection, hint):
        self.gateway = gateway
        self.connection = connection
        self.settings = connection.settings
        self.hint = hint
        self.live: set = set()

    def spawn(self) -> Child:
        s = self.settings
        if len(self.live) >= s.max_children:
            raise ChildLimit(f"{len(self.live)} MCP server processes are running (max_children)")
        uid = gid = None
        home = None
        if s.run_as:
            pw = pwd.getpwnam(s.run_as)
            uid, gid, home = pw.pw_uid, pw.pw_gid, pw.pw_dir
        needs_key = any(isinstance(v, str) and "{ssh_key_file}" in v for v in s.env.values())
        needs_token = any(isinstance(v, str) and "{token}" in v for v in s.env.values())
        cred = None
        tmpdir = None
        values = {}
        if needs_key or needs_token:
            cred = self.gateway.identities.issue(s.acts_as, s.credential_lifetime)
            values["{token}"] = cred.token
            if needs_key:
                tmpdir = tempfile.mkdtemp(prefix="hoopy-mcp-")
                path = os.path.join(tmpdir, "id_ed25519")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(cred.private_key)
                if uid is not None and gid is not None:  # both set by run_as
                    os.chown(tmpdir, uid, gid)
                    os.chown(path, uid, gid)
                values["{ssh_key_file}"] = path
        env = {}
        for name, value in s.env.items():
            if isinstance(value, Secret):
                env[name] = value.value
            else:
                for p, v in values.items():
                    value = value.replace(p, v)
                env[name] = value
        argv = list(s.command)
        exe = argv[0]
        if os.sep not in exe:
            # Found on the gateway's PATH (a program name is configuration, not a secret);
            # the child's own environment stays exactly what ``env`` says.
            found = shutil.which(exe, path=env.get("PATH") or os.environ.get("PATH"))
            if found is None:
                self._cleanup(cred, tmpdir)
                raise ChildLimit(f"cannot find the program {exe!r}")
            argv[0] = found
        child = Child(None, cred.id if cred else None, tmpdir)

        def exited(channel):
            self.live.discard(child)
            self._cleanup(cred, tmpdir)

        channel = StdioChannel(self.gateway.reactor, argv, env, self.settings.max_message, self.hint,
                               uid=uid, gid=gid,
                               cwd=tmpdir or (home if home and os.path.isdir(home) else "/"), on_exit=exited)
        child.channel = channel
        try:
            channel.open()
        except Exception as e:
            self._cleanup(cred, tmpdir)
            raise ChildLimit(f"cannot start the MCP server: {e}")
        self.live.add(child)
        log.info("mcp {conn}: started {argv} (pid {pid})", conn=self.connection.name, argv=argv[0],
                 pid=channel.pid)
        return child

    def _cleanup(self, cred, tmpdir):
        if cred is not None:
            self.gateway.identities.revoke(cred.id)
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
