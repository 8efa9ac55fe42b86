"""Progress for many clients: loader.aio (async calls, one listening connection per
process fanned out to any number of followers), and events as wake-ups only:
a forged or malformed notification is neither believed nor fatal, and an idle
timeout counts the followed batch's changes, not the channel's traffic."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import Any, TypeVar

import psycopg
import pytest
from helpers.pgbouncer import through

from loader import aio, follow_progress, get_progress, register_batch, save_batch
from loader.datagen import make_batch
from loader.errors import BatchConflictError, BatchNotFoundError, ConfigurationError
from loader.models import BatchProgress, ProcessStatus
from loader.progress.read import CHANNEL

T = TypeVar("T")

FORGED = '{"batch_id": "B", "completed": 10, "failed": 0, "total": 10, "status": "SUCCESS"}'
MALFORMED = ["not json", "[1, 2]", '"B"', '{"no": "batch"}', '{"batch_id": 5}', "{}", ""]
#: Followers of one batch on one hub, and of a second batch beside it.
MANY = 200
OTHERS = 20
#: The pool that serves the hub's reads.
POOL_MAX = 2


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), timeout=120))


def notify(dsn: str, payload: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])


def seen(progress: BatchProgress) -> tuple[ProcessStatus, int, int]:
    return (progress.status, progress.completed_images, progress.total_images)


async def _hub(dsn: str, listen_dsn: str | None = None) -> tuple[Any, aio.ProgressHub]:
    pool = aio.make_async_pool(dsn, max_size=POOL_MAX)
    await pool.open(wait=True)
    hub = aio.ProgressHub(pool, listen_dsn)
    try:
        await hub.start()
    except BaseException:
        await pool.close()
        raise
    return pool, hub


async def _save(dsn: str, batch_id: str, results: list[Any], offset: int = 0) -> None:
    def save() -> None:
        with psycopg.connect(dsn) as c:
            save_batch(c, batch_id, results, position_offset=offset)

    await asyncio.to_thread(save)


async def _collect(source: AsyncIterator[BatchProgress], ready: asyncio.Event | None = None) -> list[Any]:
    out = []
    async for progress in source:
        out.append(seen(progress))
        if ready is not None:
            ready.set()
    return out


def test_the_async_calls_match_the_sync_ones(dsn: str, conn: psycopg.Connection[Any]) -> None:
    async def scenario() -> tuple[BatchProgress, BatchProgress, BatchProgress]:
        pool = aio.make_async_pool(dsn)
        await pool.open(wait=True)
        try:
            registered = await aio.register_batch(pool, "a", 10)
            again = await aio.register_batch(pool, "a", 10)
            with pytest.raises(BatchConflictError, match="total_images=10"):
                await aio.register_batch(pool, "a", 11)
            with pytest.raises(BatchNotFoundError, match="'nope'"):
                await aio.get_progress(pool, "nope")
            async with await psycopg.AsyncConnection.connect(dsn) as own:
                read = await aio.get_progress(own, "a")
        finally:
            await pool.close()
        return registered, again, read

    registered, again, read = run(scenario)

    assert registered == again == read == get_progress(conn, "a")
    assert registered.status == ProcessStatus.PENDING and registered.total_images == 10


def test_the_async_calls_work_through_transaction_pooling(bouncer_transaction: str, dsn: str) -> None:
    pooled = through(bouncer_transaction, dsn)

    async def client(i: int, pool: Any) -> int:
        for _ in range(7):  # past psycopg's default prepare threshold
            await aio.register_batch(pool, f"p{i}", 5)
        return (await aio.get_progress(pool, f"p{i}")).total_images

    async def scenario() -> list[int]:
        pool = aio.make_async_pool(pooled, min_size=8, max_size=8)
        await pool.open(wait=True)
        try:
            return await asyncio.gather(*(client(i, pool) for i in range(8)))
        finally:
            await pool.close()

    assert run(scenario) == [5] * 8


def test_one_listening_connection_fans_out_to_every_follower(dsn: str, db: psycopg.Connection[Any]) -> None:
    register_batch(db, "B", 30)
    register_batch(db, "C", 10)
    data = make_batch(30, prefix="B")

    async def scenario() -> tuple[list[list[Any]], list[list[Any]], int, int]:
        pool, hub = await _hub(dsn)
        try:
            ready = [asyncio.Event() for _ in range(MANY + OTHERS)]
            many = [asyncio.create_task(_collect(hub.follow("B"), ready[i])) for i in range(MANY)]
            others = [asyncio.create_task(_collect(hub.follow("C"), ready[MANY + i])) for i in range(OTHERS)]
            await asyncio.gather(*(r.wait() for r in ready))  # every follower has its first state
            held = await asyncio.to_thread(_connections, db)
            for k in (0, 10, 20):
                await _save(dsn, "B", data[k : k + 10], k)
            await _save(dsn, "C", make_batch(10, prefix="C"))
            ends = await asyncio.gather(*many), await asyncio.gather(*others)
            return *ends, held, hub.followers
        finally:
            await hub.close()
            await pool.close()

    many, others, held, left = run(scenario)

    expected = [
        (ProcessStatus.PENDING, 0, 30),
        (ProcessStatus.STARTED, 10, 30),
        (ProcessStatus.STARTED, 20, 30),
        (ProcessStatus.SUCCESS, 30, 30),
    ]
    # A follower may miss an intermediate state (the next carries the totals), never the end.
    assert all(f[0] == expected[0] and f[-1] == expected[-1] and set(f) <= set(expected) for f in many)
    assert all(f == [(ProcessStatus.PENDING, 0, 10), (ProcessStatus.SUCCESS, 10, 10)] for f in others)
    assert held <= 1 + POOL_MAX  # MANY + OTHERS followers: one listener and the pool
    assert left == 0  # every stream ended at SUCCESS and unsubscribed


def _connections(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone()
    return int(row[0]) if row else 0


def test_a_forged_event_is_not_believed_by_the_hub(dsn: str, db: psycopg.Connection[Any]) -> None:
    register_batch(db, "B", 10)
    data = make_batch(10, prefix="B")
    save_batch(db, "B", data[:1])

    async def scenario() -> list[Any]:
        pool, hub = await _hub(dsn)
        try:
            updates = hub.follow("B", idle_timeout=60)
            first = seen(await anext(updates))
            await asyncio.to_thread(notify, dsn, FORGED)
            await _save(dsn, "B", data[1:5], 1)
            second = seen(await anext(updates))
            await updates.aclose()
            return [first, second]
        finally:
            await hub.close()
            await pool.close()

    assert run(scenario) == [(ProcessStatus.STARTED, 1, 10), (ProcessStatus.STARTED, 5, 10)]


def test_a_forged_event_is_not_believed_by_follow_progress(dsn: str, db: psycopg.Connection[Any]) -> None:
    register_batch(db, "B", 10)
    save_batch(db, "B", make_batch(10, prefix="B")[:1])
    yielded = []

    with pytest.raises(TimeoutError, match=r"no progress for 1\.5 s"):
        for progress in follow_progress(dsn, "B", idle_timeout=1.5):
            yielded.append(seen(progress))
            notify(dsn, FORGED)

    assert yielded == [(ProcessStatus.STARTED, 1, 10)]  # not SUCCESS, 10 of 10


def test_malformed_payloads_are_ignored_with_a_debug_line(
    dsn: str, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    register_batch(db, "B", 10)
    data = make_batch(10, prefix="B")
    caplog.set_level(logging.DEBUG, logger="loader.progress.read")

    async def scenario() -> list[Any]:
        pool, hub = await _hub(dsn)
        try:
            collected = asyncio.create_task(_collect(hub.follow("B"), ready := asyncio.Event()))
            await ready.wait()
            for payload in MALFORMED:
                await asyncio.to_thread(notify, dsn, payload)
            await _save(dsn, "B", data)
            return await collected
        finally:
            await hub.close()
            await pool.close()

    followed = run(scenario)

    assert followed == [(ProcessStatus.PENDING, 0, 10), (ProcessStatus.SUCCESS, 10, 10)]
    ignored = [r.getMessage() for r in caplog.records if "names no batch" in r.getMessage()]
    assert len(ignored) == len(MALFORMED)


def test_malformed_payloads_do_not_stop_follow_progress(dsn: str, db: psycopg.Connection[Any]) -> None:
    register_batch(db, "B", 10)
    data = make_batch(10, prefix="B")
    yielded = []

    for progress in follow_progress(dsn, "B", idle_timeout=60):
        yielded.append(seen(progress))
        if progress.status == ProcessStatus.PENDING:
            for payload in MALFORMED:
                notify(dsn, payload)
            save_batch(db, "B", data)

    assert yielded == [(ProcessStatus.PENDING, 0, 10), (ProcessStatus.SUCCESS, 10, 10)]


@pytest.fixture
def busy_batch(dsn: str) -> Iterator[None]:
    """Another batch committing one-image calls without pause: events on the channel all along."""
    stop = threading.Event()
    data = make_batch(2000, prefix="busy")

    def keep_saving() -> None:
        with psycopg.connect(dsn) as c:
            register_batch(c, "busy", len(data))
            for k in range(len(data)):
                if stop.is_set():
                    return
                save_batch(c, "busy", data[k : k + 1], position_offset=k)

    worker = threading.Thread(target=keep_saving)
    worker.start()
    yield
    stop.set()
    worker.join()


def test_the_idle_timeout_counts_only_the_followed_batch(
    dsn: str, db: psycopg.Connection[Any], busy_batch: None
) -> None:
    register_batch(db, "quiet", 10)

    with pytest.raises(TimeoutError, match=r"'quiet': no progress for 1\.5 s"):
        for _ in follow_progress(dsn, "quiet", idle_timeout=1.5):
            pass

    async def scenario() -> None:
        pool, hub = await _hub(dsn)
        try:
            await _collect(hub.follow("quiet", idle_timeout=1.5))
        finally:
            await hub.close()
            await pool.close()

    with pytest.raises(TimeoutError, match=r"'quiet': no progress for 1\.5 s"):
        run(scenario)
    assert get_progress(db, "busy").completed_images > 0  # the other batch was busy meanwhile


def test_the_async_iterator_follows_a_batch_to_its_end(dsn: str, db: psycopg.Connection[Any]) -> None:
    register_batch(db, "B", 20)
    data = make_batch(20, prefix="B")

    async def scenario() -> list[Any]:
        out = []
        async for progress in aio.follow_progress(dsn, "B", idle_timeout=60):
            out.append(seen(progress))
            if progress.completed_images < 20:
                await _save(dsn, "B", data[progress.completed_images :][:10], progress.completed_images)
        return out

    assert run(scenario) == [
        (ProcessStatus.PENDING, 0, 20),
        (ProcessStatus.STARTED, 10, 20),
        (ProcessStatus.SUCCESS, 20, 20),
    ]


def test_following_an_unknown_batch_raises_and_leaves_no_follower(dsn: str) -> None:
    async def scenario() -> int:
        pool, hub = await _hub(dsn)
        try:
            with pytest.raises(BatchNotFoundError, match="'nope'"):
                await anext(hub.follow("nope"))
            return hub.followers
        finally:
            await hub.close()
            await pool.close()

    assert run(scenario) == 0


def test_the_hub_refuses_a_transaction_pooler_and_listens_on_the_direct_connection_given(
    bouncer_transaction: str, dsn: str, db: psycopg.Connection[Any]
) -> None:
    pooled = through(bouncer_transaction, dsn)
    register_batch(db, "B", 10)

    async def refused() -> None:
        await _hub(pooled)

    async def direct() -> list[Any]:
        pool, hub = await _hub(pooled, listen_dsn=dsn)
        try:
            collected = asyncio.create_task(_collect(hub.follow("B"), ready := asyncio.Event()))
            await ready.wait()
            await _save(dsn, "B", make_batch(10, prefix="B"))
            return await collected
        finally:
            await hub.close()
            await pool.close()

    with pytest.raises(ConfigurationError, match="transaction pooler"):
        run(refused)
    assert run(direct) == [(ProcessStatus.PENDING, 0, 10), (ProcessStatus.SUCCESS, 10, 10)]


def test_with_heartbeats_fills_quiet_intervals_and_closes_its_source() -> None:
    async def scenario() -> tuple[list[Any], bool]:
        done = asyncio.Event()

        async def slow() -> AsyncIterator[int]:
            try:
                yield 1
                await asyncio.sleep(0.35)
                yield 2
                await asyncio.sleep(3600)
                yield 3
            finally:
                done.set()

        out: list[Any] = []
        async with aclosing(aio.with_heartbeats(slow(), 0.1)) as beats:
            async for item in beats:
                out.append(item)
                if out.count(None) >= 5:
                    break
        return out, done.is_set()

    out, source_closed = run(scenario)

    assert out[0] == 1 and 2 in out and out.count(None) == 5 and 3 not in out
    assert source_closed


def test_the_hub_listens_again_after_losing_its_connection(dsn: str, db: psycopg.Connection[Any]) -> None:
    register_batch(db, "B", 10)
    data = make_batch(10, prefix="B")

    async def scenario() -> list[Any]:
        pool, hub = await _hub(dsn)
        try:
            updates = hub.follow("B", idle_timeout=60)
            first = seen(await anext(updates))
            assert hub._conn is not None
            lost = hub._conn.info.backend_pid
            await asyncio.to_thread(db.execute, "SELECT pg_terminate_backend(%s)", [lost])
            # Likely committed while the hub has no listening connection (it waits
            # RECONNECT_S first): that event is lost, the read it makes once it
            # listens again is not.
            await _save(dsn, "B", data[:5])
            second = seen(await anext(updates))
            await _save(dsn, "B", data[5:], 5)
            third = seen(await anext(updates))
            await updates.aclose()
            return [first, second, third]
        finally:
            await hub.close()
            await pool.close()

    assert run(scenario) == [
        (ProcessStatus.PENDING, 0, 10),
        (ProcessStatus.STARTED, 5, 10),
        (ProcessStatus.SUCCESS, 10, 10),
    ]
