"""A batch's progress: its stored totals, followed live, recounted.

Following listens on ``loader_progress``. An event there is a wake-up, never
the truth: any session may NOTIFY that channel (no privilege exists for it), so
a follower reads only the batch id from a payload and then reads the batch's
figures from the database; a payload that is not a JSON object naming a batch
is ignored (logged at debug). LISTEN needs a session that stays on one server
connection: through a transaction pooler a follower gets no events, so it
checks delivery first and refuses with one line if they do not arrive.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
import uuid
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from loader import queries, steps
from loader.connection import Connectable, call, connection
from loader.dsn import check_dsn
from loader.errors import BatchNotFoundError, ConfigurationError, printable, quoted, redact_dsn, translating
from loader.models import BatchProgress, ProcessStatus

__all__ = ["BatchNotFoundError", "follow_progress", "get_progress", "recount_batch"]

log = logging.getLogger("loader.progress.read")

#: The channel every merge that changes a batch's totals notifies, on commit.
CHANNEL = "loader_progress"

#: A direct connection to PostgreSQL for LISTEN, when the main DSN goes through
#: a transaction pooler.
LISTEN_DSN_ENV = "LOADER_LISTEN_DSN"

#: Seconds the delivery check waits for its own notification. On a direct or
#: session-pooled connection it arrives within milliseconds of the sender's
#: commit; through a transaction pooler it never does, and the follower is
#: refused after this wait.
DELIVERY_CHECK_S = 2.0

#: Seconds the delivery check's sending connection may take to connect.
PROBE_CONNECT_TIMEOUT_S = 10

T = TypeVar("T")

FINISHED = frozenset({ProcessStatus.SUCCESS, ProcessStatus.FAILURE})


def get_progress(pool_or_conn: Connectable, batch_id: str) -> BatchProgress:
    """The batch's totals, status and percentage, as last committed (loader.steps.get_progress)."""
    return call(pool_or_conn, steps.get_progress(batch_id))


def event_batch_id(payload: str) -> str | None:
    """The batch a loader_progress payload names, or None for a malformed payload.

    Only the id is taken: the figures a payload carries are not believed (any
    session may send one); followers read them from the database.
    """
    try:
        data: Any = json.loads(payload)
        batch_id = data.get("batch_id") if isinstance(data, dict) else None
    except Exception:  # RecursionError for [[[...]]], or anything else
        # Any role that may connect may send anything: a payload that cannot be
        # read, however it fails, is ignored like one that names no batch.
        batch_id = None
    if not isinstance(batch_id, str):
        log.debug("ignored a %s payload that names no batch: %.200r", CHANNEL, payload)
        return None
    return batch_id


def state(p: BatchProgress) -> tuple[object, ...]:
    """What a follower compares to decide that a batch changed."""
    return (p.status, p.total_images, p.completed_images, p.failed_images)


def listen_conninfo(conninfo: str, listen_dsn: str | None = None) -> str:
    """The DSN to LISTEN on: ``listen_dsn``, else LOADER_LISTEN_DSN, else ``conninfo``."""
    return listen_dsn or os.environ.get(LISTEN_DSN_ENV) or conninfo


def probe_channel() -> str:
    """A private channel for one delivery check."""
    return f"loader_probe_{uuid.uuid4().hex}"


def not_delivered(conninfo: str) -> ConfigurationError:
    return ConfigurationError(
        f"cannot follow progress through {redact_dsn(conninfo)!r}: a notification sent from another "
        f"session did not arrive within {DELIVERY_CHECK_S:g} s, as behind a transaction pooler "
        "(PgBouncer pool_mode = transaction), which forwards no notifications to a listener; "
        f"give a direct connection to PostgreSQL for listening (--listen-dsn, {LISTEN_DSN_ENV}, listen_dsn=)"
    )


def listen(channel: str) -> sql.Composed:
    return sql.SQL("LISTEN {}").format(sql.Identifier(channel))


def unlisten(channel: str) -> sql.Composed:
    return sql.SQL("UNLISTEN {}").format(sql.Identifier(channel))


def check_delivery(listener: psycopg.Connection[Any], conninfo: str) -> None:
    """Refuse ``listener`` unless a NOTIFY from another session reaches it.

    Sent from a second connection, not the listener itself: through a
    transaction pooler the listener's own NOTIFY could run on the very server
    connection that ran its LISTEN and come back in the same response, which
    would pass a check the later events fail. Done before ``LISTEN
    loader_progress``, so a refused listener leaves no such LISTEN behind on a
    pooled server connection. loader.aio's check is its twin, statement for statement.
    """
    channel = probe_channel()
    listener.execute(listen(channel))
    with psycopg.connect(
        conninfo, autocommit=True, prepare_threshold=None, connect_timeout=PROBE_CONNECT_TIMEOUT_S
    ) as sender:
        sender.execute(queries.get("progress_delivery_probe"), {"channel": channel})
    if not any(True for _ in listener.notifies(timeout=DELIVERY_CHECK_S, stop_after=1)):
        raise not_delivered(conninfo)
    listener.execute(unlisten(channel))


class IdleDeadline:
    """When a follower gives up: ``idle_timeout`` seconds after its batch last changed."""

    def __init__(self, batch_id: str, idle_timeout: float | None) -> None:
        self.batch_id = batch_id
        self.idle_timeout = idle_timeout
        self.restart()

    def restart(self) -> None:
        self.at = None if self.idle_timeout is None else time.monotonic() + self.idle_timeout

    def remaining(self) -> float | None:
        """Seconds left (None: no limit). Raises TimeoutError once none are left."""
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self) -> TimeoutError:
        return TimeoutError(f"batch {quoted(self.batch_id)}: no progress for {self.idle_timeout} s")


class Following:
    """What a follower decides, in either API: which reads it yields (those whose state
    differs from the last one yielded), when it is done (a finished state), and when it
    gives up (``deadline``: ``idle_timeout`` seconds after its batch last changed)."""

    def __init__(self, batch_id: str, idle_timeout: float | None, first: BatchProgress) -> None:
        self.last = first
        self.deadline = IdleDeadline(batch_id, idle_timeout)

    @property
    def finished(self) -> bool:
        return self.last.status in FINISHED

    def changed(self, progress: BatchProgress) -> bool:
        """Whether ``progress`` is to be yielded: it becomes the last state, the deadline restarts."""
        if state(progress) == state(self.last):
            return False
        self.last = progress
        self.deadline.restart()
        return True


def following_lost(batch_id: str) -> str:
    """The advice when a follower's connection went away (an id's control characters
    escaped, as every message escapes them: the advice is printed to a terminal)."""
    return (
        "following stopped; the batch and its load are not affected: "
        f"follow it again with `loader status {printable(shlex.quote(batch_id))} --follow`"
    )


# What follow_plan asks of its driver (follow_progress here and in loader.aio).


@dataclass(frozen=True)
class Read:
    """Read the batch's progress (get_progress on the listening connection) and send it back."""


@dataclass(frozen=True)
class Listen:
    """Check that notifications from other sessions arrive (check_delivery), then LISTEN loader_progress."""


@dataclass(frozen=True)
class Wait:
    """Wait for an event naming the batch; TimeoutError from ``deadline`` when none comes in time."""

    deadline: IdleDeadline


@dataclass(frozen=True)
class Show:
    """Yield ``progress`` to the follower."""

    progress: BatchProgress


FollowPlan = Generator[Read | Listen | Wait | Show, BatchProgress | None, T]


def _read() -> FollowPlan[BatchProgress]:
    progress = yield Read()
    assert progress is not None, "a Read is answered with the batch's progress"
    return progress


def follow_plan(batch_id: str, idle_timeout: float | None) -> FollowPlan[None]:
    """follow_progress's order of reads, listening and waits, for both APIs (sans I/O, as
    loader.steps): a finished batch is shown at once, without listening; otherwise the
    row is read again once listening, so a change committed meanwhile is not missed."""
    first = yield from _read()
    if first.status in FINISHED:
        # Nothing to listen for: the final state, through a transaction pooler too.
        yield Show(first)
        return
    yield Listen()
    follow = Following(batch_id, idle_timeout, (yield from _read()))
    yield Show(follow.last)
    while not follow.finished:
        yield Wait(follow.deadline)
        progress = yield from _read()
        if follow.changed(progress):
            yield Show(progress)


def _wait_for_event(conn: psycopg.Connection[Any], batch_id: str, deadline: IdleDeadline) -> None:
    """Until an event names ``batch_id``; events of other batches do not restart the wait."""
    while True:
        for notify in conn.notifies(timeout=deadline.remaining(), stop_after=1):
            if event_batch_id(notify.payload) == batch_id:
                return


def follow_progress(
    conninfo: str, batch_id: str, *, idle_timeout: float | None = None, listen_dsn: str | None = None
) -> Iterator[BatchProgress]:
    """The batch's progress now, then at every commit that changes it, until it finishes.

    Listens on its own autocommit connection (``LISTEN loader_progress``) to
    ``listen_dsn``, else LOADER_LISTEN_DSN, else ``conninfo``, and reads the
    batch's row there: before it yields anything, so a change committed
    meanwhile is not missed, and at each event naming the batch. Yields only
    states that differ from the last one yielded (a replay, or a forged event,
    yields nothing). Ends after yielding a SUCCESS or FAILURE state (at once
    for a finished batch, which needs no notifications). Raises BatchNotFoundError
    for an unknown batch, ConfigurationError when notifications do not reach the
    connection (a transaction pooler) of an unfinished batch, and TimeoutError
    when ``idle_timeout`` seconds pass without a change of this batch.
    The order is follow_plan's, which loader.aio.follow_progress drives too.
    """
    target = listen_conninfo(conninfo, listen_dsn)
    check_dsn(target)
    with (
        translating(f"following batch {quoted(batch_id)}", following_lost(batch_id)),
        psycopg.connect(target, autocommit=True, prepare_threshold=None) as conn,
        closing(follow_plan(batch_id, idle_timeout)) as plan,
    ):
        reply: BatchProgress | None = None
        while True:
            try:
                effect = plan.send(reply)
            except StopIteration:
                return
            reply = None
            if isinstance(effect, Read):
                reply = get_progress(conn, batch_id)
            elif isinstance(effect, Listen):
                check_delivery(conn, target)
                conn.execute(listen(CHANNEL))
            elif isinstance(effect, Wait):
                _wait_for_event(conn, batch_id, effect.deadline)
            else:
                yield effect.progress


def recount_batch(pool_or_conn: Connectable, batch_id: str) -> BatchProgress:
    """Recount a batch's totals from its stored rows, under its lock, and store them.

    The merge keeps every batch's totals exact from each call's changes and never
    recounts. Batches written by something else (the application's old save
    path, rows added or deleted by hand) need this once; it changes nothing on a
    batch the loader kept. Announced on loader_progress like a merge.
    """
    with connection(pool_or_conn) as conn:
        with translating(f"recounting batch {quoted(batch_id)}"), conn.transaction():
            conn.execute(queries.get("batch_lock"), {"batch_id": batch_id})
            conn.execute(queries.get("recount_batch"), {"batch_id": batch_id})
        return get_progress(conn, batch_id)
