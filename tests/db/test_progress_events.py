"""Progress events: every merge that changes a batch's totals notifies loader_progress
inside its own statement, delivered on commit only; follow_progress and `loader
status --follow` turn them into a live view that ends when the batch finishes."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
import psycopg
import pytest
from click.testing import CliRunner
from helpers.checks import MERGE_MARK, hold_image_path

from loader import register_batch, save_batch
from loader.cli import cli
from loader.datagen import make_batch
from loader.errors import DatabaseError
from loader.models import BatchProgress, ProcessStatus
from loader.progress.read import CHANNEL, follow_progress
from loader.save.call import STATEMENTS_PER_ATTEMPT

# Seconds a test waits for notifications that should (or should not) arrive.
WAIT_S = 1.0


@pytest.fixture
def listener(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        yield conn


def received(listener: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return [json.loads(n.payload) for n in listener.notifies(timeout=WAIT_S)]


def test_events_arrive_in_order_once_per_commit_and_not_for_a_replay(
    conn: psycopg.Connection[Any], listener: psycopg.Connection[Any]
) -> None:
    register_batch(conn, "ev", 30)
    data = make_batch(30, prefix="ev")
    data[25] = {"image_path": "/ev/failed.jpg", "status": "failed", "error": "engine crashed"}
    reports = [save_batch(conn, "ev", data[k : k + 10], position_offset=k) for k in (0, 10, 20)]

    events = received(listener)

    assert events == [
        {"batch_id": "ev", "completed": 10, "failed": 0, "total": 30, "status": "STARTED"},
        {"batch_id": "ev", "completed": 20, "failed": 0, "total": 30, "status": "STARTED"},
        {"batch_id": "ev", "completed": 29, "failed": 1, "total": 30, "status": "SUCCESS"},
    ]
    # Inside the merge: no statement was added to the call.
    assert {r.statements for r in reports} == {STATEMENTS_PER_ATTEMPT}
    save_batch(conn, "ev", data[10:20], position_offset=10)
    assert received(listener) == []


def _wait_for(db: psycopg.Connection[Any], pid: int, query_part: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        row = db.execute(
            "SELECT query, wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()
        if row and query_part in (row[0] or "") and row[1] == "Lock":
            return
        assert time.monotonic() < deadline, f"the call never waited in {query_part!r}: {row}"
        time.sleep(0.02)


def test_no_event_for_a_call_killed_after_its_merge_or_during_it(
    dsn: str, db: psycopg.Connection[Any], listener: psycopg.Connection[Any]
) -> None:
    # At COMMIT, after the merge notified: a deferred trigger parks the COMMIT
    # on an advisory lock the test holds (as tests/db/test_faults.py does).
    db.execute(
        """
        CREATE FUNCTION fault_gate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER fault_gate AFTER UPDATE ON batch_executions
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fault_gate();
        """
    )
    with psycopg.connect(dsn) as c:
        register_batch(c, "undone", 3)
    db.execute("SELECT pg_advisory_lock(4242)")
    try:
        with psycopg.connect(dsn) as victim, ThreadPoolExecutor(max_workers=1) as worker:
            call = worker.submit(save_batch, victim, "undone", make_batch(3, prefix="undone"))
            _wait_for(db, victim.info.backend_pid, "COMMIT")
            db.execute("SELECT pg_terminate_backend(%s)", [victim.info.backend_pid])
            with pytest.raises(DatabaseError):
                call.result(timeout=30)
    finally:
        db.execute("SELECT pg_advisory_unlock(4242)")
    # During the merge: it waits on a path another session holds.
    data = make_batch(5, prefix="killed")
    blocker = hold_image_path(dsn, data[2]["image_path"])
    try:
        with psycopg.connect(dsn) as victim, ThreadPoolExecutor(max_workers=1) as worker:
            call = worker.submit(save_batch, victim, "killed", data)
            _wait_for(db, victim.info.backend_pid, MERGE_MARK)
            db.execute("SELECT pg_terminate_backend(%s)", [victim.info.backend_pid])
            with pytest.raises(DatabaseError):
                call.result(timeout=30)
    finally:
        blocker.close()

    assert received(listener) == []
    assert db.execute(
        "SELECT completed_images FROM batch_executions WHERE batch_id = 'undone'"
    ).fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM batch_executions WHERE batch_id = 'killed'").fetchone() == (0,)


def test_the_payload_stays_small_for_the_longest_batch_id(
    conn: psycopg.Connection[Any], listener: psycopg.Connection[Any]
) -> None:
    batch_id = "b" * 255
    save_batch(conn, batch_id, make_batch(1, prefix="long-id"))

    (notify,) = list(listener.notifies(timeout=WAIT_S))

    assert len(notify.payload.encode()) < 400 and json.loads(notify.payload)["batch_id"] == batch_id


def test_a_late_follower_starts_from_the_current_state_and_ends_when_the_batch_finishes(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    register_batch(conn, "fol", 30)
    data = make_batch(30, prefix="fol")
    save_batch(conn, "fol", data[:10])
    seen: queue.Queue[BatchProgress | None] = queue.Queue()

    def follow() -> None:
        for progress in follow_progress(dsn, "fol", idle_timeout=30):
            seen.put(progress)
        seen.put(None)

    follower = threading.Thread(target=follow)
    follower.start()
    first = seen.get(timeout=30)  # listening now: nothing later is missed
    save_batch(conn, "other", make_batch(30, prefix="other"))  # another batch: filtered out
    save_batch(conn, "fol", data[10:20], position_offset=10)
    save_batch(conn, "fol", data[10:20], position_offset=10)  # a replay: no event
    save_batch(conn, "fol", data[20:], position_offset=20)
    follower.join(timeout=30)

    later = []
    while (item := seen.get(timeout=5)) is not None:
        later.append(item)
    assert first is not None and first.completed_images == 10 and first.created_at is not None
    assert [(p.completed_images, p.status) for p in later] == [
        (20, ProcessStatus.STARTED),
        (30, ProcessStatus.SUCCESS),
    ]


def test_status_follow_prints_the_batch_live_until_it_finishes(
    dsn: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    register_batch(conn, "live", 20)
    data = make_batch(20, prefix="live")
    save_batch(conn, "live", data[:10])
    printed = threading.Event()

    def load_the_rest() -> None:
        printed.wait(30)
        with psycopg.connect(dsn) as other:
            save_batch(other, "live", data[10:], position_offset=10)

    # The follower listens before it prints the current state: the rest of the
    # batch is committed once that first line is out.
    echo = click.echo

    def echo_then_signal(*args: Any, **kwargs: Any) -> None:
        echo(*args, **kwargs)
        printed.set()

    monkeypatch.setattr(click, "echo", echo_then_signal)
    loading = threading.Thread(target=load_the_rest)
    loading.start()
    runner = CliRunner()
    result = runner.invoke(cli, ["status", "live", "--follow", "--dsn", dsn], catch_exceptions=False)
    loading.join(timeout=30)

    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "batch live: STARTED, 10 of 20 images accounted for (50.0%): 10 completed, 0 failed",
        "batch live: SUCCESS, 20 of 20 images accounted for (100.0%): 20 completed, 0 failed",
    ]
    # A finished batch: its state, at once.
    again = runner.invoke(cli, ["status", "live", "--follow", "--json", "--dsn", dsn])
    assert [json.loads(line)["status"] for line in again.stdout.splitlines()] == ["SUCCESS"]


def test_following_an_unknown_batch_is_one_line(dsn: str) -> None:
    result = CliRunner().invoke(cli, ["status", "nope", "--follow", "--dsn", dsn])

    assert result.exit_code == 1 and "no batch 'nope'" in result.stderr
