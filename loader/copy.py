"""Binary COPY of prepared rows into the staging tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

# Staging layouts: (table, columns, PostgreSQL types). Binary COPY needs the exact
# type of every column, and the order must match the CREATE in sql/save.sql.
STAGE_IMAGES = (
    "loader_stage_images_v1",
    (
        "pos",
        "chain_id",
        "image_path",
        "public_path",
        "status",
        "error",
        "reject",
        "raw",
        "raw_sha256",
    ),
    ("int4", "text", "text", "text", "text", "text", "text", "bytea", "bytea"),
)
STAGE_BOXES = (
    "loader_stage_boxes_v1",
    ("pos", "box", "text", "confidence", "bbox"),
    ("int4", "int4", "text", "float8", "text"),
)


def bbox_json(bbox: list[list[float]]) -> str:
    """The JSON text of a validated bbox (a list of [x, y] points of finite floats).

    ``repr`` of such a list is exactly what ``json.dumps`` writes (JSON's float
    form is ``float.__repr__``, separators ", "), at a third of the cost: it
    needs no encoder object per call, and a 10,000-image call has 50,000 bboxes.
    Only for values validation produced: ints, subclasses or non-finite floats
    would print differently.
    """
    return repr(bbox)


def copy_rows(
    conn: psycopg.Connection[Any],
    layout: tuple[str, Sequence[str], Sequence[str]],
    rows: Iterable[Sequence[Any]],
) -> None:
    """Stream ``rows`` into a table with one binary COPY statement.

    psycopg buffers the rows and sends them in large messages while we keep
    producing them, so memory stays bounded by its buffer, not by the row count.
    """
    table, columns, types = layout
    statement = sql.SQL("COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)").format(
        table=sql.Identifier(table),
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)
