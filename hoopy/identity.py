"""Identities: every caller is named (NIST AC-2), with its own token or SSH key.

Tokens are kept only as SHA-256 (and a PostgreSQL SCRAM verifier) and
compared in constant time; SSH keys are matched as OpenSSH matches
authorized_keys: by key type and key blob, never by comment.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

import attrs

KINDS = ("agent", "human")
ROLES = ("reviewer", "auditor")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
SCRAM_ITERATIONS = 4096


@attrs.frozen
class ScramVerifier:
    """A PostgreSQL SCRAM-SHA-256 verifier: the format pg_authid keeps."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text: str) -> "ScramVerifier":
        m = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", text.strip())
        if not m:
            raise ValueError("is not a SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey verifier")
        try:
            salt, stored, server = (base64.b64decode(g, validate=True) for g in m.group(2, 3, 4))
        except ValueError:
            raise ValueError("has a part that is not base64")
        if len(stored) != 32 or len(server) != 32:
            raise ValueError("keys must be 32 bytes (SHA-256)")
        return cls(int(m.group(1)), salt, stored, server)

    @classmethod
    def make(cls, password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS):
        salt = salt if salt is not None else secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        return cls(
            iterations, salt, hashlib.sha256(client_key).digest(),
            hmac.digest(salted, b"Server Key", "sha256"),
        )

    def __str__(self) -> str:
        b = lambda v: base64.b64encode(v).decode()  # noqa: E731
        return f"SCRAM-SHA-256${self.iterations}:{b(self.salt)}${b(self.stored_key)}:{b(self.server_key)}"


@attrs.frozen
class SSHKey:
    algorithm: str
    blob: bytes  # the key's wire encoding: what OpenSSH compares
    comment: str

    def matches(self, algorithm: str, blob: bytes) -> bool:
        return hmac.compare_digest(self.blob, blob)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_ssh_key(line: str) -> SSHKey:
    """An OpenSSH public-key line (authorized_keys options before it are refused)."""
    import asyncssh

    try:
        key = asyncssh.import_public_key(line.strip())
    except (asyncssh.KeyImportError, ValueError) as e:
        raise ValueError(f"is not an OpenSSH public key line: {e}")
    parts = line.split(None, 2)
    return SSHKey(key.get_algorithm(), key.public_data, parts[2] if len(parts) > 2 else "")


@attrs.frozen
class Identity:
    name: str
    kind: str
    roles: frozenset
    ssh_keys: tuple
    token_sha256: bytes | None = attrs.field(repr=False)
    token_scram: ScramVerifier | None = attrs.field(repr=False)
    # Set on the identity a per-child credential authenticated as (see Directory.issue):
    # the credential's id, which sessions record and causal links use.
    credential: str | None = None
    # Fixed attribution, recorded on every session of this identity (an MCP server that cannot
    # send HOOPY_MODEL still says which model and server act through it).
    model: str | None = None
    mcp_server: str | None = None

    @property
    def attribution(self) -> dict:
        return {k: v for k, v in (("model", self.model), ("mcp_server", self.mcp_server)) if v}

    @property
    def is_reviewer(self) -> bool:
        return "reviewer" in self.roles

    def check_token(self, token: str) -> bool:
        if self.token_sha256 is None:
            # Still hash, so a missing token costs the same time as a wrong one.
            hmac.compare_digest(hash_token(token), b"\0" * 32)
            return False
        return hmac.compare_digest(hash_token(token), self.token_sha256)

    def check_ssh_key(self, algorithm: str, blob: bytes) -> bool:
        ok = False
        for k in self.ssh_keys:  # no early exit: the time does not say which key
            ok |= k.matches(algorithm, blob)
        return ok

    def public(self) -> dict:
        """What may be shown to an auditor: never the token material."""
        return {
            "name": self.name, "kind": self.kind, "roles": sorted(self.roles),
            "ssh_keys": [f"{k.algorithm} {k.fingerprint} {k.comment}".strip() for k in self.ssh_keys],
            "has_token": self.token_sha256 is not None,
            "has_scram": self.token_scram is not None,
            **self.attribution,
        }


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def new_token() -> str:
    """256 bits from the OS CSPRNG, URL- and shell-safe."""
    return "hpy_" + secrets.token_urlsafe(32)


def parse_identity(name: str, t) -> Identity | None:
    kind = t.string("kind", default="agent", choices=KINDS)
    roles = t.strings("roles")
    for i, r in enumerate(roles):
        if r not in ROLES:
            t.problem(f"roles[{i}]", f"unknown role {r!r} (roles: {', '.join(ROLES)})")
    keys = []
    for i, line in enumerate(t.strings("ssh_keys")):
        try:
            keys.append(parse_ssh_key(line))
        except ValueError as e:
            t.problem(f"ssh_keys[{i}]", str(e))
    digest = None
    hexed = t.string("token_sha256")
    if hexed is not None:
        if _HEX64.match(hexed.lower()):
            digest = bytes.fromhex(hexed)
        else:
            t.problem("token_sha256", "must be 64 hex digits (from `hoopy token new`)")
    scram = None
    text = t.string("token_scram")
    if text is not None:
        try:
            scram = ScramVerifier.parse(text)
        except ValueError as e:
            t.problem("token_scram", str(e))
    fixed = {}
    for key in ("model", "mcp_server"):
        value = t.string(key)
        if value is not None and (not value.strip() or len(value) > 512 or any(ord(c) < 32 for c in value)):
            t.problem(key, "a name of up to 512 characters, without control characters")
            value = None
        fixed[key] = value
    t.finish()
    return Identity(name, kind or "agent", frozenset(roles), tuple(keys), digest, scram, **fixed)


@attrs.frozen
class Credential:
    """A per-child credential: a token and an SSH key that act as ``identity`` until revoked
    or ``expires`` (wall-clock seconds). The private parts are handed to one child only."""

    id: str
    identity: str
    expires: float
    token: str = attrs.field(repr=False)
    token_sha256: bytes = attrs.field(repr=False)
    scram: ScramVerifier = attrs.field(repr=False)
    ssh_key: SSHKey
    private_key: bytes = attrs.field(repr=False)  # OpenSSH format


class Directory:
    """Lookup of identities by name, token or SSH key (and live per-child credentials)."""

    def __init__(self, identities: dict, clock=None):
        import time

        self._by_name = dict(identities)
        self._ephemeral: dict[str, Credential] = {}
        self._salts: dict[str, tuple] = {}  # identity -> (salt, iterations) its SCRAM verifiers share
        self._time = clock or time.time

    # --- per-child credentials ---------------------------------------------------------

    def issue(self, name: str, lifetime: float) -> Credential:
        """A new credential for ``name``, valid until revoked or ``lifetime`` seconds pass."""
        import asyncssh

        base = self._by_name[name]
        if base.token_scram is not None:
            salt, iterations = base.token_scram.salt, base.token_scram.iterations
        else:
            salt, iterations = self._salts.setdefault(name, (secrets.token_bytes(16), SCRAM_ITERATIONS))
        token = new_token()
        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"hoopy per-child credential for {name}")
        pub = key.convert_to_public()
        cred = Credential(
            id="cr-" + secrets.token_hex(6), identity=name, expires=self._time() + lifetime,
            token=token, token_sha256=hash_token(token),
            scram=ScramVerifier.make(token, salt, iterations),
            ssh_key=SSHKey(pub.get_algorithm(), pub.public_data, "hoopy per-child credential"),
            private_key=key.export_private_key("openssh"))
        self._ephemeral[cred.id] = cred
        return cred

    def revoke(self, credential_id: str) -> None:
        self._ephemeral.pop(credential_id, None)

    def live(self, credential_id: str) -> bool:
        """Whether a per-child credential is still good (not revoked, not expired)."""
        c = self._ephemeral.get(credential_id)
        if c is None:
            return False
        if c.expires <= self._time():
            self._ephemeral.pop(credential_id, None)
            return False
        return True

    def _live(self, name: str | None = None):
        now = self._time()
        for c in list(self._ephemeral.values()):
            if c.expires <= now:
                self._ephemeral.pop(c.id, None)
            elif name is None or c.identity == name:
                yield c

    def _as(self, cred: Credential) -> Identity | None:
        base = self._by_name.get(cred.identity)
        return attrs.evolve(base, credential=cred.id) if base is not None else None

    def match_ssh_key(self, name: str, algorithm: str, blob: bytes) -> Identity | None:
        """The identity this key authenticates as ``name`` (with ``credential`` set for a per-child key)."""
        ident = self._by_name.get(name)
        if ident is None:
            return None
        found = None
        for c in self._live(name):  # no early exit: the time does not say which key
            if c.ssh_key.matches(algorithm, blob):
                found = self._as(c)
        if ident.check_ssh_key(algorithm, blob):
            return ident
        return found

    def scram_alternates(self, name: str) -> dict:
        """credential id -> SCRAM verifier of each live per-child token of ``name`` (same salt as its own)."""
        return {c.id: c.scram for c in self._live(name)}

    def get(self, name: str) -> Identity | None:
        return self._by_name.get(name)

    def __iter__(self):
        return iter(self._by_name.values())

    def by_token(self, token: str) -> Identity | None:
        """The identity whose token this is; every identity is compared."""
        digest = hash_token(token)
        found = None
        for ident in self._by_name.values():
            if ident.token_sha256 is not None and hmac.compare_digest(digest, ident.token_sha256):
                found = ident
        if self._ephemeral:
            for c in self._live():
                if hmac.compare_digest(digest, c.token_sha256):
                    found = self._as(c)
        return found

    def authenticate_token(self, name: str, token: str) -> Identity | None:
        ident = self._by_name.get(name)
        if ident is None:
            hmac.compare_digest(hash_token(token), b"\0" * 32)
            return None
        if self._ephemeral:
            digest = hash_token(token)
            for c in self._live(name):
                if hmac.compare_digest(digest, c.token_sha256):
                    return self._as(c)
        return ident if ident.check_token(token) else None
