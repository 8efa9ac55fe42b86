"""Getting a usable connection: from a pool or as given, schema version checked once."""

from __future__ import annotations

import enum
import os
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import resources
from typing import Any, TypeVar

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolClosed

from loader import steps
from loader.dsn import check_dsn
from loader.errors import (
    ConfigurationError,
    DatabaseError,
    TransactionStateError,
    translate,
)


def _newest_migration() -> int:
    """The newest migration's number in loader/schema/migrations (1, schema.sql's first version, if none)."""
    names = (entry.name for entry in (resources.files("loader.schema") / "migrations").iterdir())
    return max((int(name[:4]) for name in names if name[:4].isdigit() and name.endswith(".sql")), default=1)


#: The schema version this loader reads and writes: its newest migration's, which
#: schema.sql builds too (tests/unit/test_schema_version.py holds the two equal).
SCHEMA_VERSION = _newest_migration()

Connectable = ConnectionPool | psycopg.Connection[Any]

T = TypeVar("T")

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
    """Refuse a database whose schema version is not SCHEMA_VERSION (loader.steps.check_schema).

    Done once per connection, at checkout rather than in a pool's ``configure``
    callback: there a failure only makes the pool retry until PoolTimeout, while
    here the caller gets the SchemaVersionError naming both versions.
    """
    steps.run(conn, steps.check_schema(conn, SCHEMA_VERSION))


def pool_arguments(
    conninfo: str,
    *,
    min_size: int,
    max_size: int,
    timeout: float,
    name: str | None,
    prepare_threshold: int | _FromEnvironment | None,
) -> dict[str, Any]:
    """What make_pool and loader.aio.make_async_pool give their pool class (besides ``check``).

    Raises ConfigurationError at once for a DSN libpq cannot parse.
    """
    check_dsn(conninfo)
    threshold = prepare_threshold_setting() if prepare_threshold is FROM_ENVIRONMENT else prepare_threshold
    return {
        "conninfo": conninfo,
        "kwargs": {"prepare_threshold": threshold},
        "min_size": min_size,
        "max_size": max_size,
        "timeout": timeout,
        "name": name,
        "open": False,
    }


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
    arguments = pool_arguments(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        name=name,
        prepare_threshold=prepare_threshold,
    )
    pool = ConnectionPool(**arguments, check=ConnectionPool.check_connection)
    remember_pool_threshold(pool, arguments["kwargs"]["prepare_threshold"])
    return pool


def mark_checked(conn: psycopg.Connection[Any]) -> None:
    """Record that ``conn`` was found on the right schema version by other means."""
    steps.mark_checked(conn)


def pool_closed(pool: ConnectionPool | AsyncConnectionPool, opening: str) -> ConfigurationError:
    return ConfigurationError(f"pool {pool.name!r} is closed (or was never opened); open it with {opening}")


def pool_unreachable(
    pool: ConnectionPool | AsyncConnectionPool, exc: psycopg.OperationalError
) -> DatabaseError:
    """A pool's checkout that failed (PoolTimeout: the server is unreachable), translated."""
    return translate(exc, f"getting a connection from pool {pool.name!r}")


def check_idle(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Refuse a connection handed in closed, or inside a transaction.

    The loader owns its transaction and commits it, which would commit the
    caller's work.
    """
    if conn.closed:
        raise DatabaseError(
            "the connection is closed (by the caller, or lost with the server); "
            "connect again, or pass a pool, which replaces broken connections"
        )
    status = conn.info.transaction_status
    if status != pq.TransactionStatus.IDLE:
        raise TransactionStateError(
            f"the connection is not idle (transaction status {status.name}); the loader runs and "
            "commits its own transaction, so commit or roll back yours first, or pass a pool"
        )


@contextmanager
def connection(target: Connectable, *, check_version: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """An idle connection, schema-checked, from a pool or the one given (check_idle).

    loader.aio.connection is its twin for asyncio: only the checkout differs.
    """
    with ExitStack() as stack:
        if isinstance(target, ConnectionPool):
            try:
                conn = stack.enter_context(target.connection())
            except PoolClosed as exc:
                raise pool_closed(target, "pool.open()") from exc
            except psycopg.OperationalError as exc:
                raise pool_unreachable(target, exc) from exc
        elif isinstance(target, psycopg.Connection):
            check_idle(target)
            conn = target
        else:
            raise TypeError(
                f"expected a psycopg_pool.ConnectionPool or psycopg.Connection, got {type(target).__name__}"
            )
        stack.enter_context(preparing(conn, pool_threshold(target)))
        if check_version:
            check_schema_version(conn)
        yield conn


def call(target: Connectable, step: steps.Step[T]) -> T:
    """Run a shared step (loader.steps) on a connection from ``target``."""
    with connection(target) as conn:
        return steps.run(conn, step)


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
