"""Repairing a batch: its rejects listed, open and resolved.

A reject is resolved when a later input of the same batch stores its image
(the merge, loader/sql/save.sql). A reject without a usable image_path (a line
that was not JSON) can only be found again by its position, so
``loader rejects B --export FILE`` writes a sparse file: line N holds the open
reject at position N-1 and every other line is empty; ``loader load FILE -b B
--repair`` reads it back with blank lines skipped but counted (loader.save.chunks),
so each fixed line is stored at its original position and resolves the reject there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from loader import queries
from loader.connection import Connectable, connection
from loader.errors import quoted, translating


@dataclass(frozen=True)
class RejectRecord:
    """One row of load_rejects as `loader rejects` shows it."""

    position: int
    image_path: str | None
    reason: str
    raw_bytes: int
    created_at: datetime
    resolved_at: datetime | None
    resolved_by: int | None
    #: image_path of the OCR row that resolved it (None while open, or if that row was deleted).
    resolved_image_path: str | None

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


@dataclass(frozen=True)
class RejectCounts:
    open: int
    resolved: int


def list_rejects(
    pool_or_conn: Connectable, batch_id: str, *, after: int = -1, limit: int = 50, open_only: bool = False
) -> list[RejectRecord]:
    """One page of a batch's rejects in input order, after position ``after``."""
    params = {"batch_id": batch_id, "after": after, "limit": limit, "open_only": open_only}
    with (
        connection(pool_or_conn) as conn,
        translating(f"listing the rejects of batch {quoted(batch_id)}"),
        conn.transaction(),
        conn.cursor(row_factory=class_row(RejectRecord)) as cur,
    ):
        return cur.execute(queries.get("rejects_list"), params).fetchall()


def count_rejects(pool_or_conn: Connectable, batch_id: str) -> RejectCounts:
    """How many of a batch's rejects are open and how many resolved."""
    with (
        connection(pool_or_conn) as conn,
        translating(f"counting the rejects of batch {quoted(batch_id)}"),
        conn.transaction(),
        conn.cursor(row_factory=class_row(RejectCounts)) as cur,
    ):
        row = cur.execute(queries.get("rejects_count"), {"batch_id": batch_id}).fetchone()
    return row or RejectCounts(0, 0)


# Rows a server-side cursor fetches per round trip when exporting: the rejects of
# a huge batch stream through without being held in memory.
EXPORT_PAGE_ROWS = 1000


def raw_rejects(
    conn: psycopg.Connection[Any], batch_id: str, *, open_only: bool
) -> Iterator[tuple[int, bytes]]:
    """(position, raw input) of a batch's rejects in input order, streamed through a
    server-side cursor in one transaction on ``conn`` (every reject, or the open ones)."""
    name = "rejects_raw_open" if open_only else "rejects_raw"
    with (
        translating(f"exporting the rejects of batch {quoted(batch_id)}"),
        conn.transaction(),
        conn.cursor(name="loader_rejects_export") as cur,
    ):
        cur.itersize = EXPORT_PAGE_ROWS
        cur.execute(queries.get(name), {"batch_id": batch_id})
        for position, raw in cur:
            yield position, bytes(raw)
