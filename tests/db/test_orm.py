"""loader.orm: the application's models, held to schema.sql and used beside the loader.

Every test runs against a real database holding schema.sql; the flows run on
psycopg 3 (sync Session, as the Celery workers) and asyncpg (AsyncSession, as the
FastAPI API).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from psycopg import sql
from sqlalchemy import create_engine, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session, selectinload

from loader import ConfigurationError, get_progress, save_batch
from loader.orm import (
    OCR_STATUS,
    PROCESS_STATUS,
    Base,
    BatchExecution,
    ChainExecution,
    LoadReject,
    OCRExecution,
    OCRStatus,
    OCRTextBox,
    ProcessStatus,
    TaskLog,
    batch_status,
    engine_url,
)
from loader.schema.check import describe
from loader.testing import TemplateDatabases, with_dbname

DRIVERS = ["psycopg", "asyncpg"]
PLACEHOLDER_ERROR = "failed (no error recorded by the writer)"


# --------------------------------------------------------------------------- helpers


def run_on(driver: str, dsn: str, flow: Callable[[Session], Any]) -> Any:
    """Run ``flow(session)`` on a sync Session (psycopg) or inside an AsyncSession (asyncpg).

    On asyncpg the flow runs through AsyncSession.run_sync, so every statement it
    makes (lazy loads included) goes through asyncpg and its type handling.
    """
    if driver == "psycopg":
        engine = create_engine(engine_url(dsn))
        try:
            with Session(engine) as session:
                return flow(session)
        finally:
            engine.dispose()

    async def main() -> Any:
        engine = create_async_engine(engine_url(dsn, "asyncpg"))
        try:
            async with AsyncSession(engine) as session:
                return await session.run_sync(flow)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def box(i: int, j: int) -> dict[str, Any]:
    return {
        "text": f"image {i} line {j}",
        "confidence": round(0.5 + j / 20, 3),
        "bbox": [[0.0, 10.0 * j], [100.5, 10.0 * j], [100.5, 10.0 * j + 8], [0.0, 10.0 * j + 8]],
    }


def results(batch_id: str, first: int, count: int) -> list[dict[str, Any]]:
    """``count`` images: every fourth failed upstream, the others with 3 to 5 boxes."""
    out = []
    for i in range(first, first + count):
        item: dict[str, Any] = {
            "image_path": f"/images/{batch_id}/{i:04}.png",
            "public_path": f"https://cdn.example/{batch_id}/{i:04}.png",
        }
        if i % 4 == 3:
            item.update(status="failed", error=f"model timeout on image {i}", text_boxes=[])
        else:
            item.update(status="success", text_boxes=[box(i, j) for j in range(3 + i % 3)])
        out.append(item)
    return out


def snapshot(session: Session, batch_id: str) -> dict[str, Any]:
    """Every value the ORM reads for the batch, its chains, OCR rows, boxes and task logs."""
    session.expire_all()
    batch = session.scalars(select(BatchExecution).where(BatchExecution.batch_id == batch_id)).one()

    def values(obj: Any) -> tuple[Any, ...]:
        return tuple(getattr(obj, c.key) for c in obj.__table__.columns)

    shot: dict[str, Any] = {
        "batch": values(batch),
        "chains": [],
        "rejects": [values(r) for r in batch.rejects],
    }
    for chain in batch.chains:
        ocr = chain.ocr_execution
        shot["chains"].append(
            (
                values(chain),
                [values(t) for t in chain.task_logs],
                values(ocr) if ocr else None,
                [values(b) for b in ocr.text_boxes] if ocr else [],
            )
        )
    return shot


# --------------------------------------------------------------------------- the drift guard


def test_models_match_the_deployed_schema(dsn: str) -> None:
    """Alembic autogenerate, run with these models on a schema.sql database, finds nothing to do.

    Compared: tables, columns, nullability, types (compare_type), server defaults
    (compare_server_default) and identities, comments, unique constraints, foreign
    keys (with ON DELETE) and indexes by name and columns. Alembic does not compare
    CHECK constraints or index predicates: the next test covers those.
    """
    engine = create_engine(engine_url(dsn))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_the_drift_guard_sees_a_schema_change(dsn: str, db: psycopg.Connection[Any]) -> None:
    """The comparison above is not vacuous: changes a new schema version could make show up."""
    db.execute("ALTER TABLE ocr_executions ADD COLUMN reviewed_by text")
    db.execute("COMMENT ON COLUMN ocr_text_boxes.bbox IS 'a polygon'")
    db.execute("ALTER TABLE task_logs ALTER COLUMN retries SET DEFAULT 1")
    db.execute("DROP INDEX task_logs_status_updated_idx")
    db.execute("ALTER TABLE load_rejects ALTER COLUMN reason TYPE varchar(100)")
    db.execute("ALTER TABLE chain_executions ALTER COLUMN total_tasks DROP NOT NULL")
    engine = create_engine(engine_url(dsn))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            diffs = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    # Column changes come as lists of operations, table-level ones as tuples.
    found = sorted(
        f"{op[0]} {op[-1].name}" if isinstance(op, tuple) else f"{op[0][0]} {op[0][3]}" for op in diffs
    )
    assert found == [
        "add_index task_logs_status_updated_idx",
        "modify_comment bbox",
        "modify_default retries",
        "modify_nullable total_tasks",
        "modify_type reason",
        "remove_column reviewed_by",
    ], diffs


# What `loader schema check` compares, minus what create_all cannot make (triggers,
# functions, grants, the version row); comments are compared separately.
CREATED_BY_METADATA = ("table", "column", "constraint", "index", "enum")
COMMENTS = """
SELECT c.relname || coalesce('.' || a.attname, ''), d.description
FROM pg_description d
JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid AND d.objsubid > 0
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relname = ANY(%(tables)s)
"""


def catalog(dsn: str) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """The schema-check description of the models' tables and enum types, and their comments."""
    tables = list(Base.metadata.tables)
    with psycopg.connect(dsn) as conn, conn.transaction(force_rollback=True):
        only = {"tables": tables, "enums": ["process_status", "ocr_status"]}
        described = describe(conn, "public", only=only)
        comments = set(conn.execute(COMMENTS, {"tables": tables}).fetchall())
    return {k: v for k, v in described.items() if k.split(" ")[0] in CREATED_BY_METADATA}, comments


@pytest.fixture
def empty_dsn(templates: TemplateDatabases) -> Iterator[str]:
    """A database without the loader schema (named with the templates' prefix, so it is cleaned up)."""
    name = f"{templates.prefix}_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(templates.maintenance_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_dbname(templates.maintenance_dsn, name)
    with psycopg.connect(templates.maintenance_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_create_all_builds_the_tables_of_schema_sql(dsn: str, empty_dsn: str) -> None:
    """create_all on an empty database gives every table exactly as schema.sql, as
    `loader schema check` describes them: each column (type, NOT NULL, default,
    identity), constraint (CHECKs included), index (method and partial predicate
    included), enum type, and every table and column comment."""
    engine = create_engine(engine_url(empty_dsn))
    try:
        with engine.begin() as conn:
            # The enum types belong to schema.sql; create_all leaves them alone.
            with (
                pytest.raises(Exception, match='type "process_status" does not exist'),
                conn.begin_nested(),
            ):
                Base.metadata.create_all(conn)
            PROCESS_STATUS.create(conn)
            OCR_STATUS.create(conn)
            Base.metadata.create_all(conn)
    finally:
        engine.dispose()
    (deployed, deployed_comments), (created, created_comments) = catalog(dsn), catalog(empty_dsn)
    assert len(deployed) > 100 and len(deployed_comments) > 20
    assert created == deployed
    assert created_comments == deployed_comments


def test_create_all_on_the_deployed_schema_creates_no_types(dsn: str, db: psycopg.Connection[Any]) -> None:
    """An application calling create_all at start-up adds no stray enum types (processstatus, ocrstatus)."""
    before = db.execute("SELECT typname FROM pg_type WHERE typtype = 'e' ORDER BY 1").fetchall()
    engine = create_engine(engine_url(dsn))
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()
    after = db.execute("SELECT typname FROM pg_type WHERE typtype = 'e' ORDER BY 1").fetchall()
    assert after == before == [("ocr_status",), ("process_status",)]


def test_save_path_does_not_import_sqlalchemy() -> None:
    code = (
        "import sys, loader, loader.save.call, loader.celery, loader.cli\n"
        "found = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic'))\n"
        "print(found)\n"
        "assert not found\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- the application's flow


def application_flow(session: Session, *, dsn: str, batch_id: str) -> None:
    """What the application does around the loader, in order, with its checks."""
    chunk1, chunk2 = results(batch_id, 0, 6), results(batch_id, 6, 5)
    bad_line = b'{"image_path": "/images/cut-short.png", "status": "succ'
    total = len(chunk1) + len(chunk2) + 1

    # The API creates the batch and the pipeline starts it.
    batch = BatchExecution(batch_id=batch_id, total_images=total)
    session.add(batch)
    session.commit()
    assert (batch.status, batch.completed_images, batch.failed_images) == (ProcessStatus.PENDING, 0, 0)
    assert batch.get_progress_percentage() == 0.0
    assert isinstance(batch.id, int)
    assert batch.created_at.tzinfo is not None and batch.updated_at.tzinfo is not None
    batch.start_execution()
    session.commit()
    assert batch.status is ProcessStatus.STARTED

    # Workers save through the loader, on their own psycopg connection.
    with psycopg.connect(dsn) as conn:
        first = save_batch(conn, batch_id, [*chunk1, bad_line])
    assert (first.stored, first.failed, first.rejected) == (5, 1, 1)
    session.refresh(batch)
    assert (batch.completed_images, batch.failed_images) == (5, 2)
    assert batch.status is ProcessStatus.STARTED
    with psycopg.connect(dsn) as conn:
        assert batch.get_progress_percentage() == get_progress(conn, batch_id).percentage
    assert batch.get_progress_percentage() == pytest.approx(100 * 7 / total)

    with psycopg.connect(dsn) as conn:
        save_batch(conn, batch_id, chunk2, position_offset=len(chunk1) + 1)
    session.refresh(batch)
    assert batch.get_progress_percentage() == 100.0
    assert (
        batch.status
        is ProcessStatus.SUCCESS
        == batch_status(batch.total_images, batch.completed_images, batch.failed_images)
    )

    # Walk batch -> chains -> OCR rows -> boxes: each image as it was sent, boxes in reading order.
    sent = {item["image_path"]: item for item in chunk1 + chunk2}
    seen = {}
    for chain in batch.chains:
        assert chain.batch is batch
        ocr = chain.ocr_execution
        assert ocr is not None and ocr.chain is chain
        assert isinstance(ocr.status, OCRStatus)
        item = sent[ocr.image_path]
        assert (ocr.public_path, ocr.status.value, ocr.error) == (
            item["public_path"],
            item["status"],
            item.get("error"),
        )
        assert chain.status is (
            ProcessStatus.SUCCESS if ocr.status is OCRStatus.SUCCESS else ProcessStatus.FAILURE
        )
        assert [b.position for b in ocr.text_boxes] == list(range(len(item["text_boxes"])))
        assert [{"text": b.text, "confidence": b.confidence, "bbox": b.bbox} for b in ocr.text_boxes] == item[
            "text_boxes"
        ]
        seen[ocr.image_path] = ocr
    assert seen.keys() == sent.keys()
    assert [(r.position, r.raw) for r in batch.rejects] == [(len(chunk1), bad_line)]

    # Filters by status, through the enum types.
    failed = session.scalars(
        select(OCRExecution)
        .join(ChainExecution)
        .where(ChainExecution.batch_id == batch_id, OCRExecution.status == OCRStatus.FAILED)
        .order_by(OCRExecution.image_path)
    ).all()
    assert [o.image_path for o in failed] == sorted(p for p, i in sent.items() if i["status"] == "failed")
    assert session.scalars(
        select(BatchExecution.batch_id).where(BatchExecution.status == ProcessStatus.SUCCESS)
    ).all() == [batch_id]
    assert (
        session.scalar(
            select(ChainExecution.id)
            .where(ChainExecution.batch_id == batch_id, ChainExecution.status.in_([ProcessStatus.FAILURE]))
            .limit(1)
        )
        == failed[0].chain.id
    )

    # A task log linked to a chain, and the chain's counters.
    chain = failed[0].chain
    log = TaskLog(task_id=f"task-{batch_id}", task_name="ocr.run", chain=chain, status=ProcessStatus.RETRY)
    session.add(log)
    chain.increment_failed_tasks()
    session.commit()
    assert log.chain_execution_id == chain.id and log.chain is chain and chain.task_logs == [log]
    assert (log.retries, log.error, log.created_at.tzinfo is not None) == (0, None, True)
    assert chain.failed_tasks == 2
    log.status = ProcessStatus.SUCCESS
    chain.increment_completed_tasks()
    session.commit()
    assert log.updated_at >= log.created_at

    # The pipeline completes the batch: the status the loader computed stays, nothing is written.
    stamp = batch.updated_at
    assert batch.complete_execution() is ProcessStatus.SUCCESS
    session.commit()
    session.refresh(batch)
    assert (batch.status, batch.updated_at) == (ProcessStatus.SUCCESS, stamp)

    # A redelivery of every chunk changes nothing the application reads.
    before = snapshot(session, batch_id)
    session.commit()  # no transaction held open while the loader merges
    with psycopg.connect(dsn) as conn:
        again = [
            save_batch(conn, batch_id, [*chunk1, bad_line]),
            save_batch(conn, batch_id, chunk2, position_offset=len(chunk1) + 1),
        ]
    assert [r.unchanged for r in again] == [len(chunk1) + 1, len(chunk2)]
    assert snapshot(session, batch_id) == before


@pytest.mark.parametrize("driver", DRIVERS)
def test_application_flow_beside_the_loader(dsn: str, driver: str) -> None:
    run_on(driver, dsn, lambda s: application_flow(s, dsn=dsn, batch_id=f"orm-{driver}"))


def test_complete_execution_never_contradicts_the_loader(dsn: str, pool: Any) -> None:
    """complete_execution writes what the next merge would write: a replay then writes nothing."""

    def flow(session: Session) -> None:
        session.add_all(
            [
                BatchExecution(batch_id="all-failed", total_images=2),
                BatchExecution(batch_id="half", total_images=4),
            ]
        )
        session.commit()
        save_batch(
            pool, "all-failed", [{"image_path": "/a/1", "status": "failed", "error": "x"}, b"not json"]
        )
        save_batch(pool, "half", results("half", 0, 2))
        for batch in session.scalars(select(BatchExecution).order_by(BatchExecution.batch_id)):
            session.refresh(batch)
            assert batch.status is batch_status(
                batch.total_images, batch.completed_images, batch.failed_images
            )
            assert batch.complete_execution() is batch.status
            # Counts stay the loader's: an unfinished batch is not declared finished.
            assert (
                batch.status
                is {"all-failed": ProcessStatus.FAILURE, "half": ProcessStatus.STARTED}[batch.batch_id]
            )
            assert not session.dirty
        session.commit()
        before = snapshot(session, "half")
        session.commit()
        save_batch(pool, "half", results("half", 0, 2))
        assert snapshot(session, "half") == before

    run_on("psycopg", dsn, flow)


def test_a_started_batch_stays_started_through_the_loaders_merges_until_it_completes(
    pool: Any, dsn: str
) -> None:
    """start_execution and the loader's rule agree: an empty call keeps STARTED, a call
    with inputs gives the status the loader computes from them."""

    def flow(session: Session) -> None:
        batch = BatchExecution(batch_id="started", total_images=3)
        session.add(batch)
        session.commit()
        batch.start_execution()
        session.commit()
        assert batch.complete_execution() is ProcessStatus.STARTED  # nothing received: stays started
        session.commit()
        save_batch(pool, "started", [])
        session.refresh(batch)
        assert batch.status is ProcessStatus.STARTED
        save_batch(pool, "started", results("started", 0, 1))
        session.refresh(batch)
        assert batch.status is ProcessStatus.STARTED
        batch.start_execution()  # the loader counts images now: nothing to do
        assert not session.dirty

    run_on("psycopg", dsn, flow)


def test_progress_never_exceeds_100_and_an_empty_batch_is_complete() -> None:
    assert (
        BatchExecution(total_images=0, completed_images=0, failed_images=0).get_progress_percentage() == 100.0
    )
    assert (
        BatchExecution(total_images=2, completed_images=3, failed_images=1).get_progress_percentage() == 100.0
    )
    assert (
        BatchExecution(total_images=8, completed_images=1, failed_images=1).get_progress_percentage() == 25.0
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_rows_written_through_the_orm_without_error_or_position(dsn: str, driver: str) -> None:
    """A failed OCR row without an error gets the schema's placeholder (read back at once),
    loses it when set to success, and a box without a position goes last in reading order."""

    def flow(session: Session) -> None:
        batch = BatchExecution(batch_id="manual", total_images=1)
        chain = ChainExecution(chain_id=f"chain-{driver}", batch=batch)
        ocr = OCRExecution(image_path="/manual/1.png", status=OCRStatus.FAILED, chain=chain)
        session.add_all([batch, chain, ocr])
        session.flush()
        assert ocr.error == PLACEHOLDER_ERROR
        assert session.scalars(
            select(OCRExecution.id).where(OCRExecution.status == OCRStatus.FAILED)
        ).all() == [ocr.id]
        ocr.status = OCRStatus.SUCCESS
        ocr.text_boxes = [
            OCRTextBox(text="second", confidence=0.8, bbox=[[0, 10], [5, 10]], position=1),
            OCRTextBox(text="first", confidence=0.9, bbox=[[0, 0], [5, 0]], position=0),
        ]
        session.flush()
        assert ocr.error is None
        ocr.text_boxes.append(OCRTextBox(text="added later", confidence=1.0, bbox=[[0, 20], [5, 20]]))
        ocr.text_boxes.append(OCRTextBox(text="and after it", confidence=0.0, bbox=[[0, 30], [5, 30]]))
        session.commit()
        assert [b.position for b in ocr.text_boxes[-2:]] == [2, 3]
        session.expire_all()
        again = session.get(OCRExecution, ocr.id)
        assert again is not None and again.error is None
        assert [b.text for b in again.text_boxes] == ["first", "second", "added later", "and after it"]
        assert all(b.created_at.tzinfo is not None for b in again.text_boxes)

    run_on(driver, dsn, flow)


def test_async_session_reads_without_lazy_loads(dsn: str) -> None:
    """On asyncpg with plain awaits (no run_sync): server values come back with the
    write itself, so nothing needs a lazy load (which AsyncSession refuses)."""

    async def main() -> None:
        engine = create_async_engine(engine_url(dsn, "asyncpg"))
        try:
            async with AsyncSession(engine, expire_on_commit=False) as session:
                batch = BatchExecution(batch_id="async", total_images=2)
                session.add(batch)
                await session.flush()
                created = batch.updated_at
                assert batch.status is ProcessStatus.PENDING and batch.completed_images == 0
                batch.start_execution()
                await session.flush()
                assert batch.updated_at >= created and batch.updated_at.tzinfo is not None
                await session.commit()
            with psycopg.connect(dsn) as conn:
                save_batch(conn, "async", results("async", 0, 2))
            async with AsyncSession(engine) as session:
                loaded = (
                    await session.scalars(
                        select(BatchExecution)
                        .where(BatchExecution.status == ProcessStatus.SUCCESS)
                        .options(
                            selectinload(BatchExecution.chains)
                            .selectinload(ChainExecution.ocr_execution)
                            .selectinload(OCRExecution.text_boxes)
                        )
                    )
                ).one()
                assert loaded.get_progress_percentage() == 100.0
                paths = [c.ocr_execution.image_path for c in loaded.chains if c.ocr_execution]
                assert sorted(paths) == [r["image_path"] for r in results("async", 0, 2)]
                texts = {
                    c.ocr_execution.image_path: [b.text for b in c.ocr_execution.text_boxes]
                    for c in loaded.chains
                    if c.ocr_execution
                }
                assert texts == {
                    r["image_path"]: [b["text"] for b in r["text_boxes"]] for r in results("async", 0, 2)
                }
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_load_rejects_read_through_the_orm(dsn: str, pool: Any) -> None:
    save_batch(pool, "rejects", [b"\xff not json", b'{"image_path": ""}'])

    def flow(session: Session) -> None:
        rejects = session.scalars(select(LoadReject).order_by(LoadReject.position)).all()
        assert [(r.batch.batch_id, r.position, r.raw, r.resolved_at) for r in rejects] == [
            ("rejects", 0, b"\xff not json", None),
            ("rejects", 1, b'{"image_path": ""}', None),
        ]

    run_on("psycopg", dsn, flow)


# --------------------------------------------------------------------------- the original models


@pytest.mark.parametrize("driver", DRIVERS)
def test_original_models_read_and_write_schema_v3(dsn: str, driver: str, pool: Any) -> None:
    """The application's own models, changed only in their enums, work on schema v3:
    the old row-by-row writes (no error, no position, no ids) go in, and rows the loader
    stored read back through them."""
    from helpers import orm_app as app

    save_batch(pool, "loader-side", results("loader-side", 0, 4))

    def flow(session: Session) -> None:
        batch = app.BatchExecution(batch_id="old-path", total_images=1)
        chain = app.ChainExecution(chain_id=str(uuid.uuid4()), batch=batch)
        ocr = app.OCRExecution(
            image_path="/old/1.png",
            public_path="https://cdn/old/1.png",
            chain_id=chain.chain_id,
            status=app.OCRStatus.FAILED,
        )
        # Row by row, as the old path wrote: the original models relate no chain to its OCR row.
        session.add_all([batch, chain])
        session.flush()
        session.add(ocr)
        session.flush()
        ocr.status = app.OCRStatus.SUCCESS
        ocr.text_boxes = [
            app.OCRTextBox(text=t, confidence=0.5, bbox=[[0, i], [1, i]]) for i, t in enumerate("abc")
        ]
        log = app.TaskLog(task_id="old-task", task_name="ocr", chain=chain, status=app.ProcessStatus.REVOKED)
        session.add(log)
        session.commit()
        assert log.chain_execution_id == chain.id and isinstance(ocr.id, int)

        session.expire_all()
        old = session.scalars(
            select(app.OCRExecution).where(app.OCRExecution.image_path == "/old/1.png")
        ).one()
        assert old.status is app.OCRStatus.SUCCESS
        assert sorted(b.text for b in old.text_boxes) == ["a", "b", "c"]
        assert session.scalars(
            select(app.TaskLog.task_id).where(app.TaskLog.status == app.ProcessStatus.REVOKED)
        ).all() == ["old-task"]

        stored = session.scalars(
            select(app.OCRExecution).where(app.OCRExecution.status == app.OCRStatus.FAILED)
        ).all()
        assert [o.image_path for o in stored] == ["/images/loader-side/0003.png"]
        loader_batch = session.scalars(
            select(app.BatchExecution).where(app.BatchExecution.batch_id == "loader-side")
        ).one()
        assert (loader_batch.status, loader_batch.completed_images, loader_batch.failed_images) == (
            app.ProcessStatus.SUCCESS,
            3,
            1,
        )

    run_on(driver, dsn, flow)

    # What the schema filled in for them, as loader.orm sees it.
    def check(session: Session) -> None:
        ocr = session.scalars(select(OCRExecution).where(OCRExecution.image_path == "/old/1.png")).one()
        assert ocr.error is None
        assert [(b.position, b.text) for b in ocr.text_boxes] == [(0, "a"), (1, "b"), (2, "c")]

    run_on("psycopg", dsn, check)


@pytest.mark.parametrize("driver", DRIVERS)
def test_original_failed_row_gets_the_placeholder_error(dsn: str, driver: str) -> None:
    from helpers import orm_app as app

    def flow(session: Session) -> int:
        batch = app.BatchExecution(batch_id="old-failed", total_images=1)
        chain = app.ChainExecution(chain_id=str(uuid.uuid4()), batch=batch)
        ocr = app.OCRExecution(
            image_path="/old/f.png",
            public_path="/p/f.png",
            chain_id=chain.chain_id,
            status=app.OCRStatus.FAILED,
        )
        session.add_all([batch, chain])
        session.flush()
        session.add(ocr)
        session.commit()
        return ocr.id

    ocr_id = run_on(driver, dsn, flow)
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT status::text, error FROM ocr_executions WHERE id = %s", [ocr_id]
        ).fetchone() == (
            "failed",
            PLACEHOLDER_ERROR,
        )


# --------------------------------------------------------------------------- engine_url


def test_engine_url_connects_both_drivers_from_a_libpq_dsn(dsn: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    keyword_dsn = psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})
    for source in (dsn, keyword_dsn):
        assert run_on("psycopg", source, lambda s: s.scalar(select(BatchExecution.id).limit(1))) is None
        assert run_on("asyncpg", source, lambda s: s.scalar(select(BatchExecution.id).limit(1))) is None


def test_engine_url_keeps_the_password_and_refuses_what_asyncpg_would_drop() -> None:
    url = engine_url("host=db port=5433 user=app password='p@ss w:rd/' dbname=ocr application_name=api")
    assert (url.host, url.port, url.username, url.password, url.database) == (
        "db",
        5433,
        "app",
        "p@ss w:rd/",
        "ocr",
    )
    assert dict(url.query) == {"application_name": "api"}
    assert "p@ss" not in repr(url)
    assert engine_url("postgresql://app@db/ocr?sslmode=require", "asyncpg").query == {"ssl": "require"}
    with pytest.raises(ConfigurationError, match="application_name"):
        engine_url("postgresql://app@db/ocr?application_name=api", "asyncpg")
    with pytest.raises(ConfigurationError, match="driver"):
        engine_url("postgresql://app@db/ocr", "psycopg2")


def test_the_python_status_rule_is_the_schemas(db: Any) -> None:
    """loader.orm.batch_status and schema.sql's loader_batch_status (the merge's rule) agree."""
    cases = [
        (declared, completed, failed, current)
        for declared in (0, 1, 3)
        for completed in (0, 1, 3)
        for failed in (0, 1, 3)
        for current in (ProcessStatus.PENDING, ProcessStatus.STARTED, ProcessStatus.SUCCESS)
    ]
    for declared, completed, failed, current in cases:
        (in_sql,) = db.execute(
            "SELECT loader_batch_status(%s, %s, %s, %s::process_status)::text",
            [declared, completed, failed, current.value],
        ).fetchone()
        assert batch_status(declared, completed, failed, current).value == in_sql, (
            declared,
            completed,
            failed,
        )
