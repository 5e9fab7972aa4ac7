"""The keys of a ``type = "ssh"`` connection."""
from __future__ import annotations

from pathlib import Path

import attrs


@attrs.frozen
class SSHSettings:
    upstream: str
    upstream_user: str
    upstream_key: object  # hoopy.config.Secret: the gateway's private key upstream
    upstream_known_hosts: object  # Secret: known_hosts lines for the upstream
    host_key: Path  # the gateway's own host key, generated if absent
    exec_output_limit: int = 64 * 1024  # bytes of an exec's output kept in its event
    connect_timeout: float = 10.0  # seconds to reach and authenticate to the upstream
    login_timeout: float = 30.0  # seconds a client has to authenticate
    ciphers: tuple = ()  # what clients may choose; the client's order decides
    # The login shell of upstream_user, which runs every exec line: the grammar lines are judged
    # in (bash or sh; any other: every line is unjudgeable). `hoopy check --connect` verifies it.
    upstream_shell: str = "bash"


# OpenSSH clients pick chacha20-poly1305 first when offered; asyncssh runs it
# as two passes with Python between them, so the gateway offers AES (one
# OpenSSL call per packet) unless the operator lists chacha20 in `ciphers`.
DEFAULT_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr",
                   "aes256-ctr")


def _ciphers(t) -> tuple:
    from asyncssh.encryption import get_encryption_algs

    names = t.strings("ciphers", default=DEFAULT_CIPHERS)
    known = {a.decode() for a in get_encryption_algs()}
    for i, name in enumerate(names):
        if name not in known:
            t.problem(f"ciphers[{i}]", f"unknown cipher {name!r} (known: {', '.join(sorted(known))})")
    if not names:
        t.problem("ciphers", "needs at least one cipher")
    return tuple(names)


def _check_key(t, key, secret):
    import asyncssh

    if secret is None:
        return
    try:
        asyncssh.import_private_key(secret.value)
    except asyncssh.KeyEncryptionError:
        t.problem(key, "the private key has a passphrase; the gateway needs it without one")
    except (asyncssh.KeyImportError, ValueError) as e:
        t.problem(key, f"is not a private key: {e}")


def _check_known_hosts(t, key, secret):
    import asyncssh

    if secret is None:
        return
    lines = [ln for ln in secret.value.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        t.problem(key, "has no host key lines: every upstream host key would be refused")
        return
    try:
        asyncssh.import_known_hosts(secret.value + "\n")
    except (ValueError, asyncssh.KeyImportError) as e:
        t.problem(key, f"is not a known_hosts file: {e}")


def _endpoint(parse, desc: str):
    """The endpoint ``desc`` names, or None when it does not parse."""
    try:
        return parse(None, desc)
    except Exception:  # an endpoint plugin's parser raises anything; the core check names a bad string
        return None


def _check_endpoints(t, listen, upstream):
    from twisted.internet.endpoints import clientFromString, serverFromString

    ep = _endpoint(serverFromString, listen) if listen else None
    if ep is not None and not isinstance(getattr(ep, "_port", None), int):
        t.problem("listen", "ssh listens on tcp:PORT[:interface=ADDR] only")
    ep = _endpoint(clientFromString, upstream) if upstream else None
    if ep is not None and not getattr(ep, "_host", None):
        t.problem("upstream", "ssh connects upstream with tcp:host=HOST:port=PORT only")


def parse(t) -> SSHSettings:
    host_key = t.file_path("host_key")
    if host_key is None:
        host_key = t.base_dir / f"ssh_host_ed25519_key.{t.key.split('.', 1)[-1]}"
    s = _parse(t, host_key)
    _check_key(t, "upstream_key", s.upstream_key)
    _check_known_hosts(t, "upstream_known_hosts", s.upstream_known_hosts)
    if host_key.exists():
        try:
            import asyncssh

            asyncssh.read_private_key(str(host_key))
        except Exception as e:
            t.problem("host_key", f"{host_key} is not a readable private key without passphrase: {e}")
    _check_endpoints(t, t.data.get("listen"), s.upstream)
    return s


def _parse(t, host_key) -> SSHSettings:
    return SSHSettings(
        upstream=t.client_endpoint("upstream", required=True),
        upstream_user=t.string("upstream_user", required=True),
        upstream_key=t.secret("upstream_key", required=True),
        upstream_known_hosts=t.secret("upstream_known_hosts", required=True),
        host_key=host_key,
        exec_output_limit=t.size("exec_output_limit", default=64 * 1024),
        connect_timeout=t.duration("connect_timeout", default=10.0),
        login_timeout=t.duration("login_timeout", default=30.0),
        ciphers=_ciphers(t),
        upstream_shell=_shell(t),
    )


def _shell(t) -> str:
    from hoopy.ssh.shell import dialect_of

    shell = t.string("upstream_shell", default="bash")
    if not shell or shell.strip() != shell or "\n" in shell:
        t.problem("upstream_shell", "names the upstream user's login shell: bash, sh, or a path to one")
        return "bash"
    if dialect_of(shell) is None:
        # Allowed (an honest description of the upstream), but nothing it runs can be judged.
        pass
    return shell
