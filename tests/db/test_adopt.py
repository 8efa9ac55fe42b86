"""`loader schema adopt`: a database the application's ORM created, filled the old way, into schema v3."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from click.testing import CliRunner, Result
from helpers.checks import LoginRole, assert_totals_match_recount
from helpers.oldapp import OldApp, OldImage, ProcessStatus, Shape, old_images
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from loader import save_batch
from loader.cli import cli
from loader.connection import SCHEMA_VERSION
from loader.datagen import make_batch
from loader.errors import DirtyRowsError, UnknownShapeError
from loader.schema.adopt import PLACEHOLDER_ERROR, adopt
from loader.schema.check import check, describe

SHAPES = [
    Shape(ocr_status_enum=True, unique_indexes=True, task_name=True),
    Shape(ocr_status_enum=False, unique_indexes=False, task_name=False),
    Shape(ocr_status_enum=False, unique_indexes=True, task_name=True),
    Shape(ocr_status_enum=True, unique_indexes=False, task_name=False),
]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def fill(app: OldApp) -> None:
    """Two batches the old path wrote: one complete, one still running (declared 10, 4 arrived)."""
    app.save_batch("done", old_images("done", 6))
    app.save_batch("running", old_images("running", 4), total_images=10)


def rows(dsn: str, query: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


def everything(dsn: str) -> dict[str, Any]:
    """The catalog of the public schema and every row, to prove nothing changed."""
    with psycopg.connect(dsn) as conn:
        catalog = describe(conn, "public")
        conn.rollback()
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        data = {
            t: conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(t))).fetchall()
            for t in tables
        }
    return {"catalog": catalog, "rows": data}


OLD_OCR = (
    "SELECT o.id, o.image_path, o.public_path, lower(o.status::text) AS status, o.chain_id"
    " FROM ocr_executions o ORDER BY id"
)
OLD_BOXES = (
    "SELECT id, ocr_execution_id, text, confidence, bbox::text AS bbox FROM ocr_text_boxes ORDER BY id"
)
OLD_TASKS = "SELECT id, task_id, chain_execution_id, status::text AS status FROM task_logs ORDER BY id"
OLD_CHAINS = "SELECT id, chain_id, batch_id, status::text AS status FROM chain_executions ORDER BY id"


@pytest.mark.parametrize("shape", SHAPES, ids=[s.label() for s in SHAPES])
def test_each_recognised_shape_adopts_keeping_every_row(
    old_app: Callable[[Shape], OldApp], shape: Shape
) -> None:
    app = old_app(shape)
    fill(app)
    dsn = app.dsn
    before = {q: rows(dsn, q) for q in (OLD_OCR, OLD_TASKS, OLD_CHAINS)}
    boxes_before = rows(dsn, OLD_BOXES)

    report = adopt(dsn)

    assert report.state == "adopted"
    assert report.rows_after == report.rows_before
    assert check(dsn).matches, check(dsn).lines()
    assert {q: rows(dsn, q) for q in (OLD_OCR, OLD_TASKS, OLD_CHAINS)} == before
    failed = rows(dsn, "SELECT status::text AS status, error FROM ocr_executions ORDER BY id")
    assert {(r["status"], r["error"]) for r in failed} == {("success", None), ("failed", PLACEHOLDER_ERROR)}
    # Every box kept, json numbers as they were, id order as reading order per image.
    after = rows(dsn, OLD_BOXES)
    assert [{**b, "bbox": b["bbox"].replace(" ", "")} for b in after] == [
        {**b, "bbox": b["bbox"].replace(" ", "")} for b in boxes_before
    ]
    positions = rows(
        dsn, "SELECT ocr_execution_id, array_agg(position ORDER BY id) AS p FROM ocr_text_boxes GROUP BY 1"
    )
    assert all(r["p"] == list(range(len(r["p"]))) for r in positions)
    names = rows(dsn, "SELECT DISTINCT task_name FROM task_logs")
    assert names == [{"task_name": "ocr.process_image" if shape.task_name else None}]
    totals = rows(
        dsn,
        "SELECT batch_id, status::text AS status, total_images, completed_images, failed_images"
        " FROM batch_executions ORDER BY id",
    )
    assert totals == [
        {
            "batch_id": "done",
            "status": "SUCCESS",
            "total_images": 6,
            "completed_images": 5,
            "failed_images": 1,
        },
        {
            "batch_id": "running",
            "status": "STARTED",
            "total_images": 10,
            "completed_images": 3,
            "failed_images": 1,
        },
    ]
    # The totals are what a recount of the rows gives, as after any merge.
    with psycopg.connect(dsn, autocommit=True) as db:
        for batch in ("done", "running"):
            assert_totals_match_recount(db, batch)
    # Identities continue past the old ids.
    with psycopg.connect(dsn) as conn:
        (new_id,) = conn.execute(
            "INSERT INTO batch_executions (batch_id, total_images) VALUES ('n', 1) RETURNING id"
        ).fetchone()  # type: ignore[misc]
    assert new_id == 3


def test_naive_timestamps_are_read_in_the_given_time_zone_not_the_sessions(
    old_app: Callable[[Shape], OldApp],
) -> None:
    app = old_app(SHAPES[0])
    app.save_batch("b", old_images("b", 1))
    dsn = app.dsn
    (naive,) = [r["created_at"] for r in rows(dsn, "SELECT created_at FROM batch_executions")]

    adopt(make_conninfo(dsn, options="-c TimeZone=America/New_York"), timezone="Asia/Seoul")

    (aware,) = [r["created_at"] for r in rows(dsn, "SELECT created_at FROM batch_executions")]
    assert aware == naive.replace(tzinfo=ZoneInfo("Asia/Seoul"))
    assert aware != naive.replace(tzinfo=UTC)


def test_after_adoption_the_loader_saves_replays_and_rejects_as_on_its_own_schema(
    old_app: Callable[[Shape], OldApp],
) -> None:
    app = old_app(SHAPES[1])
    images = old_images("old", 8)
    app.save_batch("old", images)
    dsn = app.dsn
    adopt(dsn)
    stored = everything(dsn)["rows"]

    with psycopg.connect(dsn) as conn:
        new = save_batch(conn, "new", make_batch(5, prefix="new"))
        assert (new.stored, new.progress.status) == (5, "SUCCESS")
        replay = [
            {
                "image_path": i.image_path,
                "public_path": i.public_path,
                "status": i.status,
                "error": None if i.status == "success" else "OCR failed",
                "text_boxes": i.boxes,
            }
            for i in images
        ]
        again = save_batch(conn, "old", replay)
        assert (again.unchanged, again.stored, again.failed, again.rejected) == (8, 0, 0, 0)
        elsewhere = save_batch(conn, "other", replay[:1])
        assert elsewhere.rejected == 1

    after = everything(dsn)["rows"]
    for table in ("ocr_executions", "ocr_text_boxes", "chain_executions"):
        assert after[table][: len(stored[table])] == stored[table]
    old_batch = rows(
        dsn,
        "SELECT completed_images, failed_images, status::text AS s"
        " FROM batch_executions WHERE batch_id = 'old'",
    )
    assert old_batch == [{"completed_images": 6, "failed_images": 2, "s": "SUCCESS"}]


def test_dry_run_prints_the_sql_and_changes_nothing(old_app: Callable[[Shape], OldApp]) -> None:
    app = old_app(SHAPES[0])
    fill(app)
    dsn = app.dsn
    before = everything(dsn)

    result = run("schema", "adopt", "--dry-run", "--dsn", dsn)

    assert result.exit_code == 0, result.output
    assert 'ALTER TABLE "batch_executions" RENAME TO' in result.output
    assert "CREATE TABLE IF NOT EXISTS ocr_text_boxes" in result.output
    assert "AT TIME ZONE 'UTC'" in result.output
    assert everything(dsn) == before


def test_a_second_adopt_and_a_fresh_loader_schema_have_nothing_to_do(
    old_app: Callable[[Shape], OldApp], dsn: str
) -> None:
    app = old_app(SHAPES[0])
    fill(app)
    app_dsn = app.dsn
    first = run("schema", "adopt", "--dsn", app_dsn)
    assert first.exit_code == 0 and "adopted schema 'public'" in first.output, first.output
    adopted = everything(app_dsn)

    for target in (app_dsn, dsn):
        result = run("schema", "adopt", "--dsn", target)
        assert result.exit_code == 0
        assert "nothing to do" in result.output
    assert everything(app_dsn) == adopted


def test_an_unknown_shape_is_refused_one_line_per_difference_and_nothing_changes(
    old_app: Callable[[Shape], OldApp],
) -> None:
    app = old_app(SHAPES[0])
    fill(app)
    dsn = app.dsn
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE ocr_executions ADD COLUMN reviewer text NOT NULL DEFAULT 'x'")
        conn.execute("ALTER TABLE ocr_executions ALTER COLUMN reviewer DROP DEFAULT")
        conn.execute("ALTER TABLE task_logs DROP CONSTRAINT task_logs_chain_execution_id_fkey")
        conn.execute("ALTER TABLE chain_executions ALTER COLUMN total_tasks TYPE numeric")
        conn.execute("CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'")
        conn.execute(
            "CREATE TRIGGER audit BEFORE UPDATE ON batch_executions FOR EACH ROW EXECUTE FUNCTION audit()"
        )
    before = everything(dsn)

    result = run("schema", "adopt", "--dsn", dsn)

    assert result.exit_code == 3
    lines = result.output.splitlines()[1:]
    assert lines == [
        "  column chain_executions.total_tasks is numeric, expected integer",
        "  unexpected column ocr_executions.reviewer (text): "
        "the loader schema has no place for NOT NULL without default",
        "  missing foreign key task_logs.chain_execution_id -> chain_executions.id",
        "  trigger audit on batch_executions: the loader schema has no place for it",
    ]
    assert everything(dsn) == before
    with pytest.raises(UnknownShapeError):
        adopt(dsn, dry_run=True)


def test_a_database_without_the_application_tables_is_refused(new_database: Callable[[], str]) -> None:
    dsn = new_database()
    with pytest.raises(UnknownShapeError) as caught:
        adopt(dsn)
    assert caught.value.differences == [
        "missing table batch_executions",
        "missing table chain_executions",
        "missing table task_logs",
        "missing table ocr_executions",
        "missing table ocr_text_boxes",
    ]


def dirty(app: OldApp) -> None:
    """Rows the old models accepted and schema.sql does not."""
    app.save_batch("ok", old_images("ok", 3))
    app.new_batch("dirty", 6)
    box = {"text": "t", "bbox": [[0, 0], [1, 1]]}
    app.save_image("dirty", OldImage("s3://d/1.jpg", boxes=[{**box, "confidence": 1.5}]))
    app.save_image(
        "dirty", OldImage("s3://d/2.jpg", boxes=[{**box, "confidence": 87.0}, {**box, "confidence": 0.5}])
    )
    app.save_image(
        "dirty", OldImage("s3://d/3.jpg", boxes=[{"text": "t", "confidence": 0.5, "bbox": {"x": 1}}])
    )
    app.save_image(
        "dirty", OldImage("s3://d/4.jpg", boxes=[{"text": "t", "confidence": 0.5, "bbox": ["a\u0000b"]}])
    )
    app.save_image("dirty", OldImage("", public_path=""))
    app.crashed_chain("dirty", ProcessStatus.SUCCESS)
    chain = app.save_image("dirty", OldImage("s3://d/6.jpg"))
    m = app.models
    from sqlalchemy.orm import Session

    with Session(app.engine) as s:
        s.add(m.OCRExecution(image_path="s3://d/6b.jpg", chain_id=chain, status=app._ocr_status("success")))
        s.commit()


EXPECTED_RULES = {
    "ocr_text_boxes.confidence NOT NULL CHECK (confidence >= 0 AND confidence <= 1)": 2,
    "ocr_text_boxes.bbox NOT NULL CHECK (jsonb_typeof(bbox) = 'array')": 1,
    "ocr_text_boxes.bbox jsonb (no \\u0000, no unpaired surrogate escape)": 1,
    "ocr_executions.image_path NOT NULL, not empty or only whitespace": 1,
    "ocr_executions.public_path CHECK (public_path <> '')": 1,
    "ocr_executions.chain_id UNIQUE (one OCR row per chain)": 1,
    "chain_executions.status agrees with its OCR row (SUCCESS/FAILURE only with a success/failed OCR row)": 1,
}


def test_rows_breaking_constraints_are_reported_per_constraint_and_refused(
    old_app: Callable[[Shape], OldApp],
) -> None:
    app = old_app(SHAPES[1])
    dirty(app)
    dsn = app.dsn
    before = everything(dsn)

    dry = run("schema", "adopt", "--dry-run", "--dsn", dsn)
    assert dry.exit_code == 1
    reported = {
        line.split(": ")[0].removeprefix("-- breaks "): line
        for line in dry.output.splitlines()
        if line.startswith("-- breaks ")
    }
    assert set(reported) == set(EXPECTED_RULES)
    for rule, count in EXPECTED_RULES.items():
        assert f": {count} row(s) of " in reported[rule]
    assert (
        "(a 0-100 scale?)"
        in reported["ocr_text_boxes.confidence NOT NULL CHECK (confidence >= 0 AND confidence <= 1)"]
    )

    with pytest.raises(DirtyRowsError) as caught:
        adopt(dsn)
    assert {b.rule: b.count for b in caught.value.broken} == EXPECTED_RULES
    # A dry run of the set-aside choice shows the moves, and still changes nothing.
    dry_aside = run("schema", "adopt", "--dry-run", "--set-aside", "--dsn", dsn)
    assert dry_aside.exit_code == 0, dry_aside.output
    assert "INSERT INTO loader_adopt_set_aside" in dry_aside.output
    assert everything(dsn) == before


def test_set_aside_moves_the_breaking_rows_with_what_hangs_on_them_and_adopts_the_rest(
    old_app: Callable[[Shape], OldApp],
) -> None:
    app = old_app(SHAPES[0])
    dirty(app)
    dsn = app.dsn
    boxes_before = rows(dsn, "SELECT id, text FROM ocr_text_boxes ORDER BY id")

    result = run("schema", "adopt", "--set-aside", "--dsn", dsn)

    assert result.exit_code == 0, result.output
    assert check(dsn).matches
    aside = rows(
        dsn, "SELECT table_name, row_id, row::text AS row, reasons FROM loader_adopt_set_aside ORDER BY id"
    )
    kept = rows(dsn, "SELECT id, text FROM ocr_text_boxes ORDER BY id")
    moved = {r["row_id"] for r in aside if r["table_name"] == "ocr_text_boxes"}
    assert sorted([b["id"] for b in kept] + list(moved)) == [b["id"] for b in boxes_before]
    # The \u0000 box is kept as it was, in json.
    assert any("\\u0000" in r["row"] for r in aside)
    by_table: dict[str, int] = {}
    for r in aside:
        by_table[r["table_name"]] = by_table.get(r["table_name"], 0) + 1
    # 4 broken boxes (not their images' other boxes); the empty path and the second OCR row
    # of a chain; the crashed chain and the chain left without its only OCR row, with its task log.
    assert by_table == {"ocr_text_boxes": 4, "ocr_executions": 2, "chain_executions": 2, "task_logs": 1}
    reasons = sorted(r["reasons"] for r in aside if r["table_name"] == "chain_executions")
    assert reasons[0].startswith("breaks chain_executions.status agrees with its OCR row")
    assert reasons[1].startswith("its OCR row (id ")
    totals = rows(
        dsn,
        "SELECT total_images, completed_images, failed_images, status::text AS s"
        " FROM batch_executions WHERE batch_id = 'dirty'",
    )
    assert totals == [{"total_images": 6, "completed_images": 5, "failed_images": 0, "s": "STARTED"}]


def test_schema_check_names_every_difference_of_an_unadopted_database(
    old_app: Callable[[Shape], OldApp],
) -> None:
    app = old_app(SHAPES[0])
    dsn = app.dsn

    result = run("schema", "check", "--dsn", dsn)

    assert result.exit_code == 3
    out = result.output
    assert f"- version: {SCHEMA_VERSION}" in out
    assert "- table load_rejects: table" in out
    assert "- column ocr_executions.error: text" in out
    assert "+ index ocr_executions.ix_ocr_executions_image_path" in out
    assert "~ column batch_executions.id" in out


@pytest.mark.parametrize("adopter", ["owner", "superuser"])
def test_the_tables_keep_their_owner_and_the_application_roles_grants(
    login_role: Callable[..., LoginRole], new_database: Callable[[], str], adopter: str
) -> None:
    # A role owning the application's database and tables, and the application's own role.
    owner, app_role = login_role("owner"), login_role("app")
    dsn = new_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(str(conn.info.dbname)), sql.Identifier(owner.name)
            )
        )
    owner_dsn = owner.dsn(dsn)
    app = OldApp(owner_dsn, SHAPES[0])
    try:
        app.create_all()
        app.save_batch("b", old_images("b", 3))
    finally:
        app.close()
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {}").format(
                sql.Identifier(app_role.name)
            )
        )

    report = adopt(owner_dsn if adopter == "owner" else dsn)

    assert report.state == "adopted"
    assert check(dsn).matches
    tables = rows(
        dsn,
        "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
        " AND tablename NOT IN ('loader_schema_version', 'load_rejects', 'loader_calls',"
        " 'ocr_result_history') ORDER BY 1",
    )
    assert {t["tableowner"] for t in tables} == {owner.name}
    for t in tables:
        for privilege in ("SELECT", "INSERT", "UPDATE"):
            (granted,) = rows(
                dsn,
                sql.SQL("SELECT has_table_privilege({}, {}, {}) AS granted")
                .format(sql.Literal(app_role.name), sql.Literal(t["tablename"]), sql.Literal(privilege))
                .as_string(),
            )
            assert granted["granted"], (t, privilege)
    # The application's role still writes, ids from the identities (no sequence grant needed).
    with psycopg.connect(app_role.dsn(dsn)) as conn:
        (new_id,) = conn.execute(  # type: ignore[misc]
            "INSERT INTO batch_executions (batch_id, total_images) VALUES ('new', 1) RETURNING id"
        ).fetchone()
    assert new_id == 2


def test_an_unknown_time_zone_is_refused_before_anything_changes(old_app: Callable[[Shape], OldApp]) -> None:
    app = old_app(SHAPES[0])
    app.save_batch("b", old_images("b", 1))
    before = everything(app.dsn)

    result = run("schema", "adopt", "--timezone", "Mars/Olympus", "--dsn", app.dsn)

    assert result.exit_code == 1
    assert "unknown time zone 'Mars/Olympus'" in result.stderr
    assert everything(app.dsn) == before


def test_tables_in_use_make_adopt_give_up_soon_and_change_nothing(old_app: Callable[[Shape], OldApp]) -> None:
    app = old_app(SHAPES[0])
    app.save_batch("b", old_images("b", 1))
    before = everything(app.dsn)

    with psycopg.connect(app.dsn) as reader:
        reader.execute("SELECT count(*) FROM ocr_executions")  # holds ACCESS SHARE until rollback
        result = run("schema", "adopt", "--lock-timeout", "0.5", "--dsn", app.dsn)
        reader.rollback()

    assert result.exit_code == 1
    assert "the application's tables are in use" in result.stderr
    assert everything(app.dsn) == before
