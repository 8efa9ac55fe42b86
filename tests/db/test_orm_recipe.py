"""The application's own models beside the loader's schema (docs/application.md, option b):
its Alembic environment leaves the loader's tables alone, deletes go through the schema's
cascades, and server values read back without lazy loads on asyncpg."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import ModuleType
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from helpers import orm_app, orm_recipe
from helpers.oldapp import Shape, make_models
from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from loader import orm, save_batch
from loader.datagen import make_batch
from loader.orm import engine_url, include_object

DRIVERS = ["psycopg", "asyncpg"]
APPLICATION_MODELS: dict[str, Callable[[], MetaData]] = {
    "original (tests/helpers/oldapp.py)": lambda: make_models(Shape()).base.metadata,
    "enums changed (tests/helpers/orm_app.py)": lambda: orm_app.Base.metadata,
    "the whole recipe (tests/helpers/orm_recipe.py)": lambda: orm_recipe.Base.metadata,
}


def autogenerate(dsn: str, metadata: MetaData, **options: Any) -> list[tuple[str, str]]:
    """What ``alembic revision --autogenerate`` would propose: (operation, object name) each."""
    engine = create_engine(engine_url(dsn))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True, **options}
            )
            diffs = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    flat = [d for diff in diffs for d in (diff if isinstance(diff, list) else [diff])]
    return [(d[0], str(getattr(d[1], "name", None) or d[2] if len(d) > 2 else d[1])) for d in flat]


@pytest.mark.parametrize("models", list(APPLICATION_MODELS))
def test_autogenerate_with_the_applications_models_leaves_the_loaders_tables_alone(
    dsn: str, models: str
) -> None:
    metadata = MetaData()
    for table in APPLICATION_MODELS[models]().tables.values():
        table.to_metadata(metadata)
    Table("app_notes", metadata, Column("id", Integer, primary_key=True), Column("note", Text))

    unfiltered = autogenerate(dsn, metadata)
    filtered = autogenerate(dsn, metadata, include_object=include_object)

    assert ("remove_table", "load_rejects") in unfiltered  # what the hook is for
    assert filtered == [("add_table", "app_notes")]


def run_on(driver: str, dsn: str, flow: Callable[[Session], Any]) -> Any:
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


COUNTS = """
SELECT (SELECT count(*) FROM batch_executions WHERE batch_id = %(b)s),
       (SELECT count(*) FROM chain_executions WHERE batch_id = %(b)s),
       (SELECT count(*) FROM task_logs t JOIN chain_executions c ON c.id = t.chain_execution_id
        WHERE c.batch_id = %(b)s),
       (SELECT count(*) FROM ocr_executions o JOIN chain_executions c USING (chain_id)
        WHERE c.batch_id = %(b)s),
       (SELECT count(*) FROM ocr_text_boxes x JOIN ocr_executions o ON o.id = x.ocr_execution_id
        JOIN chain_executions c USING (chain_id) WHERE c.batch_id = %(b)s),
       (SELECT count(*) FROM load_rejects WHERE batch_id = %(b)s)
"""


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("models", [orm, orm_recipe], ids=["loader.orm", "recipe"])
def test_deleting_a_batch_through_the_models_removes_everything_under_it(
    dsn: str, db: psycopg.Connection[Any], driver: str, models: ModuleType
) -> None:
    with psycopg.connect(dsn) as conn:
        for batch_id in ("gone", "kept"):
            save_batch(conn, batch_id, [*make_batch(4, prefix=batch_id), b"not json"])
    db.execute(
        "INSERT INTO task_logs (task_id, chain_execution_id)"
        " SELECT 'task-' || id, id FROM chain_executions WHERE batch_id = 'gone'"
    )
    kept = db.execute(COUNTS, {"b": "kept"}).fetchone()

    def flow(session: Session) -> None:
        batch = session.scalars(
            select(models.BatchExecution).where(models.BatchExecution.batch_id == "gone")
        ).one()
        session.delete(batch)
        session.commit()

    run_on(driver, dsn, flow)

    assert db.execute(COUNTS, {"b": "gone"}).fetchone() == (0, 0, 0, 0, 0, 0)
    assert db.execute(COUNTS, {"b": "kept"}).fetchone() == kept


@pytest.mark.parametrize("models", [orm, orm_recipe], ids=["loader.orm", "recipe"])
def test_updated_at_reads_after_an_update_on_asyncpg(dsn: str, models: ModuleType) -> None:
    """Plain awaits, no run_sync: an expired updated_at would need a lazy load (MissingGreenlet)."""

    async def main() -> None:
        engine = create_async_engine(engine_url(dsn, "asyncpg"))
        try:
            async with AsyncSession(engine, expire_on_commit=False) as session:
                batch = models.BatchExecution(batch_id="async", total_images=1)
                session.add(batch)
                await session.commit()
                created = batch.updated_at
                batch.total_images = 2
                await session.commit()
                assert batch.updated_at > created and batch.updated_at.tzinfo is not None
        finally:
            await engine.dispose()

    asyncio.run(main())
