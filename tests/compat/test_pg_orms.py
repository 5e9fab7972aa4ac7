"""SQLAlchemy, Alembic and Django through hoopy, with TLS on and off."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.compat import pg
from tests.compat.matrix import row

CLIENTS = Path(__file__).resolve().parent / "clients"
sqlalchemy = pytest.importorskip("sqlalchemy")


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    gw = pg.start(tmp_path_factory.mktemp("orms"))
    yield gw
    pg.stop(gw)


def engine(g, tls):
    url = sqlalchemy.engine.URL.create("postgresql+psycopg", username=g.agent.name, password=g.agent.token,
                                       host="127.0.0.1", port=g.port, database=g.db,
                                       query={"sslmode": "require" if tls else "disable"})
    return sqlalchemy.create_engine(url, pool_size=2)


def _sqlalchemy(g, tls):
    from sqlalchemy import Column, Integer, Text, select, update
    from sqlalchemy.orm import Session, declarative_base

    class Customer(declarative_base()):
        __tablename__ = "customers"
        id = Column(Integer, primary_key=True)
        name = Column(Text)
        email = Column(Text)

    e = engine(g, tls)
    try:
        with Session(e) as s:
            rows = s.execute(select(Customer).order_by(Customer.id)).scalars().all()
            assert [(c.id, c.name, c.email) for c in rows] == [(1, "Ann", "[REDACTED]"), (2, "Bob", "[REDACTED]")]
            rows[0].email = rows[0].email + " "  # a write of the marker back
            with pytest.raises(sqlalchemy.exc.ProgrammingError) as err:
                s.commit()
            assert "redaction marker" in str(err.value)
            s.rollback()
            s.execute(update(Customer).where(Customer.id == 2).values(name="Bob"))
            s.commit()
    finally:
        e.dispose()


@row("postgres", "SQLAlchemy", "ORM reads, a masked value written back is refused, pooled engine", tls=True)
def test_sqlalchemy_tls(g):
    _sqlalchemy(g, True)


@row("postgres", "SQLAlchemy", "ORM reads, a masked value written back is refused, pooled engine", tls=False)
def test_sqlalchemy_plain(g):
    _sqlalchemy(g, False)


def _alembic(g, tls, tmp_path):
    pytest.importorskip("alembic")
    from alembic import command
    from alembic.config import Config

    versions = tmp_path / "versions"
    versions.mkdir()
    (tmp_path / "env.py").write_text(
        "from alembic import context\n"
        "conn = context.config.attributes['connection']\n"
        "context.configure(connection=conn, target_metadata=None)\n"
        "with context.begin_transaction():\n"
        "    context.run_migrations()\n")
    (tmp_path / "script.py.mako").write_text("")
    table = f"widgets_{'tls' if tls else 'plain'}"
    (versions / "0001_widgets.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n"
        "revision = '0001'\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n"
        "def upgrade():\n"
        f"    op.create_table('{table}', sa.Column('id', sa.Integer, primary_key=True), sa.Column('v', sa.Text))\n"
        f"    op.execute(\"INSERT INTO {table} (v) VALUES ('one')\")\n"
        "def downgrade():\n"
        f"    op.drop_table('{table}')\n")
    cfg = Config()
    cfg.set_main_option("script_location", str(tmp_path))
    cfg.set_main_option("version_table", f"alembic_version_{'tls' if tls else 'plain'}")
    e = engine(g, tls)
    try:
        with e.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        with e.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
    finally:
        e.dispose()
    assert pg.admin_sql(f"SELECT to_regclass('public.{table}') IS NULL", g.db) == "t"
    sqls = [e["data"].get("sql", "") for e in g.events("operation")]
    assert any(f"CREATE TABLE {table}" in s for s in sqls)


@row("postgres", "Alembic", "upgrade and downgrade of a migration (needs a ddl grant)", tls=True)
def test_alembic_tls(g, tmp_path):
    _alembic(g, True, tmp_path)


@row("postgres", "Alembic", "upgrade and downgrade of a migration (needs a ddl grant)", tls=False)
def test_alembic_plain(g, tmp_path):
    _alembic(g, False, tmp_path)


def _django(g, tls):
    pytest.importorskip("django")
    r = subprocess.run([sys.executable, str(CLIENTS / "django_app.py"), str(g.port), g.agent.name, g.agent.token,
                        g.db, "1" if tls else "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["read Ann [REDACTED] [REDACTED]", "refused True", "saved name Annie",
                                     "count 2"]
    assert pg.admin_sql("SELECT name, email, ssn FROM customers WHERE id = 1", g.db) == \
        "Ann|ann@example.com|123-45-6789"


@row("postgres", "Django", "ORM read; save() of a masked row is refused, save(update_fields=...) works", tls=True)
def test_django_tls(g):
    _django(g, True)


@row("postgres", "Django", "ORM read; save() of a masked row is refused, save(update_fields=...) works", tls=False)
def test_django_plain(g):
    _django(g, False)
