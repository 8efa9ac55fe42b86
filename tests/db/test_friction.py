"""The friction of an application's first two weeks (issue 22), each reproduced and fixed:
settings from the environment everywhere, a log line a person can read, the worker-pool
save with everything save_batch takes and counted in the worker's metrics, asyncpg through
PgBouncer, following a finished batch through PgBouncer, BatchNotFoundError.batch_id and
an Alembic filter that leaves the application's own changes visible."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from helpers import orm_recipe
from helpers.celery_harness import Broker, Worker
from helpers.pgbouncer import through
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Column, Index, MetaData, Text, create_engine, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from loader import (
    BatchNotFoundError,
    ConfigurationError,
    LoadReport,
    delete_batch,
    follow_progress,
    get_progress,
    register_batch,
    save_batch,
)
from loader.celery import submit_batch
from loader.cli import cli
from loader.datagen import break_some, make_batch
from loader.errors import TransientDatabaseError
from loader.models import ProcessStatus
from loader.orm import BatchExecution, engine_url, include_except_loader_objects, include_object

DOCS = Path(__file__).resolve().parents[2] / "docs"
RESULT_TIMEOUT_S = 120

# --------------------------------------------------------------------------- settings

#: Server settings as a deployment sets them, each unlike the loader's default.
FROM_ENV = {"LOADER_STATEMENT_TIMEOUT": "1500ms", "LOADER_LOCK_TIMEOUT": "2500ms", "LOADER_WORK_MEM": "3MB"}
#: The same values as the server shows them in the merge's transaction.
IN_FORCE = ("1500ms", "2500ms", "3MB")

# Records the settings in force in every statement that stores chains: the merge.
SEEN = """
CREATE TABLE seen (statement_timeout text, lock_timeout text, work_mem text);
CREATE FUNCTION record_settings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO seen VALUES (current_setting('statement_timeout'), current_setting('lock_timeout'),
                             current_setting('work_mem'));
    RETURN NULL;
END $$;
CREATE TRIGGER record_settings AFTER INSERT ON chain_executions
    FOR EACH STATEMENT EXECUTE FUNCTION record_settings();
"""


def seen(db: psycopg.Connection[Any]) -> set[tuple[str, str, str]]:
    return set(db.execute("SELECT * FROM seen").fetchall())


@pytest.fixture
def recorded(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    db.execute(SEEN)
    return db


def test_save_batch_applies_the_settings_of_the_environment(
    dsn: str, recorded: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(dsn) as conn:
        save_batch(conn, "defaults", make_batch(2, prefix="defaults"))
        defaults = seen(recorded)
        recorded.execute("TRUNCATE seen")
        for name, value in FROM_ENV.items():
            monkeypatch.setenv(name, value)
        save_batch(conn, "from-env", make_batch(2, prefix="from-env"))

    assert defaults == {("1min", "90s", "64MB")}
    assert seen(recorded) == {IN_FORCE}


def test_a_statement_timeout_from_the_environment_cancels_a_slow_call(
    dsn: str, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every merge now sleeps far longer than the environment's bound.
    db.execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM pg_sleep(5); RETURN NULL; END $$;"
        "CREATE TRIGGER slow AFTER INSERT ON chain_executions FOR EACH STATEMENT EXECUTE FUNCTION slow()"
    )
    monkeypatch.setenv("LOADER_STATEMENT_TIMEOUT", "100ms")

    with psycopg.connect(dsn) as conn, pytest.raises(TransientDatabaseError) as caught:
        save_batch(conn, "slow", make_batch(2, prefix="slow"))

    assert "statement_timeout" in str(caught.value)
    assert db.execute("SELECT count(*) FROM batch_executions").fetchone() == (0,)


def test_a_bad_setting_in_the_environment_is_refused_naming_it_before_anything_is_written(
    dsn: str, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOADER_STATEMENT_TIMEOUT", "1 parsec")

    with psycopg.connect(dsn) as conn, pytest.raises(ConfigurationError) as caught:
        save_batch(conn, "bad", make_batch(2, prefix="bad"))

    assert "LOADER_STATEMENT_TIMEOUT='1 parsec'" in str(caught.value)
    assert db.execute("SELECT count(*) FROM batch_executions").fetchone() == (0,)


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_batch(30, prefix="cli")), encoding="utf-8")
    return path


def test_loader_load_applies_the_settings_of_the_environment(
    dsn: str, recorded: psycopg.Connection[Any], jsonl: Path
) -> None:
    result = CliRunner().invoke(
        cli,
        ["load", str(jsonl), "-b", "cli", "--chunk-size", "10", "--progress", "none", "--dsn", dsn],
        env=FROM_ENV,
    )

    assert result.exit_code == 0, result.stderr
    assert seen(recorded) == {IN_FORCE}
    assert get_progress(recorded, "cli").completed_images == 30


def test_loader_load_refuses_a_bad_setting_in_one_line_before_creating_the_batch(
    dsn: str, db: psycopg.Connection[Any], jsonl: Path
) -> None:
    result = CliRunner().invoke(
        cli, ["load", str(jsonl), "-b", "cli", "--dsn", dsn], env={"LOADER_WORK_MEM": "lots"}
    )

    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert "LOADER_WORK_MEM='lots'" in result.stderr
    assert db.execute("SELECT count(*) FROM batch_executions").fetchone() == (0,)


# --------------------------------------------------------------------------- the log line


@pytest.fixture
def basic_log() -> Iterator[list[str]]:
    """The loader's records as logging.basicConfig's format shows them (it drops extras)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    logger = logging.getLogger("loader")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def readable(report: LoadReport) -> str:
    """What a person needs from the line: the batch, each outcome, statements, duration."""
    return (
        f"saved batch {report.batch_id!r}: {report.received} inputs: {report.stored} stored, "
        f"{report.failed} failed, {report.rejected} rejected, {report.unchanged} unchanged, "
        f"{report.replaced} replaced; {report.statements} statements, "
    )


def test_the_saved_batch_line_carries_the_batch_and_its_counts_in_any_format(
    conn: psycopg.Connection[Any], basic_log: list[str]
) -> None:
    results: list[Any] = make_batch(40, prefix="logged")
    break_some(results, every=10)
    results.append("{not json")

    report = save_batch(conn, "logged", results)

    (line,) = [line for line in basic_log if "saved batch" in line]
    assert line.startswith(f"INFO:loader:{readable(report)}")
    assert re.search(r"statements, \d+\.\d{3} s$", line)
    assert report.failed and report.rejected  # the line shows non-zero counts


def test_the_saved_batch_record_keeps_its_structured_fields(
    conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="loader"):
        report = save_batch(conn, "fields", make_batch(3, prefix="fields"))

    (record,) = [r for r in caplog.records if r.getMessage().startswith("saved batch")]
    assert {key: getattr(record, key) for key in report.log_fields()} == report.log_fields()


# --------------------------------------------------------------------------- the worker pool


@pytest.fixture
def worker(broker: Broker, dsn: str, tmp_path: Path) -> Iterator[tuple[Worker, str]]:
    """A worker with the environment's server settings, serving its metrics: (worker, URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {**FROM_ENV, "PROMETHEUS_MULTIPROC_DIR": str(multiproc), "LOADER_METRICS_PORT": str(port)}
    started = Worker(broker, dsn, tmp_path, env)
    try:
        yield started.start(), f"http://127.0.0.1:{port}/metrics"
    finally:
        started.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_stage_saving_through_the_worker_pool_replaces_is_counted_and_logged(
    worker: tuple[Worker, str], recorded: psycopg.Connection[Any]
) -> None:
    started, url = worker
    client = started.client()

    def stage(*args: Any) -> dict[str, Any]:
        sent = client.send_task("tests.ocr_stage", args=args, queue=started.queue)
        report: dict[str, Any] = sent.get(timeout=RESULT_TIMEOUT_S)["report"]
        return report

    # The docs' stage in three chunks, then a re-OCR of the first chunk with another model's results.
    reports = [stage("stage", 30, first, 90) for first in (0, 30, 60)]
    reports.append(stage("stage", 30, 0, 90, True, 1))
    # The loader's own task in the same worker.
    reports.append(
        submit_batch("task", make_batch(20, prefix="task"), app=client).result.get(timeout=RESULT_TIMEOUT_S)
    )
    samples = scrape(url)
    started.stop()
    log = started.log_tail(500)

    assert reports[3]["replaced"] > 0
    assert samples[("loader_statements_total", ())] == sum(r["statements"] for r in reports)
    assert samples[("loader_save_duration_seconds_count", ())] == len(reports)
    for outcome in ("stored", "replaced", "unchanged"):
        assert samples[("loader_images_total", (("outcome", outcome),))] == sum(r[outcome] for r in reports)
    # Both ways of saving ran with the worker's settings from the environment.
    assert seen(recorded) == {IN_FORCE}
    # Celery's log format shows the message only: the message says what happened.
    assert readable(LoadReport.model_validate(reports[3])) in log
    client.close()


# --------------------------------------------------------------------------- PgBouncer

#: Requests the API serves at once, and in all (issue 22: 212 of 300 failed).
CONCURRENT = 20
REQUESTS = 300


def _documented_engine(url: str) -> AsyncEngine:
    """The engine docs/application.md gives for asyncpg behind a transaction pooler (its own code)."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "application.md").read_text(encoding="utf-8"), re.S)
    (code,) = [b for b in blocks if "prepared_statement_name_func" in b]
    namespace: dict[str, Any] = {"LOADER_DSN": url}
    exec(compile(code, "docs/application.md", "exec"), namespace)  # the page's own code
    engine: AsyncEngine = namespace["api_engine"]
    return engine


def _serve(engine: AsyncEngine, batch_ids: list[str]) -> list[BaseException | int]:
    """REQUESTS reads of a batch as an endpoint makes them, CONCURRENT at once."""

    async def request(n: int, gate: asyncio.Semaphore) -> int:
        async with gate, AsyncSession(engine) as session:
            batch = (
                await session.scalars(
                    select(BatchExecution).where(BatchExecution.batch_id == batch_ids[n % len(batch_ids)])
                )
            ).one()
            return batch.completed_images

    async def main() -> list[BaseException | int]:
        gate = asyncio.Semaphore(CONCURRENT)
        try:
            return await asyncio.gather(*(request(n, gate) for n in range(REQUESTS)), return_exceptions=True)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def test_asyncpg_through_pgbouncer_serves_every_request_with_the_documented_engine(
    bouncer_transaction: str, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    batch_ids = [f"api-{i}" for i in range(3)]
    for batch_id in batch_ids:
        save_batch(conn, batch_id, make_batch(4, prefix=batch_id))
    pooled = through(bouncer_transaction, dsn)

    plain = _serve(create_async_engine(engine_url(pooled, "asyncpg")), batch_ids)
    documented = _serve(_documented_engine(pooled), batch_ids)

    failed = [r for r in plain if isinstance(r, BaseException)]
    assert failed and all("prepared statement" in str(r) for r in failed)  # the failure the docs prevent
    assert documented == [4] * REQUESTS


def test_following_a_finished_batch_through_a_transaction_pooler_prints_it_and_ends(
    bouncer_transaction: str, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    save_batch(conn, "done", make_batch(3, prefix="done"))
    pooled = through(bouncer_transaction, dsn)

    result = CliRunner().invoke(cli, ["status", "done", "--follow", "--dsn", pooled])
    (only,) = follow_progress(pooled, "done")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "batch done: SUCCESS, 3 of 3 images accounted for (100.0%): 3 completed, 0 failed"
    ]
    assert only.status == ProcessStatus.SUCCESS


# --------------------------------------------------------------------------- errors, statuses, Alembic


def test_running_set_by_the_application_reads_as_the_rows_say(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    register_batch(conn, "app-running", 4)
    conn.execute("UPDATE batch_executions SET status = 'RUNNING' WHERE batch_id = 'app-running'")
    conn.commit()
    unfinished = CliRunner().invoke(cli, ["status", "--unfinished", "--json", "--dsn", dsn])

    report = save_batch(conn, "app-running", make_batch(2, prefix="app-running"))

    # An outside status write marks the batch stale: readers take its status from its rows.
    listed = json.loads(unfinished.stdout) if unfinished.exit_code == 0 else None
    assert listed is not None and [(b["batch_id"], b["status"]) for b in listed] == [
        ("app-running", "PENDING")
    ]
    assert get_progress(conn, "app-running").status == ProcessStatus.STARTED
    assert report.progress.status == ProcessStatus.STARTED  # the loader's rule: images outstanding


def test_batch_not_found_names_the_batch(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(BatchNotFoundError) as read:
        get_progress(conn, "nowhere")
    with pytest.raises(BatchNotFoundError) as deleted:
        delete_batch(conn, "gone")

    assert (read.value.batch_id, deleted.value.batch_id) == ("nowhere", "gone")


def autogenerate(dsn: str, metadata: MetaData, include: Any) -> list[tuple[str, str | None]]:
    """What ``alembic revision --autogenerate`` would propose: (operation, the object's name) each."""
    engine = create_engine(engine_url(dsn))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True, "include_object": include}
            )
            diffs = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    flat = [d for diff in diffs for d in (diff if isinstance(diff, list) else [diff])]
    return sorted((d[0], getattr(d[-1], "name", None)) for d in flat)


def test_the_narrow_alembic_filter_shows_the_applications_own_changes_to_the_shared_tables(dsn: str) -> None:
    metadata = MetaData()
    for table in orm_recipe.Base.metadata.tables.values():
        table.to_metadata(metadata)
    # The team's own later changes: a column on a shared table, an index of its own on another.
    metadata.tables["ocr_executions"].append_column(Column("reviewed_by", Text))
    Index("ix_task_logs_app_name", metadata.tables["task_logs"].c.task_name)

    broad = autogenerate(dsn, metadata, include_object)
    narrow = autogenerate(dsn, metadata, include_except_loader_objects)

    assert broad == []  # what include_object hides
    assert narrow == [("add_column", "reviewed_by"), ("add_index", "ix_task_logs_app_name")]
