"""The calls the sync and the async API share, written once as sans-I/O steps.

A step is a generator that yields each statement it needs (a ``Statement``)
and receives that statement's rows; it returns the call's answer. Everything
but executing lives in the step: the arguments' checks, the order of the
statements and their retries, what the rows mean, which error is raised and
how its message is worded, and the translation of database errors (a psycopg
error is thrown into the step at the ``yield`` that ran the statement, so the
step's own ``translating`` blocks and ``except`` clauses handle it exactly as
straight-line code would). Two runners execute steps: ``run`` on a
``psycopg.Connection``, ``arun`` on a ``psycopg.AsyncConnection``; each is a
dozen lines with no decision in them, so the two APIs cannot drift apart.
psycopg builds its own protocol the same way (``psycopg.generators``, driven
by a sync and an async wait function).

Why not the alternatives:

- shared pure functions around an execute/fetch written in each API would
  still leave each call's control flow (the retry of register_batch, the
  ``except UndefinedTable`` of the schema check, which block translates which
  error, when BatchNotFoundError is raised) written twice, and that control
  flow is exactly where the hand copy in loader.aio had drifted (``!r`` against
  ``quoted()``, its own wording of a total conflict);
- generating loader/aio.py from the sync code (psycopg's ``async_to_sync``)
  needs a code generator and a check that its output is current: a larger
  machine than a handful of calls need.

The connection handling around a step (a pool's checkout, the idle rule, the
prepare threshold) is each API's: that is I/O of its own kind. The rules it
applies are shared too (loader.connection: ``check_idle``, ``pool_closed``,
``pool_arguments``). Following a batch is built the same way with other
requests than statements (loader.progress.read.follow_plan: read, listen, wait,
show), since its I/O is notifications and a second connection.
tests/db/test_async_parity.py holds both APIs to the same answers and messages.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, LiteralString, TypeAlias, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import kwargs_row, tuple_row

from loader import queries
from loader.batch_ids import check_batch_id, check_total, total_conflict
from loader.errors import (
    BatchConflictError,
    BatchNotFoundError,
    ConfigurationError,
    SchemaVersionError,
    quoted,
    translating,
)
from loader.models import BatchProgress

T = TypeVar("T")

#: What a step may execute: the package's own SQL (loader.queries) or SQL composed with psycopg.sql.
Query: TypeAlias = LiteralString | sql.SQL | sql.Composed


@dataclass(frozen=True)
class Statement:
    """One statement a step asks its runner to execute; the runner sends back its rows."""

    query: Query
    params: Mapping[str, Any] | None = None
    #: Each row as ``row(**columns)``; None: tuples.
    row: Callable[..., Any] | None = None
    #: psycopg's ``prepare`` for this execution (None: the connection's threshold decides).
    prepare: bool | None = None
    #: In a transaction of its own (committed before the rows are sent back); False:
    #: in the caller's open transaction, as one more statement of it.
    alone: bool = True


#: A step: yields Statements, is sent each one's rows, returns T.
Step: TypeAlias = Generator[Statement, list[Any], T]


def _row_factory(statement: Statement) -> Any:
    return tuple_row if statement.row is None else kwargs_row(statement.row)


def run(conn: psycopg.Connection[Any], step: Step[T]) -> T:
    """Execute ``step`` on a sync connection; its answer, or the error it raises."""
    try:
        statement = next(step)
        while True:
            try:
                rows = _execute(conn, statement)
            except psycopg.Error as exc:
                statement = step.throw(exc)
            else:
                statement = step.send(rows)
    except StopIteration as done:
        answer: T = done.value
        return answer
    finally:
        step.close()


def _execute(conn: psycopg.Connection[Any], statement: Statement) -> list[Any]:
    if not statement.alone:
        return _fetch(conn, statement)
    with conn.transaction():
        return _fetch(conn, statement)


def _fetch(conn: psycopg.Connection[Any], statement: Statement) -> list[Any]:
    with conn.cursor(row_factory=_row_factory(statement)) as cur:
        cur.execute(statement.query, statement.params, prepare=statement.prepare)
        return cur.fetchall() if cur.description is not None else []


async def arun(conn: psycopg.AsyncConnection[Any], step: Step[T]) -> T:
    """Execute ``step`` on an async connection; its answer, or the error it raises."""
    try:
        statement = next(step)
        while True:
            try:
                rows = await _aexecute(conn, statement)
            except psycopg.Error as exc:
                statement = step.throw(exc)
            else:
                statement = step.send(rows)
    except StopIteration as done:
        answer: T = done.value
        return answer
    finally:
        step.close()


async def _aexecute(conn: psycopg.AsyncConnection[Any], statement: Statement) -> list[Any]:
    if not statement.alone:
        return await _afetch(conn, statement)
    async with conn.transaction():
        return await _afetch(conn, statement)


async def _afetch(conn: psycopg.AsyncConnection[Any], statement: Statement) -> list[Any]:
    async with conn.cursor(row_factory=_row_factory(statement)) as cur:
        await cur.execute(statement.query, statement.params, prepare=statement.prepare)
        return await cur.fetchall() if cur.description is not None else []


# --------------------------------------------------------------------------- the schema version

# Connections (sync or async) whose schema version was already checked; weak so
# closed connections drop out. Keyed by the connection object itself.
_checked: weakref.WeakSet[Any] = weakref.WeakSet()


@dataclass(frozen=True)
class _Version:
    version: int | None


def mark_checked(conn: object) -> None:
    """Record that ``conn`` was found on the right schema version (by a step, or by other means)."""
    _checked.add(conn)


def check_schema(conn: object, expected: int) -> Step[None]:
    """Refuse a database whose schema version is not ``expected``: SchemaVersionError naming both.

    ``conn`` only keys the once-per-connection cache: the step reads the version
    the first time a connection is used, and not again.
    """
    if conn in _checked:
        return
    with translating("reading the schema version"):
        try:
            rows: list[_Version] = yield Statement(queries.get("schema_version"), row=_Version, prepare=False)
            found = rows[0].version if rows else None
        except psycopg.errors.UndefinedTable:  # no loader schema at all (rolled back with its transaction)
            found = None
    if found != expected:
        raise SchemaVersionError(expected, found)
    mark_checked(conn)


# --------------------------------------------------------------------------- progress


def not_found(batch_id: str) -> BatchNotFoundError:
    return BatchNotFoundError(
        f"no batch {quoted(batch_id)} in this database; check the id, or list batches with `loader status`",
        batch_id,
    )


def batch_progress(batch_id: str, *, alone: bool = True) -> Step[BatchProgress]:
    """The batch's row as loader_progress() gives it (recounted while another writer left it stale);
    BatchNotFoundError for an unknown batch. Untranslated: for a caller that translates."""
    rows: list[BatchProgress] = yield Statement(
        queries.get("batch_progress"), {"batch_id": batch_id}, row=BatchProgress, alone=alone
    )
    if not rows:
        raise not_found(batch_id)
    return rows[0]


def get_progress(batch_id: str) -> Step[BatchProgress]:
    """loader.get_progress: the batch's totals, status and percentage, as last committed."""
    with translating(f"reading batch {quoted(batch_id)}"):
        return (yield from batch_progress(batch_id))


# --------------------------------------------------------------------------- registering


@dataclass(frozen=True)
class _Registered:
    #: The batch's declared total: this call's when it created the batch, else the one found.
    declared_images: int
    created: bool


def register_batch(batch_id: str, total_images: int) -> Step[BatchProgress]:
    """loader.register_batch: the arguments checked now (before any connection is taken),
    the statements when the step runs."""
    batch_id = check_batch_id(batch_id)
    total = check_total(total_images)
    if total is None:
        raise ConfigurationError("register_batch needs total_images")
    return _register(batch_id, total)


#: register_batch's statement runs at most twice: when a concurrent call created the
#: batch after this statement's snapshot was taken, the INSERT finds the id taken
#: while the SELECT cannot see its row; the second run, a new statement in a new
#: transaction, sees every commit before it.
_REGISTER_RUNS = 2


def _register(batch_id: str, total: int) -> Step[BatchProgress]:
    params = {"batch_id": batch_id, "total_images": total}
    found: _Registered | None = None
    with translating(f"registering batch {quoted(batch_id)}"):
        for _ in range(_REGISTER_RUNS):
            rows: list[_Registered] = yield Statement(queries.get("register_batch"), params, row=_Registered)
            if rows:
                found = rows[0]
                break
    conflict = total_conflict(batch_id, total, found.declared_images if found is not None else None)
    if conflict:
        raise BatchConflictError(conflict)
    return (yield from get_progress(batch_id))
