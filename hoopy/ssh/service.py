"""The ssh connection service (being built: see its issue)."""


def make_service(gateway, connection):
    raise SystemExit(f"hoopy: connections.{connection.name}: type \"ssh\" is not implemented yet")
