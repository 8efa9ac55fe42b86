"""Getting a usable connection: from a pool or as given, schema version checked once."""

from __future__ import annotations

import enum
import os
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import resources
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool, PoolClosed

from loader import queries
from loader.dsn import check_dsn
from loader.errors import (
    ConfigurationError,
    DatabaseError,
    SchemaVersionError,
    TransactionStateError,
    translate,
    translating,
)


def _newest_migration() -> int:
    """The number of the newest migration in loader/migrations (1, schema.sql's first version, if none)."""
    names = (entry.name for entry in (resources.files("loader") / "migrations").iterdir())
    return max((int(name[:4]) for name in names if name[:4].isdigit() and name.endswith(".sql")), default=1)


#: The schema version this loader reads and writes: its newest migration's, which
#: schema.sql builds too (tests/unit/test_schema_version.py holds the two equal).
SCHEMA_VERSION = _newest_migration()

Connectable = ConnectionPool | psycopg.Connection[Any]

# Connections whose schema version was already checked; weak so closed
# connections drop out. Keyed by the connection object itself.
_checked: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


#: psycopg's ``prepare_threshold`` for the loader's connections, when set: the
#: executions of a query after which it is prepared on the server. Unset (the
#: default), nothing is prepared: a transaction pooler (PgBouncer < 1.21, or
#: without max_prepared_statements) hands each transaction another server
#: connection, where a prepared statement is missing ("_pg3_0 does not exist")
#: or another client's ("already exists"). The loader's queries gain little
#: from preparing: the save path's cost is the merge, not its planning.
PREPARE_THRESHOLD_ENV = "LOADER_PREPARE_THRESHOLD"


class _FromEnvironment(enum.Enum):
    DEFAULT = "from LOADER_PREPARE_THRESHOLD"


#: make_pool's default: the threshold LOADER_PREPARE_THRESHOLD sets (None when unset).
FROM_ENVIRONMENT = _FromEnvironment.DEFAULT

# Thresholds given to make_pool, per pool; other pools and connections get the
# environment's.
_pool_thresholds: weakref.WeakKeyDictionary[object, int | None] = weakref.WeakKeyDictionary()


# Connections inside a connection() block, whose threshold is already set.
_preparing_now: weakref.WeakSet[psycopg.Connection[Any] | psycopg.AsyncConnection[Any]] = weakref.WeakSet()


def prepare_threshold_setting() -> int | None:
    """The prepare threshold LOADER_PREPARE_THRESHOLD asks for: None (unset, empty or
    ``none``) or a count of executions >= 0. Raises ConfigurationError otherwise."""
    raw = os.environ.get(PREPARE_THRESHOLD_ENV, "").strip()
    if raw.lower() in ("", "none"):
        return None
    if not raw.isdigit():
        raise ConfigurationError(
            f"{PREPARE_THRESHOLD_ENV}={raw!r}: expected a whole number of executions (e.g. 5) or "
            "'none' (nothing prepared on the server: what a transaction pooler needs)"
        )
    return int(raw)


def check_schema_version(conn: psycopg.Connection[Any]) -> None:
    """Refuse a database whose schema version is not SCHEMA_VERSION.

    Done once per connection, at checkout rather than in a pool's ``configure``
    callback: there a failure only makes the pool retry until PoolTimeout, while
    here the caller gets the SchemaVersionError naming both versions.
    """
    if conn in _checked:
        return
    was_idle = conn.info.transaction_status == pq.TransactionStatus.IDLE
    try:
        with translating("reading the schema version"):
            try:
                row = conn.execute(queries.get("schema_version"), prepare=False).fetchone()
                found = row[0] if row else None
            except psycopg.errors.UndefinedTable:
                found = None
                conn.rollback()
    finally:
        if was_idle and not conn.autocommit and conn.info.transaction_status != pq.TransactionStatus.IDLE:
            conn.rollback()
    if found != SCHEMA_VERSION:
        raise SchemaVersionError(SCHEMA_VERSION, found)
    _checked.add(conn)


def make_pool(
    conninfo: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    timeout: float = 30.0,
    name: str | None = None,
    prepare_threshold: int | _FromEnvironment | None = FROM_ENVIRONMENT,
) -> ConnectionPool:
    """A pool whose connections are checked (and replaced when broken) on checkout.

    ``prepare_threshold`` (psycopg's): None prepares nothing on the server, which
    every pooler supports; a number suits a direct connection or a pooler that
    keeps prepared statements (PgBouncer >= 1.21 with max_prepared_statements).
    Default: LOADER_PREPARE_THRESHOLD, else None. It applies to every use of
    the pool's connections, the application's own included.

    Returned closed (``open=False``): open it explicitly, after any fork.
    Raises ConfigurationError at once for a DSN libpq cannot parse.
    """
    check_dsn(conninfo)
    threshold = prepare_threshold_setting() if prepare_threshold is FROM_ENVIRONMENT else prepare_threshold
    pool = ConnectionPool(
        conninfo,
        kwargs={"prepare_threshold": threshold},
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        name=name,
        open=False,
        check=ConnectionPool.check_connection,
    )
    remember_pool_threshold(pool, threshold)
    return pool


def mark_checked(conn: psycopg.Connection[Any]) -> None:
    """Record that ``conn`` was found on the right schema version by other means."""
    _checked.add(conn)


@contextmanager
def connection(target: Connectable, *, check_version: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """An idle connection, schema-checked, from a pool or the one given.

    A connection handed in while inside a transaction is refused: the loader
    owns its transaction and commits it, which would commit the caller's work.
    """
    if isinstance(target, ConnectionPool):
        with ExitStack() as stack:
            try:
                conn = stack.enter_context(target.connection())
            except PoolClosed as exc:
                raise ConfigurationError(
                    f"pool {target.name!r} is closed (or was never opened); open it with pool.open()"
                ) from exc
            except psycopg.OperationalError as exc:  # PoolTimeout: the server is unreachable
                raise translate(exc, f"getting a connection from pool {target.name!r}") from exc
            stack.enter_context(preparing(conn, pool_threshold(target)))
            if check_version:
                check_schema_version(conn)
            yield conn
        return
    if not isinstance(target, psycopg.Connection):
        raise TypeError(
            f"expected a psycopg_pool.ConnectionPool or psycopg.Connection, got {type(target).__name__}"
        )
    if target.closed:
        raise DatabaseError(
            "the connection is closed (by the caller, or lost with the server); "
            "connect again, or pass a pool, which replaces broken connections"
        )
    status = target.info.transaction_status
    if status != pq.TransactionStatus.IDLE:
        raise TransactionStateError(
            f"the connection is not idle (transaction status {status.name}); the loader runs and "
            "commits its own transaction, so commit or roll back yours first, or pass a pool"
        )
    with preparing(target, FROM_ENVIRONMENT):
        if check_version:
            check_schema_version(target)
        yield target


def remember_pool_threshold(pool: object, threshold: int | None) -> None:
    """Record the threshold a pool's connections were made with (make_pool, loader.aio)."""
    _pool_thresholds[pool] = threshold


def pool_threshold(pool: object) -> int | _FromEnvironment | None:
    """The threshold make_pool gave ``pool``; FROM_ENVIRONMENT for a pool made elsewhere."""
    return _pool_thresholds.get(pool, FROM_ENVIRONMENT)


@contextmanager
def preparing(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], threshold: int | _FromEnvironment | None
) -> Iterator[None]:
    """The loader's prepare threshold on ``conn`` for the block; the caller's restored after.

    A call made inside another's block (register_batch reading the progress)
    keeps the outer call's threshold: a pool's, not the environment's.
    """
    if conn in _preparing_now:
        yield
        return
    wanted = prepare_threshold_setting() if threshold is FROM_ENVIRONMENT else threshold
    before = conn.prepare_threshold
    conn.prepare_threshold = wanted
    _preparing_now.add(conn)
    try:
        yield
    finally:
        _preparing_now.discard(conn)
        if not conn.closed:
            conn.prepare_threshold = before
