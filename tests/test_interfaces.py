"""Every zope.interface implementation in hoopy, verified against its interface.

The implementers are found by walking the package, not listed by hand: a new
``@implementer`` without an instance built here fails the test, and each instance
is checked with ``verifyObject`` (methods, their signatures and the attributes
the interface names, on the object as it is built)."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementedBy
from zope.interface.verify import verifyClass, verifyObject

import hoopy

SKIP = ("hoopy.__main__",)


def implementers() -> dict:
    """'module.Class' -> (class, the interfaces it declares), for every class hoopy defines."""
    found = {}
    for info in pkgutil.walk_packages(hoopy.__path__, "hoopy."):
        if info.name in SKIP:
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            declared = [i for i in implementedBy(cls).declared]
            if declared:
                found[f"{cls.__module__}.{name}"] = (cls, declared)
    return found


def _pg_url():
    import os
    import secrets

    import psycopg

    from hoopy.audit.pgstore import connect, ensure_schema

    server = os.environ.get("HOOPY_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
    name = f"hoopy_iface_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    conn = connect(f"{server}/{name}")
    try:
        ensure_schema(conn)
    finally:
        conn.close()

    def drop():
        with psycopg.connect(f"{server}/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return f"{server}/{name}", drop


def build(qualname: str, tmp_path, cleanups: list):
    """One instance of each implementer, made as hoopy makes it."""
    if qualname == "hoopy.postgres.upstream.ClientReading":
        from hoopy.postgres.upstream import ClientReading

        return ClientReading(object())
    if qualname == "hoopy.http.reply.Response":
        from hoopy.http.reply import Response

        return Response(None, None)  # what it keeps is only read once it writes
    if qualname == "hoopy.http.server.GatewayFactory":
        from hoopy.http.server import GatewayFactory

        return GatewayFactory(None)
    if qualname == "hoopy.http.upload.BodyPipe":
        from hoopy.http.upload import BodyPipe

        return BodyPipe(StringTransport(), 10)
    if qualname == "hoopy.http.response_body.Stream":
        from types import SimpleNamespace

        from hoopy.http.response_body import Stream

        ex = SimpleNamespace(settings=SimpleNamespace(record_body_limit=256))
        return Stream(ex, None, None, "json")
    if qualname == "hoopy.audit.asciicast.AsciicastRecorder":
        from hoopy.audit.asciicast import AsciicastRecorder

        rec = AsciicastRecorder(tmp_path / "r.cast", None, 80, 24)
        cleanups.append(rec._file.close)  # seal() would record it in a session: there is none here
        return rec
    if qualname == "hoopy.listen.Adopted":
        import socket

        from twisted.internet import reactor

        from hoopy.listen import Adopted

        s = socket.socket()
        cleanups.append(s.close)
        return Adopted(reactor, (s, socket.AF_INET, None))
    if qualname == "hoopy.reach._Probe":
        from twisted.internet import defer

        from hoopy.reach import _Probe

        return _Probe(defer.Deferred(), True, None)
    if qualname == "hoopy.mcp.channels._Bytes":
        from hoopy.mcp.channels import _Bytes

        return _Bytes(b"{}")
    if qualname == "hoopy.gateway.Gateway":
        from hoopy import config as cm
        from hoopy.gateway import Gateway

        p = tmp_path / "hoopy.toml"
        p.write_text(f'[gateway]\nstate = "{tmp_path / "s.db"}"\nrecordings = "{tmp_path / "rec"}"\n')
        return Gateway(cm.load(p), Clock())
    if qualname == "hoopy.audit.store.SQLiteEventStore":
        from hoopy.audit.store import SQLiteEventStore

        return SQLiteEventStore(tmp_path / "s.db", "gw", Clock())
    if qualname == "hoopy.audit.store.SQLiteReader":
        import sqlite3

        from hoopy.audit.store import SCHEMA, SQLiteReader

        db = sqlite3.connect(tmp_path / "r.db")
        db.executescript(SCHEMA)
        db.close()
        reader = SQLiteReader(tmp_path / "r.db")
        cleanups.append(reader.close)
        return reader
    if qualname == "hoopy.audit.pgstore.PostgresEventStore":
        from hoopy.audit.pgstore import PostgresEventStore

        return PostgresEventStore("postgresql://nobody@127.0.0.1:1/none", "gw", Clock())
    if qualname == "hoopy.audit.pgstore.PostgresReader":
        from hoopy.audit.pgstore import PostgresReader

        url, drop = _pg_url()
        cleanups.append(drop)
        reader = PostgresReader(url)
        cleanups.insert(0, reader.close)
        return reader
    raise AssertionError(f"{qualname} implements an interface: build one here so it is verified")


FOUND = implementers()


def test_the_walk_finds_the_implementers_we_know():
    assert {"hoopy.audit.store.SQLiteEventStore", "hoopy.audit.pgstore.PostgresEventStore",
            "hoopy.http.reply.Response", "hoopy.audit.asciicast.AsciicastRecorder",
            "hoopy.gateway.Gateway"} <= set(FOUND)


@pytest.mark.parametrize("qualname", sorted(FOUND))
def test_each_implementation_provides_its_interfaces(qualname, tmp_path):
    cls, interfaces = FOUND[qualname]
    cleanups: list = []
    try:
        obj = build(qualname, tmp_path, cleanups)
        for iface in interfaces:
            verifyClass(iface, cls)
            verifyObject(iface, obj)
    finally:
        for c in cleanups:
            c()
