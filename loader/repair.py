"""Repairing a batch: its rejects listed (open and resolved), and fixed lines put back in place.

A reject is resolved when a later input of the same batch stores its image
(the merge, loader/sql/save.sql). A reject without a usable image_path (a line
that was not JSON) can only be found again by its position, so
``loader rejects B --export FILE`` writes a sparse file: line N holds the open
reject at position N-1 and every other line is empty; ``loader load FILE -b B
--repair`` reads it back with blank lines skipped but counted, so each fixed
line is stored at its original position and resolves the reject there.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from loader import queries
from loader.connection import Connectable, connection
from loader.errors import translating
from loader.validate import Prepared, prepare


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
        translating(f"listing the rejects of batch {batch_id!r}"),
        conn.transaction(),
        conn.cursor(row_factory=class_row(RejectRecord)) as cur,
    ):
        return cur.execute(queries.get("rejects_list"), params).fetchall()


def count_rejects(pool_or_conn: Connectable, batch_id: str) -> RejectCounts:
    """How many of a batch's rejects are open and how many resolved."""
    with (
        connection(pool_or_conn) as conn,
        translating(f"counting the rejects of batch {batch_id!r}"),
        conn.transaction(),
        conn.cursor(row_factory=class_row(RejectCounts)) as cur,
    ):
        row = cur.execute(queries.get("rejects_count"), {"batch_id": batch_id}).fetchone()
    return row or RejectCounts(0, 0)


def is_blank(line: bytes) -> bool:
    """A line holding nothing but whitespace: no input, but it takes a position."""
    return not line.strip()


# The one place where prepare() names another position in a reason.
_FIRST_AT = re.compile(r"\(first at position (\d+)\)")


def prepare_lines(
    batch_id: str, lines: Sequence[bytes], first: int, cancel: threading.Event | None = None
) -> Prepared:
    """prepare() for consecutive lines of a file, the first at position ``first``.

    Blank lines are not inputs: they are skipped, and the lines after them keep
    their own positions (their line number - 1), which is what puts the lines
    of a sparse export back where they came from. Stops early once ``cancel``
    is set (the load is stopping; the result is then not stored).
    """
    positions = [first + index for index, line in enumerate(lines) if not is_blank(line)]

    def inputs() -> Iterator[bytes]:
        for position in positions:
            if cancel is not None and cancel.is_set():
                return
            yield lines[position - first]

    if len(positions) == len(lines):
        return prepare(batch_id, inputs(), first)
    return _reposition(prepare(batch_id, inputs(), 0), positions)


def _reposition(prepared: Prepared, positions: Sequence[int]) -> Prepared:
    """The same judgement with input i renumbered to ``positions[i]``."""
    at = positions.__getitem__

    def reason(text: str) -> str:
        return _FIRST_AT.sub(lambda m: f"(first at position {at(int(m.group(1)))})", text)

    return dataclasses.replace(
        prepared,
        images=[
            dataclasses.replace(im, pos=at(im.pos), boxes=[(at(b[0]), *b[1:]) for b in im.boxes])
            for im in prepared.images
        ],
        rejects=[
            dataclasses.replace(rj, pos=at(rj.pos), reason=reason(rj.reason)) for rj in prepared.rejects
        ],
        invalid={at(pos): text for pos, text in prepared.invalid.items()},
    )
