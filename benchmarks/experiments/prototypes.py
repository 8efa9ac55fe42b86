"""Prototypes of issue 11's server-side directions, outside the package, to measure them.

Each is an Approach (benchmarks/approaches.py) storing a batch of valid dicts
exactly as save_batch does for them (same rows, same totals), built from the
loader's own pieces (prepare, lock_batch, the staging tables, COPY). They are
the fast path only: no safety net, no "lost path" retry, no report. They exist
to put numbers on a design before anyone changes loader/sql/save.sql.

- SplitCall: one transaction, the call cut into ``parts``; part k+1 is judged in
  a thread while the server merges part k (psycopg releases the GIL while it
  waits). Uses main's merge unchanged, once per part.
- BoxesDirect: OCR ids reserved up front (nextval in bulk, as the floor does),
  an images-only merge that inserts the OCR rows with those ids, then the boxes
  COPYed straight into ocr_text_boxes, only for the images the merge inserted
  (outcome 'stored'), instead of staging them and INSERT ... SELECT.
- SplitBoxesDirect: both, the call in parts, each part stored boxes-direct while
  the next one is judged; ids reserved once for the whole call.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from approaches import CONNECT_KWARGS, Approach, _JsonTextBinaryDumper
from psycopg.types import TypeInfo

from loader import queries
from loader.connection import SCHEMA_VERSION
from loader.copy import STAGE_BOXES, STAGE_IMAGES, copy_rows
from loader.save.call import _box_rows, _image_rows
from loader.save.validate import _Judging, _Verdicts
from loader.settings import Settings

HERE = Path(__file__).resolve().parent


def _lock_batch(conn: psycopg.Connection[Any], batch_id: str, total: int, prepared: _Verdicts) -> None:
    settings = Settings()
    row = conn.execute(
        queries.get("lock_batch"),
        {
            "batch_id": batch_id,
            "total_images": total,
            "image_paths": json.dumps([im.image_path for im in prepared.images]),
            "public_paths": json.dumps([im.public_path for im in prepared.images]),
            "work_mem": settings.work_mem,
            "statement_timeout": settings.statement_timeout,
            "lock_timeout": settings.lock_timeout,
            "schema_version": SCHEMA_VERSION,
        },
        prepare=False,
    ).fetchone()
    # The prototypes store valid, fresh batches: no path may belong to another batch.
    assert row is not None and row[2] is None, row


def _judge(call: _Judging, items: Sequence[Any], offset: int) -> _Verdicts:
    """Judge one part with the call's state (duplicates are seen across parts)."""
    call.verdicts = _Verdicts()
    for index, item in enumerate(items):
        call.add(offset + index, item)
    return call.verdicts


class _Prototype(Approach):
    conn: psycopg.Connection[Any]

    def open(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, **CONNECT_KWARGS)

    def close(self) -> None:
        self.conn.close()


class SplitCall(_Prototype):
    """One transaction, ``parts`` merges: judging part k+1 overlaps the server's merge of part k."""

    summary = "save_batch cut in parts inside one transaction, the next part judged during a merge"

    def __init__(self, parts: int = 2) -> None:
        self.parts = parts
        self.name = f"split call ({parts} parts)"
        self.judge = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge")

    def close(self) -> None:
        super().close()
        self.judge.shutdown()

    def __call__(self, batch_id: str, results: Sequence[dict[str, Any]]) -> None:
        conn, n = self.conn, len(results)
        size = math.ceil(n / self.parts)
        bounds = [(start, results[start : start + size]) for start in range(0, n, size)]
        call = _Judging(batch_id)
        prepared = _judge(call, bounds[0][1], 0)
        with conn.transaction():
            for number in range(len(bounds)):
                ahead = None
                if number + 1 < len(bounds):
                    start, items = bounds[number + 1]
                    ahead = self.judge.submit(_judge, call, items, start)
                if number == 0:
                    _lock_batch(conn, batch_id, n, prepared)
                    conn.execute(queries.get("create_staging"), prepare=False)
                else:
                    # The staging tables empty only at commit: clear the part before.
                    conn.execute("TRUNCATE loader_stage_images_v1, loader_stage_boxes_v1")
                    _lock_batch(conn, batch_id, n, prepared)
                copy_rows(conn, STAGE_IMAGES, _image_rows(prepared.images, prepared.rejects))
                copy_rows(conn, STAGE_BOXES, _box_rows(prepared.images))
                rows = conn.execute(queries.get("merge"), {"batch_id": batch_id}, prepare=False).fetchall()
                assert all(row[1] == "stored" for row in rows), rows[:3]
                if ahead is not None:
                    prepared = ahead.result()

    def statements(self, n: int, boxes: int) -> int:
        # BEGIN, then per part: lock_batch, two COPYs, merge; the first part's two
        # CREATEs, every later part's TRUNCATE; COMMIT.
        return 2 + 4 * self.parts + 2 + (self.parts - 1)


_IMAGES_ONLY_MERGE = (HERE / "images_only_merge.sql").read_text(encoding="utf-8")

_CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS exp_stage_images (
    pos integer NOT NULL, ocr_id bigint, chain_id text, image_path text, public_path text,
    status text, error text, reject text, raw bytea, raw_sha256 bytea
) ON COMMIT DELETE ROWS
"""
_STAGE = (
    "exp_stage_images",
    (
        "pos",
        "ocr_id",
        "chain_id",
        "image_path",
        "public_path",
        "status",
        "error",
        "reject",
        "raw",
        "raw_sha256",
    ),
    ("int4", "int8", "text", "text", "text", "text", "text", "text", "bytea", "bytea"),
)


class BoxesDirect(_Prototype):
    """OCR ids reserved up front, an images-only merge, boxes COPYed into their final table."""

    name = "boxes direct"
    summary = "ids reserved up front, images-only merge, boxes COPYed straight into ocr_text_boxes"

    def open(self, dsn: str) -> None:
        super().open(dsn)
        jsonb = TypeInfo.fetch(self.conn, "jsonb")
        assert jsonb is not None
        self.conn.commit()
        dumper = type("JsonTextBinaryDumper", (_JsonTextBinaryDumper,), {"oid": jsonb.oid})
        self.conn.adapters.register_dumper(None, dumper)

    def __call__(self, batch_id: str, results: Sequence[dict[str, Any]]) -> None:
        conn = self.conn
        prepared = _judge(_Judging(batch_id), results, 0)
        with conn.transaction():
            _store_part(conn, batch_id, prepared, _reserve_ids(conn, len(results)), first=True)

    def statements(self, n: int, boxes: int) -> int:
        # BEGIN, lock_batch, reserve ids, CREATE, COPY images, merge, COPY boxes, COMMIT.
        return 8


def _reserve_ids(conn: psycopg.Connection[Any], n: int) -> list[int]:
    """OCR ids for every input position, reserved in one statement (a reject's stays unused)."""
    rows = conn.execute(
        "SELECT nextval(pg_get_serial_sequence('ocr_executions', 'id')) FROM generate_series(1, %s)", [n]
    ).fetchall()
    return [row[0] for row in rows]


def _store_part(
    conn: psycopg.Connection[Any], batch_id: str, prepared: _Verdicts, ids: list[int], first: bool
) -> None:
    """One part, boxes direct: lock_batch, (CREATE | TRUNCATE), COPY images, images-only merge, COPY boxes."""
    images = prepared.images
    with conn.cursor() as cur:
        _lock_batch(conn, batch_id, len(ids), prepared)
        if first:
            cur.execute(_CREATE_STAGE, prepare=False)
        else:
            cur.execute("TRUNCATE exp_stage_images")
        rows = (
            (
                im.pos,
                ids[im.pos],
                im.chain_id,
                im.image_path,
                im.public_path,
                im.status,
                im.error,
                None,
                None,
                None,
            )
            for im in images
        )
        copy_rows(conn, _STAGE, rows)
        outcomes = cur.execute(_IMAGES_ONLY_MERGE, {"batch_id": batch_id}, prepare=False).fetchall()
        owner = {pos: ocr_id for pos, outcome, ocr_id, *_ in outcomes if outcome in ("stored", "replaced")}
        with cur.copy(
            "COPY ocr_text_boxes (ocr_execution_id, position, text, confidence, bbox)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "int4", "text", "float8", "jsonb"])
            for im in images:
                ocr_id = owner.get(im.pos)
                if ocr_id is not None:
                    for _pos, box, text, confidence, bbox in im.boxes:
                        copy.write_row((ocr_id, box, text, confidence, bbox))


class SplitBoxesDirect(BoxesDirect):
    """Both: the call in ``parts``, each stored boxes-direct, the next part judged meanwhile."""

    def __init__(self, parts: int = 2) -> None:
        self.parts = parts
        self.name = f"split boxes direct ({parts} parts)"
        self.judge = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge")

    def close(self) -> None:
        super().close()
        self.judge.shutdown()

    def __call__(self, batch_id: str, results: Sequence[dict[str, Any]]) -> None:
        conn, n = self.conn, len(results)
        size = math.ceil(n / self.parts)
        bounds = [(start, results[start : start + size]) for start in range(0, n, size)]
        call = _Judging(batch_id)
        prepared = _judge(call, bounds[0][1], 0)
        with conn.transaction():
            ids = _reserve_ids(conn, n)
            for number in range(len(bounds)):
                ahead = None
                if number + 1 < len(bounds):
                    start, items = bounds[number + 1]
                    ahead = self.judge.submit(_judge, call, items, start)
                _store_part(conn, batch_id, prepared, ids, first=number == 0)
                if ahead is not None:
                    prepared = ahead.result()

    def statements(self, n: int, boxes: int) -> int:
        # BEGIN, reserve ids, per part: lock_batch, CREATE or TRUNCATE, COPY, merge, COPY; COMMIT.
        return 3 + 5 * self.parts
