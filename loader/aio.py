"""The loader for asyncio applications (FastAPI): psycopg's async connections and pools.

- ``make_async_pool``, ``get_progress``, ``register_batch``: the sync calls
  themselves, not copies: their steps (loader.steps: statements, retries,
  errors and messages) run here on async connections, and the pool is made
  from make_pool's arguments (loader.connection.pool_arguments);
- ``follow_progress``: a batch's progress as an async iterator, on a listening
  connection of its own (a script, a worker), driving the sync follower's plan
  (loader.progress.read.follow_plan);
- ``ProgressHub``: one listening connection per process, fanned out to any
  number of followers (an API streaming progress to browsers). An event wakes
  the hub, which reads the batch's row once for all of that batch's followers;
- ``with_heartbeats``: an async iterator that also yields None after every
  quiet interval (server-sent-event comments keep proxies from closing the stream).

Events are wake-ups, never the truth (see loader.progress.read): what a follower
yields is read from the database, so a forged or malformed notification is
neither believed nor fatal. Idle timeouts count per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, closing
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed

from loader import queries, steps
from loader.connection import (
    FROM_ENVIRONMENT,
    SCHEMA_VERSION,
    _FromEnvironment,
    check_idle,
    pool_arguments,
    pool_closed,
    pool_threshold,
    pool_unreachable,
    preparing,
    remember_pool_threshold,
)
from loader.dsn import check_dsn
from loader.errors import (
    ConfigurationError,
    DatabaseError,
    LoaderError,
    quoted,
    redact_dsn,
    translating,
)
from loader.models import BatchProgress
from loader.progress.read import (
    CHANNEL,
    DELIVERY_CHECK_S,
    PROBE_CONNECT_TIMEOUT_S,
    Following,
    IdleDeadline,
    Listen,
    Read,
    Wait,
    event_batch_id,
    follow_plan,
    following_lost,
    listen,
    listen_conninfo,
    not_delivered,
    probe_channel,
    unlisten,
)

__all__ = [
    "AsyncConnectable",
    "ProgressHub",
    "follow_progress",
    "get_progress",
    "make_async_pool",
    "register_batch",
    "with_heartbeats",
]

log = logging.getLogger("loader.aio")

AsyncConnectable = AsyncConnectionPool | psycopg.AsyncConnection[Any]

T = TypeVar("T")

#: Seconds the hub waits before connecting again after losing its listening
#: connection: long enough not to hammer a restarting server, short enough
#: that followers barely notice (they get a fresh read once it is back).
RECONNECT_S = 1.0


async def _call(target: AsyncConnectable, step: steps.Step[T]) -> T:
    """Run a shared step (loader.steps) on a connection from ``target``."""
    async with connection(target) as conn:
        return await steps.arun(conn, step)


def make_async_pool(
    conninfo: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    timeout: float = 30.0,
    name: str | None = None,
    prepare_threshold: int | _FromEnvironment | None = FROM_ENVIRONMENT,
) -> AsyncConnectionPool:
    """loader.make_pool for asyncio (the same arguments, pool_arguments): returned closed;
    ``await pool.open()`` it."""
    arguments = pool_arguments(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        name=name,
        prepare_threshold=prepare_threshold,
    )
    pool: AsyncConnectionPool = AsyncConnectionPool(**arguments, check=AsyncConnectionPool.check_connection)
    remember_pool_threshold(pool, arguments["kwargs"]["prepare_threshold"])
    return pool


@asynccontextmanager
async def connection(target: AsyncConnectable) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """loader.connection.connection for asyncio: an idle async connection, schema-checked,
    from a pool or the one given. Only the checkout is its own."""
    async with AsyncExitStack() as stack:
        if isinstance(target, AsyncConnectionPool):
            try:
                conn = await stack.enter_async_context(target.connection())
            except PoolClosed as exc:
                raise pool_closed(target, "await pool.open()") from exc
            except psycopg.OperationalError as exc:
                raise pool_unreachable(target, exc) from exc
        elif isinstance(target, psycopg.AsyncConnection):
            check_idle(target)
            conn = target
        else:
            raise TypeError(
                "expected a psycopg_pool.AsyncConnectionPool or psycopg.AsyncConnection, "
                f"got {type(target).__name__}"
            )
        stack.enter_context(preparing(conn, pool_threshold(target)))
        await steps.arun(conn, steps.check_schema(conn, SCHEMA_VERSION))
        yield conn


async def get_progress(pool_or_conn: AsyncConnectable, batch_id: str) -> BatchProgress:
    """loader.get_progress, awaited (loader.steps.get_progress)."""
    return await _call(pool_or_conn, steps.get_progress(batch_id))


async def register_batch(pool_or_conn: AsyncConnectable, batch_id: str, total_images: int) -> BatchProgress:
    """loader.register_batch, awaited (loader.steps.register_batch): idempotent for the same total."""
    return await _call(pool_or_conn, steps.register_batch(batch_id, total_images))


async def _check_delivery(listener: psycopg.AsyncConnection[Any], conninfo: str) -> None:
    """loader.progress.read.check_delivery for an async listener, statement for statement."""
    channel = probe_channel()
    await listener.execute(listen(channel))
    async with await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, prepare_threshold=None, connect_timeout=PROBE_CONNECT_TIMEOUT_S
    ) as sender:
        await sender.execute(queries.get("progress_delivery_probe"), {"channel": channel})
    if not [n async for n in listener.notifies(timeout=DELIVERY_CHECK_S, stop_after=1)]:
        raise not_delivered(conninfo)
    await listener.execute(unlisten(channel))


async def _listener(conninfo: str) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection that notifications from other sessions reach, listening on
    loader_progress; ConfigurationError behind a transaction pooler (_check_delivery)."""
    check_dsn(conninfo)
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, prepare_threshold=None)
    try:
        await _check_delivery(conn, conninfo)
        await conn.execute(listen(CHANNEL))
    except BaseException:
        await conn.close()
        raise
    return conn


async def _next_event_for(conn: psycopg.AsyncConnection[Any], batch_id: str, deadline: IdleDeadline) -> None:
    """Until an event names ``batch_id``; others do not restart the wait. TimeoutError at the deadline."""
    while True:
        async for notify in conn.notifies(timeout=deadline.remaining(), stop_after=1):
            if event_batch_id(notify.payload) == batch_id:
                return


async def follow_progress(
    conninfo: str, batch_id: str, *, idle_timeout: float | None = None, listen_dsn: str | None = None
) -> AsyncGenerator[BatchProgress, None]:
    """loader.follow_progress as an async iterator, on a listening connection of its own:
    the same plan (loader.progress.read.follow_progress), reads and errors.

    For many followers in one process, use a ProgressHub (one connection for all).
    """
    target = listen_conninfo(conninfo, listen_dsn)
    check_dsn(target)
    with (
        translating(f"following batch {quoted(batch_id)}", following_lost(batch_id)),
        closing(follow_plan(batch_id, idle_timeout)) as plan,
    ):
        async with await psycopg.AsyncConnection.connect(
            target, autocommit=True, prepare_threshold=None
        ) as conn:
            reply: BatchProgress | None = None
            while True:
                try:
                    effect = plan.send(reply)
                except StopIteration:
                    return
                reply = None
                if isinstance(effect, Read):
                    reply = await get_progress(conn, batch_id)
                elif isinstance(effect, Listen):
                    await _check_delivery(conn, target)
                    await conn.execute(listen(CHANNEL))
                elif isinstance(effect, Wait):
                    await _next_event_for(conn, batch_id, effect.deadline)
                else:
                    yield effect.progress


@dataclass(eq=False)
class _Follower:
    """One follower's mailbox: the newest state read for its batch (or the error reading it)."""

    #: The hub's read counter when it joined: reads started before are not for it.
    joined: int
    latest: BatchProgress | LoaderError | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def next(self, timeout: float | None) -> BatchProgress:
        """The next state offered; TimeoutError after ``timeout`` seconds without one."""
        async with asyncio.timeout(timeout):
            await self.changed.wait()
        self.changed.clear()
        item = self.latest
        if isinstance(item, LoaderError):
            raise item
        assert item is not None  # set before changed is
        return item


@dataclass(eq=False)
class _Topic:
    """The followers of one batch, and whether a read of its row is running or due."""

    followers: set[_Follower] = field(default_factory=set)
    reading: bool = False
    again: bool = False


class ProgressHub:
    """One listening connection for a whole process, fanned out to any number of followers.

    ``pool`` (an AsyncConnectionPool, e.g. through PgBouncer) serves the reads;
    ``listen_dsn`` is a direct connection to the same database for LISTEN
    (default: LOADER_LISTEN_DSN, else the pool's conninfo). Reads per event are
    one per batch, whatever its number of followers: a follower that joins
    while a read runs waits for the next one, so what it sees never goes back
    in time. The listening connection is re-established when lost (every batch
    is then read again, for the events missed meanwhile).

    Use ``async with ProgressHub(pool) as hub`` (or ``await hub.start()`` /
    ``await hub.close()``) inside the running event loop.
    """

    def __init__(self, pool: AsyncConnectionPool, listen_dsn: str | None = None) -> None:
        self.pool = pool
        conninfo = pool.conninfo if isinstance(pool.conninfo, str) else None
        self.listen_dsn = listen_conninfo(conninfo or "", listen_dsn)
        if conninfo is None and not self.listen_dsn:
            raise ConfigurationError("the pool's conninfo is a callable: give the hub a listen_dsn")
        self._topics: dict[str, _Topic] = {}
        self._reads = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._listening: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        #: Notifications received (any payload); the benchmark and tests read it.
        self.events = 0

    @property
    def followers(self) -> int:
        """Followers subscribed now (a stream that ended or was disconnected is gone)."""
        return sum(len(topic.followers) for topic in self._topics.values())

    async def start(self) -> ProgressHub:
        """Connect and LISTEN; ConfigurationError at once if notifications do not arrive."""
        if self._listening is not None:
            return self
        with translating("listening for progress events"):
            self._conn = await _listener(self.listen_dsn)
        self._listening = asyncio.create_task(self._listen(), name="loader-progress-hub")
        log.info("progress hub listening on %s", redact_dsn(self.listen_dsn))
        return self

    async def close(self) -> None:
        """Stop listening; followers still waiting get a DatabaseError."""
        tasks = [t for t in (self._listening, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._listening = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        stopped = DatabaseError("the progress hub was closed")
        for topic in self._topics.values():
            for follower in topic.followers:
                follower.latest = stopped
                follower.changed.set()

    async def __aenter__(self) -> ProgressHub:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _listen(self) -> None:
        while True:
            try:
                if self._conn is None:
                    self._conn = await _listener(self.listen_dsn)
                    log.info("progress hub listening again; reading every followed batch")
                    for followed in list(self._topics):
                        self._wake(followed)
                async for notify in self._conn.notifies():
                    self.events += 1
                    batch_id = event_batch_id(notify.payload)
                    if batch_id is not None and batch_id in self._topics:
                        self._wake(batch_id)
            except Exception as exc:  # whatever broke it, the hub listens again
                # A lost connection, a refused reconnect, or anything else: the
                # followers of every batch depend on this one task, so it never
                # ends but by close() (CancelledError is no Exception).
                log.warning(
                    "progress hub stopped listening (%s: %s); again in %g s",
                    type(exc).__name__,
                    redact_dsn(str(exc)),
                    RECONNECT_S,
                )
                await self._drop_listener()
                await asyncio.sleep(RECONNECT_S)

    async def _drop_listener(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def _wake(self, batch_id: str) -> None:
        topic = self._topics.get(batch_id)
        if topic is None:
            return
        if topic.reading:
            topic.again = True  # read once more when the running read ends
            return
        topic.reading = True
        task = asyncio.create_task(self._read(batch_id, topic))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, batch_id: str, topic: _Topic) -> None:
        try:
            while True:
                topic.again = False
                self._reads += 1
                started = self._reads
                try:
                    found: BatchProgress | LoaderError = await get_progress(self.pool, batch_id)
                except LoaderError as exc:
                    found = exc
                for follower in topic.followers:
                    if follower.joined < started:
                        follower.latest = found
                        follower.changed.set()
                if not topic.again:
                    return
        finally:
            topic.reading = False

    async def follow(
        self, batch_id: str, *, idle_timeout: float | None = None
    ) -> AsyncGenerator[BatchProgress, None]:
        """The batch's progress now, then at every committed change, until it finishes.

        loader.follow_progress's contract (BatchNotFoundError, TimeoutError after
        ``idle_timeout`` seconds without a change of this batch), shared: close
        the iterator when the client goes away (``contextlib.aclosing``) so
        its subscription ends at once.
        """
        if self._listening is None:
            raise ConfigurationError("the progress hub is not started; use `async with ProgressHub(pool)`")
        topic = self._topics.setdefault(batch_id, _Topic())
        follower = _Follower(joined=self._reads)
        topic.followers.add(follower)
        try:
            self._wake(batch_id)  # the first state, from a read started after joining
            follow = Following(batch_id, idle_timeout, await follower.next(None))
            yield follow.last
            while not follow.finished:
                try:
                    progress = await follower.next(follow.deadline.remaining())
                except TimeoutError:
                    raise follow.deadline.expired() from None
                if follow.changed(progress):
                    yield progress
        finally:
            topic.followers.discard(follower)
            if not topic.followers and self._topics.get(batch_id) is topic:
                del self._topics[batch_id]


async def with_heartbeats(source: AsyncIterator[T], every: float) -> AsyncGenerator[T | None, None]:
    """``source``'s items, and None after every ``every`` seconds in which none came.

    Closes ``source`` when the iteration ends, however it ends.
    """
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
