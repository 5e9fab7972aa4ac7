"""The postgres connection service (being built: see its issue)."""


def make_service(gateway, connection):
    raise SystemExit(f"hoopy: connections.{connection.name}: type \"postgres\" is not implemented yet")
