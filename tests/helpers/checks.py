"""Assertions about what the database holds, shared by the tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from loader.copy import STAGE_IMAGES


@dataclass(frozen=True)
class LoginRole:
    """A role a test created, with a password: servers that require one (scram-sha-256) admit it."""

    name: str
    password: str

    def dsn(self, dsn: str) -> str:
        """The same server and database as ``dsn``, as this role."""
        return make_conninfo(dsn, user=self.name, password=self.password)


#: What the merge's text (as pg_stat_activity shows it) holds: it is the statement that reads staging.
MERGE_MARK = f'FROM "{STAGE_IMAGES.table}"'

TABLES = (
    "batch_executions",
    "chain_executions",
    "ocr_executions",
    "ocr_text_boxes",
    "load_rejects",
)


def row_counts(db: psycopg.Connection[Any]) -> dict[str, int]:
    return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]


def snapshot(db: psycopg.Connection[Any]) -> dict[str, Any]:
    """Every stored row (ids and timestamps included), to compare before/after."""
    out: dict[str, Any] = {}
    for t in TABLES:
        out[t] = db.execute(f"SELECT * FROM {t} ORDER BY id").fetchall()
    return out


def snapshot_by_column(db: psycopg.Connection[Any], tables: tuple[str, ...] = TABLES) -> dict[str, Any]:
    """Every stored row as {column: value}, so a schema change's new columns can be set aside."""
    out: dict[str, Any] = {}
    for t in tables:
        cur = db.execute(f"SELECT * FROM {t} ORDER BY id")
        names = [c.name for c in cur.description or ()]
        out[t] = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return out


def recount(db: psycopg.Connection[Any], batch_id: str) -> tuple[int, int]:
    """(completed, failed) of a batch counted from scratch from the stored rows (open rejects only)."""
    row = db.execute(
        """
        SELECT (SELECT count(*) FROM ocr_executions o JOIN chain_executions c USING (chain_id)
                WHERE c.batch_id = %(b)s AND o.status = 'success'),
               (SELECT count(*) FROM ocr_executions o JOIN chain_executions c USING (chain_id)
                WHERE c.batch_id = %(b)s AND o.status = 'failed')
             + (SELECT count(*) FROM load_rejects WHERE batch_id = %(b)s AND resolved_at IS NULL)
        """,
        {"b": batch_id},
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def stored_totals(db: psycopg.Connection[Any], batch_id: str) -> tuple[int, int, int, str]:
    row = db.execute(
        "SELECT total_images, completed_images, failed_images, status::text"
        " FROM batch_executions WHERE batch_id = %s",
        [batch_id],
    ).fetchone()
    assert row is not None, f"batch {batch_id} not stored"
    return row[0], row[1], row[2], row[3]


def assert_totals_match_recount(db: psycopg.Connection[Any], batch_id: str) -> None:
    _, completed, failed, _ = stored_totals(db, batch_id)
    assert (completed, failed) == recount(db, batch_id)


def hold_image_path(dsn: str, image_path: str) -> psycopg.Connection[Any]:
    """A session holding an uncommitted OCR row for ``image_path``: a merge storing
    that path waits on it (after its COPYs) until this session ends."""
    blocker = psycopg.connect(dsn)
    blocker.execute(
        "INSERT INTO batch_executions (batch_id, total_images) VALUES ('blocker', 1);"
        "INSERT INTO chain_executions (chain_id, batch_id) VALUES ('blocker-chain', 'blocker');"
    )
    blocker.execute(
        "INSERT INTO ocr_executions (chain_id, image_path, status) VALUES ('blocker-chain', %s, 'success')",
        [image_path],
    )
    return blocker
