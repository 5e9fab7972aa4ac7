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
    )
