"""Ed25519 signatures over the chain head (NIST AU-9, AU-10).

The hash chain alone is unkeyed: whoever can write the store can delete an
event and recompute every link after it. Each gateway node therefore holds
its own Ed25519 key (``[gateway] signing_key = "file:..."``) and signs the
chain head as it writes; a re-linked chain no longer matches what was signed,
and only the public half (``<key file>.pub``) is needed to check it.

What is signed, frozen like the chain's bytes (tests/test_chain_vectors.py)::

    "hoopy-chain-head-v1\\n" + str(seq) + "\\n" + hash + "\\n"      (UTF-8)

The hash covers every event before it, so one valid signature vouches for
the whole chain up to that event. A signature is stored in the signed event's
``signature`` column as ``ed25519:<key id>:<base64>``; the key id is the
first 16 hex digits of the SHA-256 of the raw 32-byte public key, and a
public key is written ``ed25519:<base64 of the raw 32 bytes>``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PREFIX = "ed25519:"
HEAD_DOMAIN = "hoopy-chain-head-v1\n"


class SigningKeyError(Exception):
    """A signing or public key that cannot be used; the message says why."""


def head_message(seq: int, hash_: str) -> bytes:
    return f"{HEAD_DOMAIN}{int(seq)}\n{hash_}\n".encode()


def key_id(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:16]


def public_text(raw_public: bytes) -> str:
    return PREFIX + base64.b64encode(raw_public).decode()


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@attrs.frozen
class PublicKey:
    raw: bytes
    key: Ed25519PublicKey = attrs.field(eq=False, repr=False)

    @property
    def id(self) -> str:
        return key_id(self.raw)

    @property
    def text(self) -> str:
        return public_text(self.raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.key.verify(signature, message)
            return True
        except InvalidSignature:
            return False


def parse_public(text: str) -> PublicKey:
    """``ed25519:BASE64`` (what ``hoopy audit key`` prints), a PEM public key,
    or an OpenSSH ``ssh-ed25519 AAAA...`` line."""
    text = text.strip()
    try:
        if text.startswith(PREFIX):
            raw = base64.b64decode(text[len(PREFIX):].split()[0], validate=True)
            if len(raw) != 32:
                raise ValueError("an Ed25519 public key is 32 bytes")
            return PublicKey(raw, Ed25519PublicKey.from_public_bytes(raw))
        if text.startswith("-----BEGIN"):
            pub = serialization.load_pem_public_key(text.encode())
        elif text.startswith("ssh-ed25519 "):
            pub = serialization.load_ssh_public_key(text.encode())
        else:
            raise ValueError("expected ed25519:BASE64 (as `hoopy audit key` prints it)")
        if not isinstance(pub, Ed25519PublicKey):
            raise ValueError("not an Ed25519 key")
        return PublicKey(_raw(pub), pub)
    except (ValueError, binascii.Error, IndexError) as e:
        raise SigningKeyError(f"not an Ed25519 public key: {e}") from None


def read_public(arg: str) -> PublicKey:
    """A --key argument: the key itself, or a file holding it."""
    arg = arg.strip()
    if not arg.startswith((PREFIX, "ssh-ed25519 ", "-----BEGIN")):
        p = Path(os.path.expanduser(arg[5:] if arg.startswith("file:") else arg))
        try:
            arg = p.read_text()
        except OSError as e:
            raise SigningKeyError(f"{arg}: neither a key (ed25519:...) nor a readable file: "
                            f"{e.strerror or e}") from None
    return parse_public(arg)


def format_signature(kid: str, signature: bytes) -> str:
    return f"{PREFIX}{kid}:{base64.b64encode(signature).decode()}"


def parse_signature(text: str) -> tuple[str, bytes]:
    """(key id, signature bytes); raises ValueError on anything else."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise ValueError("not an ed25519 signature")
    kid, _, b64 = text[len(PREFIX):].partition(":")
    sig = base64.b64decode(b64, validate=True)
    if len(kid) != 16 or len(sig) != 64:
        raise ValueError("malformed")
    return kid, sig


class Signer:
    """This node's private key."""

    def __init__(self, private: Ed25519PrivateKey, path: Path | None = None):
        self._private = private
        self.path = path
        raw = _raw(private.public_key())
        self.public = PublicKey(raw, private.public_key())
        self.key_id = self.public.id

    @classmethod
    def generate(cls) -> "Signer":
        return cls(Ed25519PrivateKey.generate())

    def sign(self, seq: int, hash_: str) -> str:
        return format_signature(self.key_id, self._private.sign(head_message(seq, hash_)))


class Keyring:
    """The public keys an auditor trusts, one per gateway node."""

    def __init__(self, keys=()):
        self.keys = {k.id: k for k in keys}

    def __bool__(self):
        return bool(self.keys)

    def check(self, seq: int, hash_: str, signature: str) -> tuple[str, str | None]:
        """("ok" | "unknown" | "bad" | "malformed", key id)."""
        try:
            kid, sig = parse_signature(signature)
        except (ValueError, binascii.Error):
            return "malformed", None
        key = self.keys.get(kid)
        if key is None:
            return "unknown", kid
        return ("ok" if key.verify(sig, head_message(seq, hash_)) else "bad"), kid


def public_path(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def load_signer(path: Path) -> tuple[Signer, bool]:
    """This node's key from ``path``, created if the file does not exist and its
    folder does. Returns (signer, created). The public half is kept beside it
    as ``<path>.pub``; a .pub that names another key is refused."""
    path = Path(path)
    pub_path = public_path(path)
    created = False
    if not path.exists():
        if not path.parent.is_dir():
            raise SigningKeyError(f"signing_key: {path.parent} does not exist; a key is created only in an "
                            "existing folder (is the path mistyped?)")
        if pub_path.exists():
            raise SigningKeyError(f"signing_key: {path} is missing but {pub_path.name} is there: the key was "
                            "moved or deleted; restore it, or remove the .pub to start a new key on purpose")
        signer = Signer.generate()
        pem = signer._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_signer(path)  # another process made it just now
        except OSError as e:
            raise SigningKeyError(f"signing_key: cannot create {path}: {e.strerror or e}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        signer.path = path
        created = True
    else:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SigningKeyError(f"signing_key: cannot read {path}: {e.strerror or e}") from None
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise SigningKeyError(f"signing_key: {path} is not an unencrypted PEM private key: {e}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise SigningKeyError(f"signing_key: {path} is not an Ed25519 key")
        signer = Signer(private, path)
    text = signer.public.text + "\n"
    if pub_path.exists():
        try:
            have = parse_public(pub_path.read_text())
        except (OSError, SigningKeyError) as e:
            raise SigningKeyError(f"signing_key: {pub_path} cannot be read as a public key: {e}") from None
        if have.raw != signer.public.raw:
            raise SigningKeyError(f"signing_key: {pub_path} holds another key ({have.id}) than {path.name} "
                            f"({signer.key_id}): readers would check against the wrong key")
    else:
        try:
            tmp = pub_path.with_name(pub_path.name + ".tmp")
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            tmp.replace(pub_path)
        except OSError as e:
            raise SigningKeyError(f"signing_key: cannot write {pub_path}: {e.strerror or e}") from None
    return signer, created
