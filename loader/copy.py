"""Binary COPY of prepared rows into the staging tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from pydantic_core import to_json

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


def bbox_json(bbox: list[list[Any]]) -> str:
    """The JSON text of a validated bbox (a list of [x, y] points of ints and finite floats).

    pydantic-core's serialiser (Rust) writes it four times faster than ``repr`` or
    ``json.dumps``, and a 10,000-image call has 50,000 bboxes. Ints stay ints
    (``10``, not ``10.0``); floats get the shortest text that reads back as the
    same double (exponents as ``1e-7`` where Python writes ``1e-07``: the same
    number, and jsonb stores numbers, not their text). NaN and infinities, which
    validation refuses, come out as ``NaN`` / ``Infinity``, which jsonb refuses too.
    """
    return to_json(bbox).decode()


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
