"""SCRAM-SHA-256 (RFC 5802/7677) both ways, sans-IO, and MD5 for old upstreams.

The gateway terminates SCRAM with the client (checking the identity's
token against its stored verifier) and is a SCRAM client upstream with the
injected credential: a relayed exchange could not survive TLS termination
nor hide the upstream password.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from hoopy.identity import ScramVerifier

MECH = "SCRAM-SHA-256"
MECH_PLUS = "SCRAM-SHA-256-PLUS"


class ScramError(Exception):
    pass


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _attrs(msg: str) -> dict:
    out: dict = {}
    for part in msg.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError(f"malformed SCRAM attribute {part[:10]!r}")
        out.setdefault(part[0], part[2:])
    return out


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def tls_server_end_point(cert_der: bytes, sig_hash: str | None = None) -> bytes:
    """RFC 5929 channel binding data: the certificate hashed with its
    signature hash, MD5 and SHA-1 upgraded to SHA-256."""
    name = (sig_hash or "sha256").lower()
    if name in ("md5", "sha1") or name not in hashlib.algorithms_available:
        name = "sha256"
    return hashlib.new(name, cert_der).digest()


class ScramServer:
    """One exchange against one verifier. A verifier of None (unknown user)
    runs the same exchange against a made-up one and always fails, so an
    attacker cannot tell a wrong user from a wrong password."""

    def __init__(self, verifier: ScramVerifier | None, cbind_data: bytes | None, user_hint: str = "",
                 alternates: dict | None = None):
        # alternates: credential id -> verifier with the same salt and iterations (per-child
        # tokens, hoopy.identity.Directory.issue); ``credential`` says which one proved itself.
        self.alternates = {k: v for k, v in (alternates or {}).items()
                           if verifier is not None and (v.salt, v.iterations) == (verifier.salt, verifier.iterations)}
        if verifier is None and alternates:
            first = next(iter(alternates.values()))
            verifier = ScramVerifier(first.iterations, first.salt, secrets.token_bytes(32), secrets.token_bytes(32))
            self.alternates = dict(alternates)
            self.ok_user = True
            self._own_ok = False
        else:
            self.ok_user = verifier is not None
            self._own_ok = True
        self.credential = None
        if verifier is None:
            salt = hashlib.sha256(b"hoopy-unknown:" + user_hint.encode() + _SECRET).digest()[:16]
            verifier = ScramVerifier(4096, salt, secrets.token_bytes(32), secrets.token_bytes(32))
        self.v = verifier
        self.cbind_data = cbind_data  # None when the transport has no TLS
        self.nonce = None

    def first(self, mech: str, data: bytes) -> bytes:
        """client-first-message -> server-first-message."""
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ScramError("client-first-message is not UTF-8")
        gs2, sep, rest = text.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not sep or not sep2:
            raise ScramError("malformed client-first-message")
        if mech == MECH_PLUS:
            if not gs2.startswith("p=") or self.cbind_data is None:
                raise ScramError("SCRAM-SHA-256-PLUS needs channel binding over TLS")
            if gs2[2:] != "tls-server-end-point":
                raise ScramError(f"unsupported channel binding {gs2[2:]!r}")
        elif mech == MECH:
            if gs2 == "y" and self.cbind_data is not None:
                # The client could bind but thinks we cannot: a downgrade.
                raise ScramError("channel binding downgrade")
            if gs2 not in ("n", "y"):
                raise ScramError("channel binding requested with SCRAM-SHA-256")
        else:
            raise ScramError(f"unsupported mechanism {mech!r}")
        self.gs2_header = f"{gs2},{authzid},"
        self.mech = mech
        a = _attrs(bare)
        if "r" not in a or "m" in a:
            raise ScramError("client nonce missing")
        self.client_first_bare = bare
        self.nonce = a["r"] + _b64(secrets.token_bytes(18))
        self.server_first = f"r={self.nonce},s={_b64(self.v.salt)},i={self.v.iterations}"
        return self.server_first.encode()

    def final(self, data: bytes) -> bytes:
        """client-final-message -> server-final-message, or ScramError."""
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ScramError("client-final-message is not UTF-8")
        without_proof, sep, proof = text.rpartition(",p=")
        if not sep:
            raise ScramError("client proof missing")
        a = _attrs(without_proof)
        expect_c = self.gs2_header.encode()
        if self.mech == MECH_PLUS:
            if self.cbind_data is None:  # first() takes PLUS only over TLS: never binds to nothing
                raise ScramError("no channel binding data for SCRAM-SHA-256-PLUS")
            expect_c += self.cbind_data
        try:
            c = base64.b64decode(a.get("c", ""), validate=True)
            proof_b = base64.b64decode(proof, validate=True)
        except ValueError:
            raise ScramError("malformed base64")
        if not hmac.compare_digest(c, expect_c):
            raise ScramError("channel binding mismatch")
        if a.get("r") != self.nonce:
            raise ScramError("nonce mismatch")
        auth_msg = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        matched = None
        for cred, v in ((None, self.v), *self.alternates.items()):
            sig = hmac.digest(v.stored_key, auth_msg, "sha256")
            client_key = _xor(proof_b, sig)
            if len(proof_b) == 32 and hmac.compare_digest(hashlib.sha256(client_key).digest(), v.stored_key):
                if cred is not None or self._own_ok:
                    matched = (cred, v)
        if matched is None or not self.ok_user:
            raise ScramError("password authentication failed")
        self.credential = matched[0]
        return f"v={_b64(hmac.digest(matched[1].server_key, auth_msg, 'sha256'))}".encode()


_SECRET = secrets.token_bytes(32)


class ScramClient:
    def __init__(self, password: str, mechanisms, cbind_data: bytes | None):
        if MECH_PLUS in mechanisms and cbind_data is not None:
            self.mech, self.gs2 = MECH_PLUS, "p=tls-server-end-point,,"
        elif MECH in mechanisms:
            self.mech = MECH
            self.gs2 = "y,," if cbind_data is not None else "n,,"
            cbind_data = None
        else:
            raise ScramError(f"upstream offers no supported SASL mechanism: {list(mechanisms)}")
        self.cbind = cbind_data or b""
        self.password = password
        self.cnonce = _b64(secrets.token_bytes(18))
        self.first_bare = f"n=,r={self.cnonce}"

    def first(self) -> bytes:
        return (self.gs2 + self.first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        try:
            sf = server_first.decode()
        except UnicodeDecodeError:
            raise ScramError("server-first-message is not UTF-8") from None
        a = _attrs(sf)
        if not a.get("r", "").startswith(self.cnonce) or len(a["r"]) == len(self.cnonce):
            raise ScramError("upstream nonce mismatch")
        if "s" not in a or "i" not in a:
            raise ScramError("server-first-message without salt or iteration count")
        try:
            salt = base64.b64decode(a["s"], validate=True)
            iterations = int(a["i"])
        except ValueError:
            raise ScramError("malformed salt or iteration count") from None
        if not 1 <= iterations <= 10_000_000:
            raise ScramError(f"iteration count {iterations} out of range")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored = hashlib.sha256(client_key).digest()
        c = _b64(self.gs2.encode() + self.cbind)
        without_proof = f"c={c},r={a['r']}"
        auth_msg = f"{self.first_bare},{sf},{without_proof}".encode()
        proof = _xor(client_key, hmac.digest(stored, auth_msg, "sha256"))
        self.expected = hmac.digest(hmac.digest(salted, b"Server Key", "sha256"), auth_msg, "sha256")
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify(self, server_final: bytes):
        try:
            a = _attrs(server_final.decode())
            if "e" in a:
                raise ScramError(f"upstream refused: {a['e']}")
            signature = base64.b64decode(a.get("v", ""), validate=True)
        except (UnicodeDecodeError, ValueError):
            raise ScramError("malformed server-final-message") from None
        if not hmac.compare_digest(signature, self.expected):
            raise ScramError("upstream server signature is wrong")


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode() + b"\0"
