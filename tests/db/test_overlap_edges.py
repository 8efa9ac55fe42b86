"""Edges of the overlap issue: retention decides under the batch's lock from its rows,
listings read stale batches by their rows, hostile notifications, ids and files
stop nothing, and the safety net isolates only what input data can cause."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from helpers.checks import LoginRole
from psycopg import sql
from psycopg.conninfo import make_conninfo

import loader.save.call
from loader import DatabaseError, ProcessStatus, aio, follow_progress, get_progress, save_batch
from loader.cli import cli
from loader.lifecycle.delete import delete_batch, delete_finished, iter_delete_finished
from loader.progress.read import CHANNEL

#: The payload of issue 20, item 14: json.loads raises RecursionError on it.
NESTED = "SELECT pg_notify(%s, repeat('[', 3000) || repeat(']', 3000))"
#: A batch id the application may write (schema adopt keeps such ids): ESC, OSC title, BEL.
HOSTILE_ID = "evil\x1b]0;pwned\x07\x1b[2J"
CUT_OFF = timedelta(days=30)


def result(path: str, *, ok: bool = True, model: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"image_path": path}
    if ok:
        data["text_boxes"] = [{"text": path, "confidence": 0.9, "bbox": [[0, 0], [1, 1]]}]
    else:
        data.update(status="failed", error="engine crashed")
    if model:
        data["model_version"] = model
    return data


def age(db: psycopg.Connection[Any], days: int = 40) -> None:
    """Every row of the database last changed ``days`` ago, as if written then."""
    db.execute("SET session_replication_role = replica")  # no trigger moves updated_at back
    try:
        for table in (
            "batch_executions",
            "chain_executions",
            "ocr_executions",
            "ocr_text_boxes",
            "load_rejects",
            "task_logs",
        ):
            db.execute(f"UPDATE {table} SET updated_at = now() - make_interval(days => %s)", [days])  # type: ignore[arg-type]
        db.execute("UPDATE loader_calls SET committed_at = now() - make_interval(days => %s)", [days])
    finally:
        db.execute("RESET session_replication_role")


def batches(db: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in db.execute("SELECT batch_id FROM batch_executions").fetchall()}


def cut_off() -> datetime:
    return datetime.now(UTC) - CUT_OFF


# --------------------------------------------------------------------------- retention


def test_delete_finished_deletes_when_called_without_iterating(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    save_batch(conn, "old", [result("/eager/a")])
    age(db)
    deleted = delete_finished(conn, cut_off())
    assert batches(db) == set()  # before anything iterates what it returned
    assert [d.batch_id for d in deleted] == ["old"]


def test_delete_finished_reports_each_batch_to_a_progress_callback(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    for name in ("a", "b"):
        save_batch(conn, name, [result(f"/cb/{name}")])
    age(db)
    seen: list[str] = []
    delete_finished(conn, cut_off(), progress=lambda outcome: seen.append(outcome.batch_id))
    assert sorted(seen) == ["a", "b"]


def test_retention_keeps_a_batch_re_ocred_after_the_cut_off(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    """A re-OCR whose results stay successes changes no counter: the rows say it is recent."""
    save_batch(conn, "reocr", [result("/keep/a", model="v1"), result("/keep/b", model="v1")])
    save_batch(conn, "idle", [result("/keep/c")])
    age(db)
    save_batch(conn, "reocr", [result("/keep/a", model="v2")], replace=True)
    deleted = delete_finished(conn, cut_off())
    assert [d.batch_id for d in deleted] == ["idle"]
    assert batches(db) == {"reocr"}


def test_retention_judges_a_batch_again_after_waiting_for_its_lock(
    dsn: str, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    """Listed as old, then changed by a writer holding the batch's lock: skipped, not deleted."""
    save_batch(conn, "busy", [result("/busy/a")])
    age(db)
    outcomes: list[Any] = []
    with psycopg.connect(dsn) as writer:
        writer.execute("SELECT pg_advisory_xact_lock(hashtextextended('loader.batch:' || 'busy', 0))")

        def retention() -> None:
            with psycopg.connect(dsn) as janitor:
                outcomes.extend(iter_delete_finished(janitor, cut_off()))

        runner = threading.Thread(target=retention)
        runner.start()
        _wait_for_lock_waiter(db)
        # What a re-OCR that leaves the image a success writes, under the batch's lock.
        writer.execute("UPDATE ocr_executions SET model_version = 'v2' WHERE image_path = '/busy/a'")
        writer.commit()
        runner.join()
    assert [(o.batch_id, type(o).__name__) for o in outcomes] == [("busy", "Skipped")]
    assert "after the cut-off" in outcomes[0].reason
    assert batches(db) == {"busy"}


def _wait_for_lock_waiter(db: psycopg.Connection[Any]) -> None:
    """Until some session waits for an advisory lock (retention, blocked on the batch's)."""
    _wait_for_a_lock_waiter(db, "advisory")


def _wait_for_a_lock_waiter(db: psycopg.Connection[Any], locktype: str) -> None:
    for _ in range(600):
        if db.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = %s AND NOT granted", [locktype]
        ).fetchone() != (0,):
            return
        time.sleep(0.05)
    raise AssertionError(f"retention never waited for a lock ({locktype})")


def _stale_by_an_application_delete(conn: psycopg.Connection[Any], db: psycopg.Connection[Any]) -> None:
    """Batch 'stale': stored SUCCESS 2/0, then the application deletes one image (chain and all)."""
    save_batch(conn, "stale", [result("/stale/a"), result("/stale/b")])
    db.execute(
        "DELETE FROM chain_executions WHERE chain_id = "
        "(SELECT chain_id FROM ocr_executions WHERE image_path = '/stale/b')"
    )


def test_retention_keeps_a_stale_batch_its_rows_say_is_unfinished(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    _stale_by_an_application_delete(conn, db)
    age(db)
    assert delete_finished(conn, cut_off()) == []
    assert batches(db) == {"stale"}


def test_status_lists_a_stale_batch_by_its_rows(
    dsn: str, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    _stale_by_an_application_delete(conn, db)
    save_batch(conn, "done", [result("/done/a")])
    runner = CliRunner()
    listed = runner.invoke(cli, ["status", "--json", "--dsn", dsn])
    assert listed.exit_code == 0, listed.output
    import json

    by_id = {b["batch_id"]: b for b in json.loads(listed.output)}
    assert (by_id["stale"]["status"], by_id["stale"]["completed_images"]) == ("STARTED", 1)
    unfinished = runner.invoke(cli, ["status", "--unfinished", "--json", "--dsn", dsn])
    assert [b["batch_id"] for b in json.loads(unfinished.output)] == ["stale"]
    assert get_progress(conn, "stale").status == ProcessStatus.STARTED  # the same as one batch's read


def test_a_hostile_batch_id_neither_blocks_retention_nor_reaches_the_terminal(
    dsn: str, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    # Written by the application (no loader check): finished, 1 of 1.
    db.execute(
        "INSERT INTO batch_executions (batch_id, status, total_images) VALUES (%s, 'SUCCESS', 0)",
        [HOSTILE_ID],
    )
    save_batch(conn, "plain", [result("/hostile/a")])
    age(db)
    runner = CliRunner()
    asked = runner.invoke(
        cli, ["delete", "--finished-before", cut_off().date().isoformat(), "--dsn", dsn], input="n\n"
    )
    assert "\x1b" not in asked.output and "\x07" not in asked.output, asked.output
    assert "\\x1b" in asked.output
    done = runner.invoke(
        cli, ["delete", "--finished-before", cut_off().date().isoformat(), "--yes", "--dsn", dsn]
    )
    assert done.exit_code == 0, done.output
    assert "\x1b" not in done.output and "\x07" not in done.output
    assert "2 batches deleted" in done.output
    assert batches(db) == set()


@pytest.mark.parametrize(
    "typed",
    ["2026-12-07 16:42:50", "2026-12-07T16:42:50", "2026-12-07T16:42:50Z", "2026-12-07T18:42:50+02:00"],
)
def test_finished_before_takes_iso_8601_as_people_type_it(
    typed: str, dsn: str, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    save_batch(conn, "before", [result("/iso/a")])
    save_batch(conn, "after", [result("/iso/b")])
    age(db)
    db.execute("SET session_replication_role = replica")
    for table, column, key in (
        ("batch_executions", "updated_at", "batch_id"),
        ("loader_calls", "committed_at", "batch_id"),
    ):
        db.execute(
            f"UPDATE {table} SET {column} = CASE {key}"  # type: ignore[arg-type]
            " WHEN 'before' THEN timestamptz '2026-12-07 16:42:49+00'"
            " ELSE timestamptz '2026-12-07 16:42:51+00' END"
        )
    db.execute("RESET session_replication_role")
    done = CliRunner().invoke(cli, ["delete", "--finished-before", typed, "--yes", "--dsn", dsn])
    assert done.exit_code == 0, done.output
    assert batches(db) == {"after"}


def test_the_workers_role_is_told_that_deleting_needs_loader_admin(
    login_role: Any, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    writer: LoginRole = login_role("edges_writer", in_role="loader_writer")
    save_batch(conn, "kept", [result("/role/a")])
    with psycopg.connect(writer.dsn(dsn)) as worker, pytest.raises(DatabaseError) as raised:
        delete_batch(worker, "kept")
    message = str(raised.value)
    assert "loader_admin" in message and "check the server log" not in message
    assert len(message.splitlines()) == 1


# --------------------------------------------------------------------------- notifications


def test_a_nested_payload_stops_no_follower(
    dsn: str, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    save_batch(conn, "followed", [result("/follow/a")], total_images=2)
    seen: list[Any] = []
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            seen.extend(follow_progress(dsn, "followed", idle_timeout=60))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    follower = threading.Thread(target=follow)
    follower.start()
    while not seen and not errors:
        time.sleep(0.05)
    db.execute(NESTED, [CHANNEL])
    save_batch(conn, "followed", [result("/follow/b")], position_offset=1)
    follower.join()
    assert errors == []
    assert [p.status for p in seen] == [ProcessStatus.STARTED, ProcessStatus.SUCCESS]


def test_the_hub_keeps_listening_after_a_nested_payload(
    dsn: str, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    save_batch(conn, "hub", [result("/hub/a")], total_images=2)

    async def scenario() -> list[ProcessStatus]:
        pool = aio.make_async_pool(dsn, max_size=2)
        await pool.open(wait=True)
        try:
            async with aio.ProgressHub(pool) as hub:
                stream: AsyncIterator[Any] = hub.follow("hub")
                first = await anext(stream)
                events = hub.events
                await asyncio.to_thread(db.execute, NESTED, [CHANNEL])
                while hub.events == events:
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(_save, dsn, "hub", [result("/hub/b")], 1)
                second = await anext(stream)
                await stream.aclose()  # type: ignore[attr-defined]
                return [first.status, second.status]
        finally:
            await pool.close()

    statuses = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    assert statuses == [ProcessStatus.STARTED, ProcessStatus.SUCCESS]


def _save(dsn: str, batch_id: str, results: list[Any], offset: int) -> None:
    with psycopg.connect(dsn) as c:
        save_batch(c, batch_id, results, position_offset=offset)


def test_the_hubs_log_shows_no_password_however_escaped(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    # A role whose password holds a space, written in the listener's DSN as libpq
    # spells it (a backslash-escaped space), so the hub really connects with it on
    # servers that require passwords too.
    role = f"hub_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'hunter2 x'").format(sql.Identifier(role)))
    secret_dsn = make_conninfo(dsn, user=role) + r" password=hunter2\ x"

    async def scenario() -> None:
        pool = aio.make_async_pool(dsn, max_size=1)
        await pool.open(wait=True)
        try:
            async with aio.ProgressHub(pool, secret_dsn):
                pass
        finally:
            await pool.close()

    try:
        with caplog.at_level(logging.INFO, logger="loader"):
            asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    text = caplog.text
    assert "listening on" in text
    assert "hunter2" not in text and "\\ x" not in text and "*** x" not in text


# --------------------------------------------------------------------------- safety net


def test_a_bug_building_copy_rows_raises_instead_of_rejecting_every_input(
    monkeypatch: pytest.MonkeyPatch, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    real = loader.save.call._image_rows

    def misspelt(images: Any, rejects: Any) -> Iterator[Any]:
        for row in real(images, rejects):
            yield loader.save.call.StagedImage(
                **{("postion" if k == "pos" else k): v for k, v in row._asdict().items()}
            )

    monkeypatch.setattr(loader.save.call, "_image_rows", misspelt)
    with pytest.raises(TypeError):
        save_batch(conn, "bug", [result(f"/bug/{i}") for i in range(8)])
    assert batches(db) == set()


def test_a_file_name_in_an_os_error_is_printed_escaped(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Any
) -> None:
    save_batch(conn, "files", [b"junk"])
    target = tmp_path / "missing\x1b]0;pwned\x07" / "out.jsonl"
    done = CliRunner().invoke(cli, ["rejects", "files", "--export", str(target), "--dsn", dsn])
    assert done.exit_code == 1
    assert "\x1b" not in done.output and "\x07" not in done.output
    assert "missing\\x1b]0;pwned\\x07" in done.output and "No such file" in done.output


def test_retention_passes_over_a_batch_it_deadlocks_with_and_goes_on(
    dsn: str, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    """A writer that takes no batch lock (the application) holds a box of batch 'a', then
    touches a's row, which retention holds: one of the two is chosen as the deadlock's victim.
    Either way the pass ends normally, and 'a' is gone exactly when the writer lost."""
    save_batch(conn, "a", [result("/dl/a")])
    save_batch(conn, "b", [result("/dl/b")])
    age(db)
    outcome: dict[str, Any] = {}

    def retention() -> None:
        with psycopg.connect(dsn) as janitor:
            try:
                outcome["deleted"] = [d.batch_id for d in delete_finished(janitor, cut_off())]
            except BaseException as exc:  # reported by the assertion below
                outcome["error"] = exc

    with psycopg.connect(dsn) as app:
        app.execute(
            "UPDATE ocr_text_boxes SET text = 'edited' WHERE ocr_execution_id ="
            " (SELECT id FROM ocr_executions WHERE image_path = '/dl/a')"
        )
        runner = threading.Thread(target=retention)
        runner.start()
        _wait_for_a_lock_waiter(db, "transactionid")
        try:
            app.execute("UPDATE batch_executions SET total_images = total_images WHERE batch_id = 'a'")
            app.commit()
            writer_lost = False
        except psycopg.errors.DeadlockDetected:
            app.rollback()
            writer_lost = True
        runner.join()
    assert "error" not in outcome, outcome
    assert sorted(outcome["deleted"]) == (["a", "b"] if writer_lost else ["b"])
    assert batches(db) == (set() if writer_lost else {"a"})


def test_the_hubs_listener_restarts_after_any_failure(
    monkeypatch: pytest.MonkeyPatch, dsn: str, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    """Whatever breaks the listening task once (here: reading one payload raises a
    RuntimeError), the hub listens again and reads every followed batch."""
    save_batch(conn, "again", [result("/again/a")], total_images=2)
    real = aio.event_batch_id
    failures: list[str] = []

    def breaks_once(payload: str) -> str | None:
        if payload == "break":
            failures.append(payload)
            raise RuntimeError("a failure nobody foresaw")
        return real(payload)

    monkeypatch.setattr(aio, "event_batch_id", breaks_once)

    async def scenario() -> list[ProcessStatus]:
        pool = aio.make_async_pool(dsn, max_size=2)
        await pool.open(wait=True)
        try:
            async with aio.ProgressHub(pool) as hub:
                stream: AsyncIterator[Any] = hub.follow("again")
                first = await anext(stream)
                await asyncio.to_thread(db.execute, "SELECT pg_notify(%s, 'break')", [CHANNEL])
                while not failures:
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(_save, dsn, "again", [result("/again/b")], 1)
                second = await anext(stream)
                await stream.aclose()  # type: ignore[attr-defined]
                return [first.status, second.status]
        finally:
            await pool.close()

    statuses = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    assert statuses == [ProcessStatus.STARTED, ProcessStatus.SUCCESS]
