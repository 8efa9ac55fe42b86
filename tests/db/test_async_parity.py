"""The async API gives the sync API's answers: for the same situation (a batch
missing, a conflicting total, a schema of another version or none, a hostile batch
id quoted in a message, a batch another writer left stale, a connection not idle),
loader.aio and the sync calls return the same progress or raise the same error
type with the same message. Each API meets the situation in a database of its own,
set up the same way, so a call that writes (register_batch) meets the same state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from helpers.pgbouncer import through

from loader import aio, follow_progress, get_progress, make_pool, register_batch, save_batch
from loader.connection import SCHEMA_VERSION
from loader.datagen import make_batch
from loader.errors import (
    BatchConflictError,
    BatchNotFoundError,
    ConfigurationError,
    DatabaseError,
    SchemaVersionError,
    TransactionStateError,
)
from loader.models import BatchProgress, ProcessStatus
from loader.testing import TemplateDatabases

#: An id a terminal would act on (ESC, a right-to-left override), longer than a message quotes.
HOSTILE_ID = "\x1b[31mred\u202e" + "x" * 100
#: A usable id (no control characters) longer than a message quotes.
LONG_ID = "long-" + "y" * 115

Setup = Callable[[psycopg.Connection[Any]], None]


def _sql(*statements: str) -> Setup:
    def run(db: psycopg.Connection[Any]) -> None:
        for statement in statements:
            db.execute(statement)

    return run


def _as_made(db: psycopg.Connection[Any]) -> None:
    """The database as the template made it: the schema, no batches."""


def _registered(batch_id: str, total: int) -> Setup:
    def run(db: psycopg.Connection[Any]) -> None:
        register_batch(db, batch_id, total)

    return run


def _stale(db: psycopg.Connection[Any]) -> None:
    """Batch 'st': 2 of 4 stored, then another writer's hand-written totals and status."""
    register_batch(db, "st", 4)
    save_batch(db, "st", make_batch(2, prefix="st"))
    db.execute("UPDATE batch_executions SET completed_images = 4, status = 'SUCCESS' WHERE batch_id = 'st'")


def _finished(db: psycopg.Connection[Any]) -> None:
    save_batch(db, "done", make_batch(3, prefix="done"))


@dataclass(frozen=True)
class Case:
    name: str
    call: str  # get_progress, register_batch or follow
    args: tuple[Any, ...]
    #: What both must give: BatchProgress, a list (follow), or the error's type.
    expect: type
    setup: Setup = _as_made
    #: What the call is given: a connection, a pool, a connection inside a transaction, a closed one.
    via: str = "connection"


CASES = [
    Case("registered batch", "get_progress", ("a",), BatchProgress, _registered("a", 10)),
    Case("registered batch, pool", "get_progress", ("a",), BatchProgress, _registered("a", 10), "pool"),
    Case("register a new batch", "register_batch", ("new", 5), BatchProgress),
    Case("register a new batch, pool", "register_batch", ("new", 5), BatchProgress, via="pool"),
    Case("register again, same total", "register_batch", ("a", 10), BatchProgress, _registered("a", 10)),
    Case("conflicting total", "register_batch", ("a", 11), BatchConflictError, _registered("a", 10)),
    Case(
        "conflicting total, pool",
        "register_batch",
        ("a", 11),
        BatchConflictError,
        _registered("a", 10),
        "pool",
    ),
    Case("no total", "register_batch", ("a", None), ConfigurationError),
    Case("missing batch", "get_progress", ("nope",), BatchNotFoundError),
    Case("missing batch, pool", "get_progress", ("nope",), BatchNotFoundError, via="pool"),
    Case("hostile id not found", "get_progress", (HOSTILE_ID,), BatchNotFoundError),
    Case("hostile id registered", "register_batch", (HOSTILE_ID, 3), ConfigurationError),
    Case(
        "long id the database refuses",
        "register_batch",
        (LONG_ID, 3),
        DatabaseError,
        _sql("ALTER TABLE batch_executions ADD CONSTRAINT short_ids CHECK (length(batch_id) < 100)"),
    ),
    Case(
        "newer schema",
        "get_progress",
        ("a",),
        SchemaVersionError,
        _sql(f"INSERT INTO loader_schema_version (version, description) VALUES ({SCHEMA_VERSION + 1}, 'x')"),
    ),
    Case(
        "older schema",
        "register_batch",
        ("a", 1),
        SchemaVersionError,
        _sql(f"DELETE FROM loader_schema_version WHERE version = {SCHEMA_VERSION}"),
    ),
    Case(
        "empty version table",
        "get_progress",
        ("a",),
        SchemaVersionError,
        _sql("DELETE FROM loader_schema_version"),
    ),
    Case(
        "no version table",
        "register_batch",
        ("a", 1),
        SchemaVersionError,
        _sql("DROP TABLE loader_schema_version CASCADE"),
    ),
    Case("stale batch", "get_progress", ("st",), BatchProgress, _stale),
    Case("stale batch registered again", "register_batch", ("st", 4), BatchProgress, _stale),
    Case("stale batch, other total", "register_batch", ("st", 5), BatchConflictError, _stale),
    Case("connection in a transaction", "get_progress", ("a",), TransactionStateError, via="in transaction"),
    Case("closed connection", "register_batch", ("a", 1), DatabaseError, via="closed"),
    Case("follow a finished batch", "follow", ("done", None), list, _finished),
    Case("follow a missing batch", "follow", ("nope", None), list),
    Case("follow a stale batch until idle", "follow", ("st", 0.5), list, _stale),
]


def _answer(value: object) -> object:
    """What is compared: progress without its timestamps (each database dates its own rows)."""
    if isinstance(value, BatchProgress):
        dated = value.created_at is not None and value.updated_at is not None
        return ("progress", value.model_dump(exclude={"created_at", "updated_at"}), dated)
    if isinstance(value, list):
        return [_answer(item) for item in value]
    return value


def _error(exc: Exception) -> tuple[str, type, str]:
    return ("error", type(exc), str(exc))


def _sync_follow(dsn: str, batch_id: str, idle_timeout: float | None) -> list[object]:
    seen: list[object] = []
    try:
        for progress in follow_progress(dsn, batch_id, idle_timeout=idle_timeout):
            seen.append(progress)
    except Exception as exc:
        seen.append(_error(exc))
    return seen


async def _async_follow(dsn: str, batch_id: str, idle_timeout: float | None) -> list[object]:
    seen: list[object] = []
    try:
        async for progress in aio.follow_progress(dsn, batch_id, idle_timeout=idle_timeout):
            seen.append(progress)
    except Exception as exc:
        seen.append(_error(exc))
    return seen


def _sync_target(stack: ExitStack, dsn: str, via: str) -> Any:
    if via == "pool":
        pool = make_pool(dsn)
        pool.open(wait=True)
        stack.callback(pool.close)
        return pool
    conn = stack.enter_context(psycopg.connect(dsn))
    if via == "in transaction":
        conn.execute("SELECT 1")
    elif via == "closed":
        conn.close()
    return conn


async def _async_target(stack: AsyncExitStack, dsn: str, via: str) -> Any:
    if via == "pool":
        pool = aio.make_async_pool(dsn)
        await pool.open(wait=True)
        stack.push_async_callback(pool.close)
        return pool
    conn = await stack.enter_async_context(await psycopg.AsyncConnection.connect(dsn))
    if via == "in transaction":
        await conn.execute("SELECT 1")
    elif via == "closed":
        await conn.close()
    return conn


def sync_answer(dsn: str, case: Case) -> object:
    if case.call == "follow":
        return _answer(_sync_follow(dsn, *case.args))
    with ExitStack() as stack:
        target = _sync_target(stack, dsn, case.via)
        try:
            call = get_progress if case.call == "get_progress" else register_batch
            return _answer(call(target, *case.args))
        except Exception as exc:
            return _error(exc)


def async_answer(dsn: str, case: Case) -> object:
    async def scenario() -> object:
        if case.call == "follow":
            return _answer(await _async_follow(dsn, *case.args))
        async with AsyncExitStack() as stack:
            target = await _async_target(stack, dsn, case.via)
            try:
                call = aio.get_progress if case.call == "get_progress" else aio.register_batch
                return _answer(await call(target, *case.args))
            except Exception as exc:
                return _error(exc)

    return asyncio.run(asyncio.wait_for(scenario(), timeout=60))


@pytest.fixture
def twins(templates: TemplateDatabases) -> Iterator[tuple[str, str]]:
    """Two databases holding the schema: one for each API."""
    made = (templates.create(), templates.create())
    yield made
    for url in made:
        templates.drop(url)


def _prepared(dsn: str, setup: Setup) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        setup(db)


def _is_expected(answer: Any, expect: type) -> bool:
    if expect is BatchProgress:
        return isinstance(answer, tuple) and answer[0] == "progress"
    if expect is list:
        return isinstance(answer, list) and bool(answer)
    return isinstance(answer, tuple) and answer[0] == "error" and issubclass(answer[1], expect)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_async_api_answers_as_the_sync_api_does(case: Case, twins: tuple[str, str]) -> None:
    for dsn in twins:
        _prepared(dsn, case.setup)

    sync, asynchronous = sync_answer(twins[0], case), async_answer(twins[1], case)

    assert _is_expected(sync, case.expect), sync
    assert asynchronous == sync


def test_the_situations_are_what_their_names_say(twins: tuple[str, str]) -> None:
    """The cases above are not vacuous: the hostile id is quoted (escaped, cut), the stale
    batch reads as its rows say, the follows end as a finished, missing or idle batch does."""
    dsn = twins[0]
    cases = {c.name: c for c in CASES}
    answers = {}
    for name in ("hostile id not found", "long id the database refuses", "stale batch"):
        _prepared(dsn, cases[name].setup)
        answers[name] = sync_answer(dsn, cases[name])
    _prepared(dsn, _finished)
    answers["follow"] = async_answer(dsn, cases["follow a finished batch"])
    answers["idle"] = async_answer(dsn, cases["follow a stale batch until idle"])

    hostile = answers["hostile id not found"]
    assert isinstance(hostile, tuple) and "\\x1b[31mred\\u202e" in hostile[2] and "\x1b" not in hostile[2]
    refused = answers["long id the database refuses"]
    assert (
        isinstance(refused, tuple)
        and f"registering batch {LONG_ID[:80]!r}… (120 characters) failed" in refused[2]
    )
    stale = answers["stale batch"]
    assert isinstance(stale, tuple) and stale[1]["status"] == ProcessStatus.STARTED
    assert stale[1]["completed_images"] == 2
    follow = answers["follow"]
    assert isinstance(follow, list) and [p[1]["status"] for p in follow] == [ProcessStatus.SUCCESS]
    idle = answers["idle"]
    assert isinstance(idle, list) and idle[-1][:2] == ("error", TimeoutError)
    assert idle[0][1]["status"] == ProcessStatus.STARTED


def test_both_follow_a_finished_batch_through_a_transaction_pooler_and_refuse_an_open_one(
    bouncer_transaction: str, dsn: str, db: psycopg.Connection[Any]
) -> None:
    """A finished batch needs no notifications, so neither API checks their delivery for
    it; an unfinished one is refused by both, in the same words, behind the pooler."""
    _finished(db)
    register_batch(db, "open", 3)
    pooled = through(bouncer_transaction, dsn)
    finished = Case("finished, pooled", "follow", ("done", None), list)
    unfinished = Case("open, pooled", "follow", ("open", None), list)

    answers = [(sync_answer(pooled, case), async_answer(pooled, case)) for case in (finished, unfinished)]

    assert [sync == asynchronous for sync, asynchronous in answers] == [True, True]
    (done, _), (refused, _) = answers
    assert isinstance(done, list) and [p[1]["status"] for p in done] == [ProcessStatus.SUCCESS]
    assert isinstance(refused, list) and refused[-1][:2] == ("error", ConfigurationError)


def _waiting_on_a_lock(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if db.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            ).fetchone():
                return
            time.sleep(0.02)
    raise AssertionError("register_batch never waited for the other transaction's batch")


def _register_while_created(dsn: str, answer: Callable[[str, Case], object]) -> object:
    """register_batch('r', 6) while another transaction creates 'r' with total 5, committed while
    the call waits: the call's first statement finds the batch taken but cannot see it."""
    case = Case("created meanwhile", "register_batch", ("r", 6), BatchConflictError)
    with psycopg.connect(dsn) as other:
        other.execute(
            "INSERT INTO batch_executions (batch_id, total_images, declared_images) VALUES ('r', 5, 5)"
        )
        with ThreadPoolExecutor(1) as executor:
            registering = executor.submit(answer, dsn, case)
            try:
                _waiting_on_a_lock(dsn)
            finally:
                other.commit()  # also when the wait failed: the call would wait for ever
            return registering.result(timeout=60)


def test_both_look_again_for_a_batch_a_concurrent_call_created(twins: tuple[str, str]) -> None:
    """Without its second look the call would take the unseen batch for absent and pass
    the conflicting total; both APIs look again and refuse it alike."""
    sync = _register_while_created(twins[0], sync_answer)
    asynchronous = _register_while_created(twins[1], async_answer)

    assert _is_expected(sync, BatchConflictError), sync
    assert asynchronous == sync
