"""The staged rows: declared once, and sent by binary COPY.

Each staging table's columns are declared once with their COPY type: the
loader's own as NamedTuple fields (``Annotated[int, "int4"]``), an OCR
result's in loader/fields.py. From that follow the staging table's CREATE, the
COPY column list and types, and the rows the save path builds by keyword.
"""

from __future__ import annotations

import hashlib
from collections import namedtuple
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, NamedTuple, get_type_hints

import psycopg
from psycopg import sql
from pydantic_core import to_json

from loader import fields


class StagedInput(NamedTuple):
    """The loader's own columns of a staged input: an image to store (``reject`` NULL) or a reject."""

    pos: Annotated[int, "int4"]
    chain_id: Annotated[str | None, "text"]
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


def _columns(row: type[tuple[Any, ...]]) -> list[tuple[str, str]]:
    """A NamedTuple's fields with the COPY type each carries (``Annotated[int, "int4"]``)."""
    hints = get_type_hints(row, include_extras=True)
    return [(c, hints[c].__metadata__[0]) for c in row._fields]  # type: ignore[attr-defined]


def _row_type(name: str, columns: tuple[str, ...]) -> Any:
    """A namedtuple of ``columns``, known at run time only (so typed Any: mypy types only literal ones)."""
    make: Any = namedtuple
    return make(name, columns)


class Layout:
    """A staging table: its columns and their COPY types, and the row type that holds them."""

    def __init__(self, base: str, columns: Iterable[tuple[str, str]], not_null: Iterable[str] = ()) -> None:
        pairs = list(columns)
        self.columns = tuple(c for c, _ in pairs)
        self.types = tuple(t for _, t in pairs)
        #: The row, by keyword or position (a namedtuple of the columns).
        self.row = _row_type(base, self.columns)
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


# A staged input: the loader's columns, then an OCR result's stored fields (loader/fields.py).
STAGE_IMAGES = Layout(
    "loader_stage_images",
    [*_columns(StagedInput), *((f.name, f.copy_type) for f in fields.STORED)],
    not_null=("pos",),
)
STAGE_BOXES = Layout("loader_stage_boxes", _columns(StagedBox), not_null=StagedBox._fields)
#: A staged input's row, built by keyword: StagedInput's columns and every stored field.
StagedImage = STAGE_IMAGES.row


def staging_names() -> dict[str, sql.Composable]:
    """What loader/sql fills in: the staging tables' names (``{stage_images}``, ``{stage_boxes}``)
    and the lists of an OCR result's columns (``{result_columns}`` ..., loader/fields.py)."""
    return {
        "stage_images": STAGE_IMAGES.identifier,
        "stage_boxes": STAGE_BOXES.identifier,
        **fields.sql_lists(),
    }


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
