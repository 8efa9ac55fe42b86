"""The Celery integration against a real broker and real worker processes.

Every test starts its own ``celery worker --pool=prefork -c 1`` subprocess on its
own queue and its own database; see celery_harness.py for the broker choice.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helpers.celery_tasks as celery_tasks  # noqa: F401  (registers the opt-in tasks, so publishing logs PENDING)
import psycopg
import pytest
from helpers.celery_harness import (
    Broker,
    Worker,
    process_gone,
    task_log,
    wait_for,
    wait_task_log,
    worker_backend,
)
from helpers.checks import LoginRole, assert_totals_match_recount, hold_image_path, snapshot, stored_totals
from psycopg_pool import PoolTimeout

from loader import BatchConflictError, DatabaseError, make_pool, register_batch, save_batch
from loader.celery import TASK_NAME, submit_batch, use_pool_for_publishes
from loader.celery.tasks import is_retryable
from loader.datagen import break_some, make_batch
from loader.errors import translate
from loader.save.validate import chain_id_for

# Seconds to wait for a task's result: generous for a loaded 2-core machine.
RESULT_TIMEOUT_S = 120


def _stored_boxes(db: psycopg.Connection[Any], batch_id: str) -> set[tuple[str, int, str, float, str]]:
    rows = db.execute(
        "SELECT o.image_path, b.position, b.text, b.confidence, b.bbox::text"
        " FROM ocr_text_boxes b JOIN ocr_executions o ON o.id = b.ocr_execution_id"
        " JOIN chain_executions c ON c.chain_id = o.chain_id WHERE c.batch_id = %s",
        [batch_id],
    ).fetchall()
    return {(p, n, t, c, json.dumps(json.loads(bbox))) for p, n, t, c, bbox in rows}


def test_worker_loads_1000_image_batch_end_to_end(
    start_worker: Callable[..., Worker], db: psycopg.Connection[Any], broker: Broker
) -> None:
    worker = start_worker()
    client = worker.client()
    results = make_batch(1000, prefix="e2e")

    started = time.perf_counter()
    submission = submit_batch("e2e-1000", results, app=client)
    report = submission.result.get(timeout=RESULT_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    print(
        f"\nend-to-end 1000-image batch via {broker.kind}: {elapsed:.2f} s from submit to result"
        f" (save_batch inside the worker: {report['duration_s']:.2f} s,"
        f" message {submission.payload_bytes / 1e6:.2f} MB inline)"
    )

    assert submission.inline
    assert (report["received"], report["stored"], report["failed"], report["rejected"]) == (1000, 1000, 0, 0)
    assert report["boxes"] == 5000 and report["statements"] == 8
    assert stored_totals(db, "e2e-1000") == (1000, 1000, 0, "SUCCESS")
    assert_totals_match_recount(db, "e2e-1000")
    expected = {
        (r["image_path"], n, b["text"], b["confidence"], json.dumps(b["bbox"]))
        for r in results
        for n, b in enumerate(r["text_boxes"])
    }
    assert _stored_boxes(db, "e2e-1000") == expected
    log = wait_task_log(db, submission.result.id, "SUCCESS")
    assert (log["task_name"], log["retries"], log["error"]) == (TASK_NAME, 0, None)
    assert log["started_at"] is not None and log["finished_at"] >= log["started_at"]
    client.close()


def test_pipeline_stage_saves_with_its_worker_process_pool(
    login_role: Callable[..., LoginRole],
    start_worker: Callable[..., Worker],
    dsn: str,
    db: psycopg.Connection[Any],
) -> None:
    # A worker role whose password the server checks (scram) and the log must never show.
    role = login_role("worker", in_role="loader_writer")
    secret = role.password
    worker = start_worker(LOADER_DSN=role.dsn(dsn))
    assert worker.process is not None
    main_pid = worker.process.pid
    client = worker.client()

    first = client.send_task("tests.ocr_stage", args=("stage-a", 40), queue=worker.queue)
    second = client.send_task("tests.ocr_stage", args=("stage-b", 60), queue=worker.queue)
    a, b = first.get(timeout=RESULT_TIMEOUT_S), second.get(timeout=RESULT_TIMEOUT_S)

    assert (a["report"]["stored"], b["report"]["stored"]) == (40, 60)
    assert stored_totals(db, "stage-a") == (40, 40, 0, "SUCCESS")
    assert stored_totals(db, "stage-b") == (60, 60, 0, "SUCCESS")
    # One pool per worker process, made in that (forked) process and reused by its tasks.
    assert a["pid"] == b["pid"] != main_pid
    assert a["pool"] == f"loader-celery-{a['pid']}"
    # The docs' stage in chunks: each knows its place and the batch's size, any order.
    chunks = [
        client.send_task("tests.ocr_stage", args=("stage-c", 30, f, 90), queue=worker.queue)
        for f in (60, 0, 30)
    ]
    for chunk in chunks:
        chunk.get(timeout=RESULT_TIMEOUT_S)
    assert stored_totals(db, "stage-c") == (90, 90, 0, "SUCCESS")
    worker.stop()
    log = worker.log_tail(500)
    assert f"process {a['pid']}: connection pool closed" in log
    assert "password=***" in log and secret not in log
    client.close()


def test_redelivered_message_changes_nothing(
    start_worker: Callable[..., Worker], db: psycopg.Connection[Any]
) -> None:
    worker = start_worker()
    client = worker.client()
    results: list[Any] = make_batch(300, prefix="again")
    break_some(results, every=50)
    results.append("not a JSON line")
    task_id = str(uuid.uuid4())

    first = submit_batch("again", results, app=client, task_id=task_id).result.get(timeout=RESULT_TIMEOUT_S)
    before = snapshot(db)
    totals = stored_totals(db, "again")
    client.AsyncResult(task_id).forget()
    # The very same message again (same task id, same body), as a broker redelivers it.
    second_result = submit_batch("again", results, app=client, task_id=task_id).result
    second = second_result.get(timeout=RESULT_TIMEOUT_S)

    assert first["stored"] + first["failed"] + first["rejected"] == 301
    assert first["failed"] > 0 and first["rejected"] == 1
    assert (second["stored"], second["failed"], second["rejected"], second["unchanged"]) == (0, 0, 0, 301)
    assert snapshot(db) == before
    assert stored_totals(db, "again") == totals
    assert_totals_match_recount(db, "again")
    assert db.execute("SELECT count(*) FROM task_logs WHERE task_id = %s", [task_id]).fetchone() == (1,)
    client.close()


def test_worker_killed_mid_save_leaves_nothing_and_redelivery_completes_the_batch(
    start_worker: Callable[..., Worker], dsn: str, db: psycopg.Connection[Any]
) -> None:
    worker = start_worker()
    client = worker.client()
    with psycopg.connect(dsn) as conn:
        register_batch(conn, "killed", 600)
        save_batch(conn, "killed", make_batch(300, prefix="killed-earlier"))
    before = snapshot(db)
    results = make_batch(300, prefix="killed")

    blocker = hold_image_path(dsn, results[150]["image_path"])
    try:
        submission = submit_batch("killed", results, position_offset=300, total_images=600, app=client)
        # The task's merge waits on the blocker: save_batch is mid-transaction.
        _, victim = wait_for("the task's merge to wait on the lock", lambda: worker_backend(db))
        os.kill(victim, signal.SIGKILL)
        wait_for("the killed worker process to be gone", lambda: process_gone(victim))
        # The message comes back (reject_on_worker_lost) to a fresh worker process,
        # whose call waits behind the dead one's transaction.
        _, successor = wait_for(
            "the redelivered task to run in a new worker process",
            lambda: worker_backend(db, exclude_worker=victim),
        )
        assert successor != victim
        assert snapshot(db) == before
    finally:
        blocker.rollback()
        blocker.close()

    report = submission.result.get(timeout=RESULT_TIMEOUT_S)
    assert (report["stored"], report["unchanged"], report["rejected"]) == (300, 0, 0)
    assert stored_totals(db, "killed") == (600, 600, 0, "SUCCESS")
    assert_totals_match_recount(db, "killed")
    counts = db.execute(
        "SELECT (SELECT count(*) FROM ocr_executions), (SELECT count(*) FROM ocr_text_boxes),"
        " (SELECT count(*) FROM chain_executions WHERE batch_id = 'killed')"
    ).fetchone()
    assert counts == (600, 3000, 600)
    assert wait_task_log(db, submission.result.id, "SUCCESS")["retries"] == 0
    client.close()


def test_worker_killed_mid_file_keeps_committed_chunks_and_redelivery_completes_without_duplicates(
    start_worker: Callable[..., Worker], dsn: str, db: psycopg.Connection[Any]
) -> None:
    # A batch sent as a file reference commits chunk by chunk: a worker killed in
    # the second chunk leaves the first stored, and the redelivered task finds it
    # unchanged and stores the rest; nothing is written twice.
    worker = start_worker(LOADER_CHUNK_IMAGES="200")
    client = worker.client()
    results = make_batch(500, prefix="killed-file")
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in results]

    blocker = hold_image_path(dsn, results[300]["image_path"])
    try:
        submission = submit_batch(
            "killed-file", lines, app=client, inline_max_bytes=1024, spool_dir=worker.spool_dir
        )
        _, victim = wait_for("the second chunk's merge to wait on the lock", lambda: worker_backend(db))
        assert stored_totals(db, "killed-file")[1:3] == (200, 0)  # the first chunk is committed
        os.kill(victim, signal.SIGKILL)
        wait_for("the killed worker process to be gone", lambda: process_gone(victim))
        wait_for(
            "the redelivered task to run in a new worker process",
            lambda: worker_backend(db, exclude_worker=victim),
        )
        assert stored_totals(db, "killed-file")[1:3] == (200, 0)  # the killed chunk left nothing
    finally:
        blocker.rollback()
        blocker.close()

    report = submission.result.get(timeout=RESULT_TIMEOUT_S)
    assert not submission.inline
    assert (report["received"], report["unchanged"], report["stored"]) == (500, 200, 300)
    assert stored_totals(db, "killed-file") == (500, 500, 0, "SUCCESS")
    assert_totals_match_recount(db, "killed-file")
    assert db.execute("SELECT count(*) FROM ocr_executions").fetchone() == (500,)
    client.close()


def test_transient_failure_is_retried_and_logged_retry_then_success(
    start_worker: Callable[..., Worker], dsn: str, db: psycopg.Connection[Any]
) -> None:
    # First retry after 5-10 s (equal jitter): time to see RETRY before it runs, on a loaded machine too.
    worker = start_worker(LOADER_RETRY_BACKOFF="10")
    client = worker.client()
    results = make_batch(200, prefix="transient")
    before = snapshot(db)

    blocker = hold_image_path(dsn, results[100]["image_path"])
    try:
        submission = submit_batch("transient", results, app=client)
        task_id = submission.result.id
        backend, _ = wait_for("the task's merge to wait on the lock", lambda: worker_backend(db))
        db.execute("SELECT pg_terminate_backend(%s)", [backend])
        retry = wait_task_log(db, task_id, "RETRY")
        assert retry["retries"] == 1
        assert "57P01" in retry["error"] and "TransientDatabaseError" in retry["error"]
        assert snapshot(db) == before
    finally:
        blocker.rollback()
        blocker.close()

    report = submission.result.get(timeout=RESULT_TIMEOUT_S)
    assert report["stored"] == 200
    assert stored_totals(db, "transient") == (200, 200, 0, "SUCCESS")
    assert_totals_match_recount(db, "transient")
    log = wait_task_log(db, task_id, "SUCCESS")
    assert log["retries"] == 1
    assert "57P01" in log["error"]  # the last failure's text stays for the record
    client.close()


def test_data_errors_are_reported_not_retried(
    start_worker: Callable[..., Worker], db: psycopg.Connection[Any]
) -> None:
    worker = start_worker()
    client = worker.client()
    results: list[Any] = make_batch(100, prefix="dirty")
    damaged = break_some(results, every=10)
    results += ["{this is not json", {"public_path": "https://cdn.example.com/orphan.jpg"}]

    submission = submit_batch("dirty", results, app=client)
    report = submission.result.get(timeout=RESULT_TIMEOUT_S)

    assert (report["stored"], report["failed"], report["rejected"]) == (100 - len(damaged), len(damaged), 2)
    issues = {issue["position"]: issue for issue in report["issues"]}
    assert set(issues) == {*damaged, 100, 101}
    assert issues[100]["outcome"] == "rejected" and "not valid JSON" in issues[100]["reason"]
    assert issues[101]["outcome"] == "rejected" and "image_path" in issues[101]["reason"]
    assert all(issues[i]["outcome"] == "failed" for i in damaged)
    assert stored_totals(db, "dirty") == (102, 100 - len(damaged), len(damaged) + 2, "SUCCESS")
    log = wait_task_log(db, submission.result.id, "SUCCESS")
    assert (log["retries"], log["error"]) == (0, None)

    # A call contradicting the stored batch is a caller's error: failed at once, no retry.
    conflict = submit_batch("dirty", make_batch(5, prefix="dirty-more"), total_images=7, app=client)
    conflict.result.get(timeout=RESULT_TIMEOUT_S, propagate=False)
    assert conflict.result.state == "FAILURE"
    log = wait_task_log(db, conflict.result.id, "FAILURE")
    assert log["retries"] == 0
    assert "BatchConflictError" in log["error"] and "total_images=102" in log["error"]
    client.close()


def test_large_batch_travels_as_a_file_and_rejects_keep_line_numbers(
    start_worker: Callable[..., Worker], db: psycopg.Connection[Any]
) -> None:
    worker = start_worker(LOADER_CHUNK_IMAGES="300")
    client = worker.client()
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in make_batch(1000, prefix="big")]
    lines[517] = b'{"image_path": "/data/big/broken.jpg", "text_boxes": ['
    lines[803] = b"[1, 2, 3]"
    limit = 64 * 1024

    submission = submit_batch("big", lines, app=client, inline_max_bytes=limit, spool_dir=worker.spool_dir)
    report = submission.result.get(timeout=RESULT_TIMEOUT_S)

    assert not submission.inline and submission.reference is not None
    assert submission.reference.startswith("file://") and submission.images == 1000
    assert submission.payload_bytes > limit
    path = Path(submission.reference.removeprefix("file://"))
    with gzip.open(path) as f:
        assert f.read().splitlines() == lines
    assert (report["received"], report["stored"], report["rejected"]) == (1000, 998, 2)
    assert report["statements"] == 4 * 8  # 300 + 300 + 300 + 100 lines, one transaction each
    assert stored_totals(db, "big") == (1000, 998, 2, "SUCCESS")
    rejects = db.execute(
        "SELECT position, raw FROM load_rejects WHERE batch_id = 'big' ORDER BY position"
    ).fetchall()
    assert rejects == [(517, lines[517]), (803, lines[803])]

    # A reference outside the worker's spool directory is refused, and not retried.
    outside = path.parent.parent / "outside.jsonl"
    outside.write_bytes(b"\n".join(lines[:3]))
    refused = client.send_task(TASK_NAME, args=("elsewhere", outside.as_uri()), queue=worker.queue)
    refused.get(timeout=RESULT_TIMEOUT_S, propagate=False)
    assert refused.state == "FAILURE"
    log = wait_task_log(db, refused.id, "FAILURE")
    assert log["retries"] == 0 and "outside the worker's spool directory" in log["error"]
    assert db.execute("SELECT count(*) FROM batch_executions WHERE batch_id = 'elsewhere'").fetchone() == (0,)
    client.close()


def test_opted_in_tasks_are_logged_with_their_chain_and_others_are_not(
    start_worker: Callable[..., Worker], dsn: str, db: psycopg.Connection[Any]
) -> None:
    worker = start_worker()
    client = worker.client()
    with psycopg.connect(dsn) as conn:
        save_batch(conn, "chains", make_batch(1, prefix="chains"))
    chain_id = chain_id_for("chains", make_batch(1, prefix="chains")[0]["image_path"])
    queue = {"queue": worker.queue}

    linked = client.send_task("tests.echo_logged", args=(1,), headers={"chain_id": chain_id}, **queue)
    unknown = client.send_task("tests.echo_logged", args=(2,), headers={"chain_id": "no-such-chain"}, **queue)
    unlogged = client.send_task("tests.echo_unlogged", args=(3,), **queue)
    failing = client.send_task("tests.fail_logged", args=("boom",), **queue)
    values = [r.get(timeout=RESULT_TIMEOUT_S, propagate=False) for r in (linked, unknown, unlogged)]
    assert values == [1, 2, 3]
    failing.get(timeout=RESULT_TIMEOUT_S, propagate=False)

    row = wait_task_log(db, linked.id, "SUCCESS")
    assert (row["task_name"], row["chain_id"]) == ("tests.echo_logged", chain_id)
    assert wait_task_log(db, unknown.id, "SUCCESS")["chain_id"] is None
    assert wait_task_log(db, failing.id, "FAILURE")["error"] == "ValueError: boom"
    # Tasks run one at a time, so the unlogged one's handlers ran before the failing one's.
    assert task_log(db, unlogged.id) is None

    # Revoked before it arrives: the worker's main process records REVOKED.
    revoked_id = str(uuid.uuid4())
    replies = client.control.revoke(revoked_id, destination=[worker.hostname], reply=True, timeout=10)
    assert replies, "the worker did not acknowledge the revoke"
    client.send_task("tests.echo_logged", args=(4,), task_id=revoked_id, **queue)
    row = wait_task_log(db, revoked_id, "REVOKED")
    assert row["finished_at"] is not None

    # A publisher with a pool records PENDING at publish time (no worker consumes this queue).
    pool = make_pool(dsn, min_size=1, max_size=1)
    pool.open(wait=True)
    use_pool_for_publishes(pool)
    try:
        pending = client.send_task(
            "tests.echo_logged", args=(5,), headers={"chain_id": chain_id}, queue=f"{worker.queue}-idle"
        )
        row = task_log(db, pending.id)
        assert row is not None and (row["status"], row["chain_id"], row["started_at"]) == (
            "PENDING",
            chain_id,
            None,
        )
    finally:
        use_pool_for_publishes(None)
        pool.close()
        with client.connection_for_write() as conn:
            conn.default_channel.queue_delete(f"{worker.queue}-idle")
    client.close()


def test_task_log_failures_never_fail_the_task(
    start_worker: Callable[..., Worker], dsn: str, db: psycopg.Connection[Any]
) -> None:
    worker = start_worker(LOADER_TASKLOG_TIMEOUT_MS="200")
    client = worker.client()
    # Every task-log write waits on this lock until its 200 ms lock_timeout.
    locker = psycopg.connect(dsn)
    try:
        locker.execute("LOCK TABLE task_logs IN ACCESS EXCLUSIVE MODE")
        submission = submit_batch("unlogged", make_batch(50, prefix="unlogged"), app=client)
        report = submission.result.get(timeout=RESULT_TIMEOUT_S)
        task_id = submission.result.id
        # SUCCESS is written after the result is stored: hold the lock until it gave up too.
        wait_for(
            "the worker to give up writing SUCCESS",
            lambda: True if f"SUCCESS of task {task_id} not recorded" in worker.log_tail(200) else None,
            every=0.1,
        )
    finally:
        locker.rollback()
        locker.close()

    assert submission.result.state == "SUCCESS" and report["stored"] == 50
    assert stored_totals(db, "unlogged") == (50, 50, 0, "SUCCESS")
    assert f"STARTED of task {task_id} not recorded" in worker.log_tail(200)
    assert task_log(db, task_id) is None
    client.close()


def test_only_transient_database_errors_are_retried(dsn: str) -> None:
    try:
        psycopg.connect("host=127.0.0.1 port=1 dbname=x connect_timeout=2")
    except psycopg.OperationalError as exc:
        lost = exc
    assert is_retryable(lost)
    assert is_retryable(translate(lost, "saving"))

    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as syntax:
            conn.execute("SELEC 1")
        with pytest.raises(psycopg.Error) as deadlockish:
            conn.execute("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01'; END $$")
    assert not is_retryable(translate(syntax.value, "saving"))
    assert is_retryable(translate(deadlockish.value, "saving"))

    pool = make_pool(dsn, min_size=1, max_size=1, timeout=0.2)
    pool.open(wait=True)
    try:
        with pool.connection(), pytest.raises(PoolTimeout) as exhausted, pool.connection():
            pass
    finally:
        pool.close()
    assert is_retryable(exhausted.value)

    assert not is_retryable(BatchConflictError("total differs"))
    assert not is_retryable(DatabaseError("permission denied"))
    assert not is_retryable(ValueError("bad data"))
