"""Getting a usable connection: from a pool or as given, schema version checked once."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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

#: The schema version this loader reads and writes (see schema.sql).
SCHEMA_VERSION = 4

Connectable = ConnectionPool | psycopg.Connection[Any]

# Connections whose schema version was already checked; weak so closed
# connections drop out. Keyed by the connection object itself.
_checked: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


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
) -> ConnectionPool:
    """A pool whose connections are checked (and replaced when broken) on checkout.

    Returned closed (``open=False``): open it explicitly, after any fork.
    Raises ConfigurationError at once for a DSN libpq cannot parse.
    """
    check_dsn(conninfo)
    return ConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        name=name,
        open=False,
        check=ConnectionPool.check_connection,
    )


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
    if check_version:
        check_schema_version(target)
    yield target
