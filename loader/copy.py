"""The staged rows: declared once, and sent by binary COPY.

Each staging table is a NamedTuple whose fields carry their PostgreSQL type
(``Annotated[int, "int4"]``). From that one declaration follow the staging
table's CREATE, the COPY column list and types, and the rows the save path
builds by keyword; a new column is one field here and its use in the merge.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, NamedTuple, get_type_hints

import psycopg
from psycopg import sql
from pydantic_core import to_json


class StagedImage(NamedTuple):
    """One input of a call: an image to store (``reject`` NULL) or a reject."""

    pos: Annotated[int, "int4"]
    chain_id: Annotated[str | None, "text"]
    image_path: Annotated[str | None, "text"]
    public_path: Annotated[str | None, "text"]
    status: Annotated[str | None, "text"]
    error: Annotated[str | None, "text"]
    model_version: Annotated[str | None, "text"]
    #: Why the input cannot be stored; the merge words duplicates itself (see ``duplicate``).
    reject: Annotated[str | None, "text"]
    #: A duplicate within the call: of its 'image_path' or its 'public_path'.
    duplicate: Annotated[str | None, "text"]
    #: For a duplicate image_path: the position of the image's first input in the call.
    dup_of: Annotated[int | None, "int4"]
    raw: Annotated[bytes | None, "bytea"]
    raw_sha256: Annotated[bytes | None, "bytea"]


class StagedBox(NamedTuple):
    """One text box of a staged image, ``box`` its index in reading order."""

    pos: Annotated[int, "int4"]
    box: Annotated[int, "int4"]
    text: Annotated[str, "text"]
    confidence: Annotated[float, "float8"]
    bbox: Annotated[str, "text"]


# The PostgreSQL type behind each COPY type name, for the staging CREATE.
_DDL_TYPES = {"int4": "integer", "text": "text", "bytea": "bytea", "float8": "double precision"}


class Layout:
    """A staging table made from a NamedTuple declaration."""

    def __init__(self, base: str, row: type[tuple[Any, ...]], not_null: Iterable[str] = ()) -> None:
        hints = get_type_hints(row, include_extras=True)
        self.columns = tuple(row._fields)  # type: ignore[attr-defined]
        self.types = tuple(hints[c].__metadata__[0] for c in self.columns)
        required = set(not_null)
        shape = ",".join(f"{c}:{t}:{c in required}" for c, t in zip(self.columns, self.types, strict=True))
        # Named after its shape, so a session's table of an older layout (a
        # pooled connection that outlived an upgrade) is never written into.
        self.table = f"{base}_{hashlib.sha1(shape.encode(), usedforsecurity=False).hexdigest()[:8]}"
        self._required = required

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.table)

    def create(self) -> sql.Composed:
        """The session's staging table: created once, emptied at every commit or rollback."""
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}{}").format(
                sql.Identifier(c),
                sql.SQL(_DDL_TYPES[t]),
                sql.SQL(" NOT NULL" if c in self._required else ""),
            )
            for c, t in zip(self.columns, self.types, strict=True)
        )
        return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
            self.identifier, columns
        )


STAGE_IMAGES = Layout("loader_stage_images", StagedImage, not_null=("pos",))
STAGE_BOXES = Layout("loader_stage_boxes", StagedBox, not_null=StagedBox._fields)


def staging_names() -> dict[str, sql.Identifier]:
    """The staging tables' names, for the ``{stage_images}`` / ``{stage_boxes}`` of loader/sql."""
    return {"stage_images": STAGE_IMAGES.identifier, "stage_boxes": STAGE_BOXES.identifier}


def bbox_json(bbox: list[list[Any]]) -> str:
    """The JSON text of a validated bbox (a list of [x, y] points of ints and finite floats).

    pydantic-core's serialiser (Rust) writes it four times faster than ``repr`` or
    ``json.dumps``. Ints stay ints (``10``, not ``10.0``); floats get the shortest
    text that reads back as the same double (exponents as ``1e-7`` where Python
    writes ``1e-07``: the same number, and jsonb stores numbers, not their text).
    NaN and infinities, which validation refuses, come out as ``NaN`` /
    ``Infinity``, which jsonb refuses too.
    """
    return to_json(bbox).decode()


def copy_rows(conn: psycopg.Connection[Any], layout: Layout, rows: Iterable[Sequence[Any]]) -> None:
    """Stream ``rows`` into a staging table with one binary COPY statement.

    psycopg buffers the rows and sends them in large messages while we keep
    producing them, so memory stays bounded by its buffer, not by the row count.
    """
    statement = sql.SQL("COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)").format(
        table=layout.identifier,
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in layout.columns),
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(list(layout.types))
        for row in rows:
            copy.write_row(row)
