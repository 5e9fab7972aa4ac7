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


def parse(t) -> SSHSettings:
    host_key = t.file_path("host_key")
    if host_key is None:
        host_key = t.base_dir / f"ssh_host_ed25519_key.{t.key.split('.', 1)[-1]}"
    return SSHSettings(
        upstream=t.client_endpoint("upstream", required=True),
        upstream_user=t.string("upstream_user", required=True),
        upstream_key=t.secret("upstream_key", required=True),
        upstream_known_hosts=t.secret("upstream_known_hosts", required=True),
        host_key=host_key,
        exec_output_limit=t.size("exec_output_limit", default=64 * 1024),
        connect_timeout=t.duration("connect_timeout", default=10.0),
        login_timeout=t.duration("login_timeout", default=30.0),
    )
