"""The five ways of saving one OCR batch that the benchmarks compare.

Every approach writes the same rows into the real schema (keys, checks and
foreign keys kept): one batch row with its final totals, and per image one
chain (chain_id derived as the loader derives it), one OCR execution and its
text boxes in reading order. Only the loader validates its input; the others
trust it, as the old code did.

An approach is opened on a DSN (connecting, and for the ORM initialising the
dialect, happens there, outside any measurement), called once per round with
``(batch_id, results)``, and closed. ``statements(n)`` is the client's own count
of what it sends, the cross-check for the server-side count.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import psycopg
from psycopg import pq
from psycopg.adapt import Dumper
from psycopg.types import TypeInfo
from psycopg.types.json import Jsonb

from loader import save_batch
from loader.copy import bbox_json
from loader.save.validate import chain_id_for

# Benchmark connections never prepare statements: a prepared statement runs
# faster, but PostgreSQL 15's pg_stat_statements stops counting some utility
# statements once psycopg prepares (its 5th execution of a query), and the old
# ORM path did not prepare either.
CONNECT_KWARGS: dict[str, Any] = {"prepare_threshold": None}


class Approach(abc.ABC):
    name: ClassVar[str]
    #: One line for the report: what the approach does.
    summary: ClassVar[str]

    @abc.abstractmethod
    def open(self, dsn: str) -> None: ...

    @abc.abstractmethod
    def __call__(self, batch_id: str, results: Sequence[dict[str, Any]]) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def statements(self, n: int, boxes: int) -> int:
        """Statements this approach sends for ``n`` images of ``boxes`` boxes (client-side count)."""


class _PsycopgApproach(Approach):
    conn: psycopg.Connection[Any]

    def open(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, **CONNECT_KWARGS)

    def close(self) -> None:
        self.conn.close()


_INSERT_BATCH = (
    "INSERT INTO batch_executions (batch_id, status, total_images, completed_images, failed_images)"
    " VALUES (%s, %s, %s, %s, %s)"
)
_FINISH_BATCH = (
    "UPDATE batch_executions SET status = 'SUCCESS', completed_images = %s, failed_images = 0"
    " WHERE batch_id = %s"
)
_INSERT_CHAIN = (
    "INSERT INTO chain_executions (chain_id, batch_id, status, total_tasks, completed_tasks, failed_tasks)"
    " VALUES (%s, %s, 'SUCCESS', 1, 1, 0)"
)
_INSERT_OCR = (
    "INSERT INTO ocr_executions (chain_id, image_path, public_path, status, error)"
    " VALUES (%s, %s, %s, %s, %s) RETURNING id"
)
_INSERT_BOX = (
    "INSERT INTO ocr_text_boxes (ocr_execution_id, position, text, confidence, bbox)"
    " VALUES (%s, %s, %s, %s, %s)"
)


class RowByRow(_PsycopgApproach):
    """The old save path: every row its own INSERT and COMMIT."""

    name = "row-by-row"
    summary = "an INSERT and a COMMIT per row, as the old ORM code's per-call commit did"

    def __call__(self, batch_id: str, results: Sequence[dict[str, Any]]) -> None:
        conn = self.conn
        conn.execute(_INSERT_BATCH, (batch_id, "STARTED", len(results), 0, 0))
        conn.commit()
        for item in results:
            chain_id = chain_id_for(batch_id, item["image_path"])
            conn.execute(_INSERT_CHAIN, (chain_id, batch_id))
            conn.commit()
            row = conn.execute(
                _INSERT_OCR,
                (chain_id, item["image_path"], item.get("public_path"), item["status"], item.get("error")),
            ).fetchone()
            conn.commit()
            assert row is not None
            for position, box in enumerate(item["text_boxes"]):
                conn.execute(
                    _INSERT_BOX, (row[0], position, box["text"], box["confidence"], Jsonb(box["bbox"]))
                )
                conn.commit()
        conn.execute(_FINISH_BATCH, (len(results), batch_id))
        conn.commit()

    def statements(self, n: int, boxes: int) -> int:
        # BEGIN + statement + COMMIT for the batch, each row, and the totals.
        return 3 * (2 + n * (2 + boxes))


class Executemany(_PsycopgApproach):
    """One transaction; psycopg executemany (pipelined), one statement per row."""

    name = "executemany"
    summary = "one transaction, psycopg executemany (pipelined): one INSERT per image, one per box"

    _CHAIN_AND_OCR = (
        "WITH chain AS ("
        " INSERT INTO chain_executions"
        " (chain_id, batch_id, status, total_tasks, completed_tasks, failed_tasks)"
        " VALUES (%(chain_id)s, %(batch_id)s, 'SUCCESS', 1, 1, 0))"
        " INSERT INTO ocr_executions (chain_id, image_path, public_path, status, error)"
        " VALUES (%(chain_id)s, %(image_path)s, %(public_path)s, %(status)s, %(error)s) RETURNING id"
    )

    def __call__(self, batch_id: str, results: Sequence[dict[str, Any]]) -> None:
        conn = self.conn
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_INSERT_BATCH, (batch_id, "STARTED", len(results), 0, 0))
            cur.executemany(
                self._CHAIN_AND_OCR,
                [
                    {
                        "chain_id": chain_id_for(batch_id, item["image_path"]),
                        "batch_id": batch_id,
                        "image_path": item["image_path"],
                        "public_path": item.get("public_path"),
                        "status": item["status"],
                        "error": item.get("error"),
                    }
                    for item in results
                ],
                returning=True,
            )
            ids = []
            while True:
                row = cur.fetchone()
                assert row is not None
                ids.append(row[0])
                if not cur.nextset():
                    break
            cur.executemany(
                _INSERT_BOX,
                [
                    (ocr_id, position, box["text"], box["confidence"], Jsonb(box["bbox"]))
                    for ocr_id, item in zip(ids, results, strict=True)
                    for position, box in enumerate(item["text_boxes"])
                ],
            )
            cur.execute(_FINISH_BATCH, (len(results), batch_id))

    def statements(self, n: int, boxes: int) -> int:
        # BEGIN, batch, one per image, one per box, totals, COMMIT.
        return 4 + n * (1 + boxes)


class Loader(_PsycopgApproach):
    """This project: save_batch, validation included."""

    name = "loader"
    summary = "save_batch(): validation, binary COPY into staging, one merge statement"

    def __call__(self, batch_id: str, results: Sequence[dict[str, Any]]) -> None:
        report = save_batch(self.conn, batch_id, results)
        if report.stored != len(results):
            raise AssertionError(f"loader stored {report.stored} of {len(results)}: {report.issues[:3]}")
        self.last_statements = report.statements

    def statements(self, n: int, boxes: int) -> int:
        return getattr(self, "last_statements", 0)


class _JsonTextBinaryDumper(Dumper):
    """JSON text that is already serialised, sent as binary jsonb (version byte + text)."""

    format = pq.Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + obj.encode("utf-8")


class CopyFloor(_PsycopgApproach):
    """Binary COPY of the same rows straight into the final tables: no validation, staging or merge."""

    name = "raw COPY floor"
    summary = "binary COPY straight into the final tables in one transaction (no validation, staging, merge)"

    def open(self, dsn: str) -> None:
        super().open(dsn)
        jsonb = TypeInfo.fetch(self.conn, "jsonb")
        assert jsonb is not None
        self.conn.commit()
        # Registered by oid only: COPY ... set_types() looks dumpers up by oid.
        dumper = type("JsonTextBinaryDumper", (_JsonTextBinaryDumper,), {"oid": jsonb.oid})
        self.conn.adapters.register_dumper(None, dumper)

    chain_id = staticmethod(chain_id_for)

    def __call__(self, batch_id: str, results: Sequence[dict[str, Any]]) -> None:
        conn = self.conn
        n = len(results)
        chain_ids = [chain_id_for(batch_id, item["image_path"]) for item in results]
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_INSERT_BATCH, (batch_id, "SUCCESS", n, n, 0))
            self.copy_rows(cur, batch_id, results, chain_ids)

    @staticmethod
    def copy_rows(
        cur: psycopg.Cursor[Any], batch_id: str, results: Sequence[dict[str, Any]], chain_ids: list[str]
    ) -> None:
        """Reserve the OCR ids, then COPY chains, OCR rows and boxes (4 statements)."""
        # OCR ids are reserved up front so that the boxes can be copied
        # with their foreign key, without reading the OCR rows back.
        cur.execute(
            "SELECT nextval(pg_get_serial_sequence('ocr_executions', 'id')) FROM generate_series(1, %s)",
            [len(results)],
        )
        ids = [row[0] for row in cur.fetchall()]
        with cur.copy(
            "COPY chain_executions (chain_id, batch_id, status, total_tasks, completed_tasks,"
            " failed_tasks) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            # Enum values travel as their label, which is their binary form too.
            copy.set_types(["text", "text", "text", "int4", "int4", "int4"])
            for chain_id in chain_ids:
                copy.write_row((chain_id, batch_id, "SUCCESS", 1, 1, 0))
        with cur.copy(
            "COPY ocr_executions (id, chain_id, image_path, public_path, status, error)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "text", "text", "text", "text", "text"])
            for ocr_id, chain_id, item in zip(ids, chain_ids, results, strict=True):
                copy.write_row(
                    (ocr_id, chain_id, item["image_path"], item.get("public_path"), item["status"], None)
                )
        with cur.copy(
            "COPY ocr_text_boxes (ocr_execution_id, position, text, confidence, bbox)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "int4", "text", "float8", "jsonb"])
            for ocr_id, item in zip(ids, results, strict=True):
                for position, box in enumerate(item["text_boxes"]):
                    copy.write_row((ocr_id, position, box["text"], box["confidence"], bbox_json(box["bbox"])))

    def statements(self, n: int, boxes: int) -> int:
        # BEGIN, batch, reserve ids, three COPYs, COMMIT.
        return 7


class OrmBulk(Approach):
    """The original analysis' fix: SQLAlchemy 2 ORM, one session, one commit,
    boxes through bulk_insert_mappings (flushing each image to learn its id)."""

    name = "orm-bulk"
    summary = "SQLAlchemy 2 ORM, one session and commit, boxes via bulk_insert_mappings"

    def open(self, dsn: str) -> None:
        from sqlalchemy import create_engine  # noqa: PLC0415  (benchmark-only dependency)

        url = psycopg.conninfo.make_conninfo(dsn)
        self.engine = create_engine(
            "postgresql+psycopg://",
            creator=lambda: psycopg.connect(url, **CONNECT_KWARGS),
            pool_size=1,
            max_overflow=0,
        )
        # First connect initialises the dialect (a few queries): outside any measurement.
        with self.engine.connect() as conn:
            conn.rollback()

    def __call__(self, batch_id: str, results: Sequence[dict[str, Any]]) -> None:
        from orm import Batch, Chain, OcrExecution, TextBox  # noqa: PLC0415
        from sqlalchemy.orm import Session  # noqa: PLC0415

        with Session(self.engine) as session:
            batch = Batch(batch_id=batch_id, status="STARTED", total_images=len(results))
            session.add(batch)
            for item in results:
                chain_id = chain_id_for(batch_id, item["image_path"])
                chain = Chain(
                    chain_id=chain_id,
                    batch_id=batch_id,
                    status="SUCCESS",
                    total_tasks=1,
                    completed_tasks=1,
                    failed_tasks=0,
                )
                ocr = OcrExecution(
                    chain=chain,
                    image_path=item["image_path"],
                    public_path=item.get("public_path"),
                    status=item["status"],
                    error=item.get("error"),
                )
                session.add(ocr)
                session.flush()
                session.bulk_insert_mappings(
                    TextBox,  # type: ignore[arg-type]
                    [
                        {
                            "ocr_execution_id": ocr.id,
                            "position": position,
                            "text": box["text"],
                            "confidence": box["confidence"],
                            "bbox": box["bbox"],
                        }
                        for position, box in enumerate(item["text_boxes"])
                    ],
                )
            batch.completed_images = len(results)
            batch.status = "SUCCESS"
            session.commit()

    def close(self) -> None:
        self.engine.dispose()

    def statements(self, n: int, boxes: int) -> int:
        # BEGIN, (batch with the first image's flush), per image chain + OCR +
        # one INSERT per box (executemany), totals UPDATE, COMMIT.
        return 4 + n * (2 + boxes)


APPROACHES: dict[str, Callable[[], Approach]] = {
    cls.name: cls for cls in (RowByRow, OrmBulk, Executemany, Loader, CopyFloor)
}
