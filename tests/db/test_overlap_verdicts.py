"""The merge's verdicts under overlap (issue 20, items 5, 6, 8, 9, 10, 13): the lowest
position holds a duplicated image whatever the arrival order, positions live inside the
declared total, a chain without its OCR row is a slot a valid input fills, version-3
rejects count once, and a re-OCR never takes another batch's image."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from helpers.checks import assert_totals_match_recount, stored_totals

from loader import save_batch
from loader.cli import cli
from loader.datagen import make_batch
from loader.errors import BatchNotFoundError, PositionBeyondTotalError
from loader.lifecycle.delete import delete_batch
from loader.save.call import register_batch
from loader.schema.adopt import adopt
from loader.schema.migrate import upgrade

SCHEMA_V1 = Path(__file__).parent / "data" / "schema_v1.sql"


def result(path: str, status: str = "success", text: str = "t") -> dict[str, Any]:
    boxes = (
        [{"text": text, "confidence": 0.9, "bbox": [[0, 0], [1, 0], [1, 1]]}] if status == "success" else []
    )
    return {
        "image_path": path,
        "public_path": None,
        "status": status,
        "error": None if status == "success" else "engine crashed",
        "text_boxes": boxes,
    }


def rows_of(db: psycopg.Connection[Any], batch_id: str) -> dict[str, Any]:
    """A batch's rows with the batch's own prefix taken out of every path, ids and
    timestamps and raw bytes left out: what must not depend on the arrival order."""
    cut = f"/{batch_id}/"

    def strip(value: Any) -> Any:
        return value.replace(cut, "/B/") if isinstance(value, str) else value

    def table(query: str) -> list[tuple[Any, ...]]:
        return [tuple(strip(v) for v in row) for row in db.execute(query, {"b": batch_id}).fetchall()]

    return {
        "batch": table(
            "SELECT total_images, completed_images, failed_images, status::text, declared_images"
            " FROM batch_executions WHERE batch_id = %(b)s"
        ),
        "images": table(
            "SELECT c.position, c.status::text, c.completed_tasks, c.failed_tasks, o.image_path,"
            " o.public_path, o.status::text, o.error, o.model_version FROM chain_executions c"
            " JOIN ocr_executions o USING (chain_id) WHERE c.batch_id = %(b)s ORDER BY c.position"
        ),
        "boxes": table(
            "SELECT c.position, b.position, b.text, b.confidence, b.bbox::text FROM chain_executions c"
            " JOIN ocr_executions o USING (chain_id) JOIN ocr_text_boxes b ON b.ocr_execution_id = o.id"
            " WHERE c.batch_id = %(b)s ORDER BY c.position, b.position"
        ),
        "rejects": table(
            "SELECT position, image_path, reason, resolved_at IS NULL FROM load_rejects"
            " WHERE batch_id = %(b)s ORDER BY position, reason"
        ),
    }


# ---------------------------------------------------------------------------
# Item 6: the lowest position holds a duplicated image, whatever the order
# ---------------------------------------------------------------------------


def duplicated_batch(batch_id: str) -> list[tuple[int, list[Any]]]:
    """Six inputs in four calls: image X at positions 1 (success), 3 (failed) and 5
    (success, other text), a line that is not JSON at 4."""
    x = f"/{batch_id}/x.jpg"
    return [
        (0, [result(f"/{batch_id}/a.jpg")]),
        (1, [result(x, text="first"), result(f"/{batch_id}/b.jpg")]),
        (3, [result(x, "failed"), b"not json"]),
        (5, [result(x, text="last")]),
    ]


def test_every_arrival_order_of_a_batch_with_duplicates_ends_in_the_same_rows_and_counts(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    outcomes: dict[tuple[int, ...], dict[str, Any]] = {}
    for n, order in enumerate(itertools.permutations(range(4))):
        batch_id = f"order{n}"
        register_batch(conn, batch_id, 6)
        calls = duplicated_batch(batch_id)
        for k in order:
            offset, inputs = calls[k]
            save_batch(conn, batch_id, inputs, position_offset=offset)
        assert_totals_match_recount(db, batch_id)
        outcomes[order] = rows_of(db, batch_id)

    first = outcomes[(0, 1, 2, 3)]
    assert first["batch"] == [(6, 3, 3, "SUCCESS", 6)]
    assert [(r[0], r[4], r[6]) for r in first["images"]] == [
        (0, "/B/a.jpg", "success"),
        (1, "/B/x.jpg", "success"),
        (2, "/B/b.jpg", "success"),
    ]
    assert [(r[0], r[1], r[2]) for r in first["rejects"] if r[1]] == [
        (3, "/B/x.jpg", "duplicate image_path (first at position 1)"),
        (5, "/B/x.jpg", "duplicate image_path (first at position 1)"),
    ]
    assert [r[0] for r in first["rejects"]] == [3, 4, 5]
    different = {order: rows for order, rows in outcomes.items() if rows != first}
    assert not different, f"{len(different)} of 24 orders differ, e.g. {next(iter(different.items()))}"


def test_a_lower_position_arriving_later_takes_the_image_and_leaves_a_readable_duplicate(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    register_batch(conn, "late", 4)
    save_batch(conn, "late", [result("/late/x.jpg", "failed")], position_offset=3)

    report = save_batch(conn, "late", [result("/late/x.jpg", text="lowest")], position_offset=1)

    assert (report.stored, report.rejected) == (1, 0)
    assert db.execute(
        "SELECT c.position, o.status::text FROM chain_executions c JOIN ocr_executions o USING (chain_id)"
    ).fetchall() == [(1, "success")]
    ((position, reason, raw),) = db.execute("SELECT position, reason, raw FROM load_rejects").fetchall()
    assert (position, reason) == (3, "duplicate image_path (first at position 1)")
    # Its raw is the result it held, re-encoded: the original bytes were never kept.
    stored = json.loads(bytes(raw))
    assert (stored["image_path"], stored["status"], stored["text_boxes"]) == ("/late/x.jpg", "failed", [])
    assert stored_totals(db, "late") == (4, 1, 1, "STARTED")
    assert_totals_match_recount(db, "late")
    # The displaced input sent again is recognised: unchanged.
    again = save_batch(conn, "late", [result("/late/x.jpg", "failed")], position_offset=3)
    assert again.unchanged == 1 and stored_totals(db, "late") == (4, 1, 1, "STARTED")


# ---------------------------------------------------------------------------
# Item 5: a chain without its OCR row is a slot a valid input fills
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "replace", "repair"])
def test_a_chain_left_without_its_ocr_row_is_filled_by_the_valid_input_at_its_position(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], mode: str
) -> None:
    images = make_batch(3, prefix=f"slot-{mode}", boxes=2)
    save_batch(conn, "slot", images)
    # The application deletes an OCR row but not its chain.
    db.execute("DELETE FROM ocr_executions WHERE image_path = %s", [images[1]["image_path"]])
    # ... and an in-flight chain (STARTED, no OCR row) holds position 3 of a larger batch.
    db.execute("UPDATE batch_executions SET total_images = 4 WHERE batch_id = 'slot'")
    db.execute(
        "INSERT INTO chain_executions (chain_id, batch_id, status, position)"
        " VALUES ('in-flight', 'slot', 'STARTED', 3)"
    )
    late = make_batch(4, prefix=f"slot-{mode}", boxes=2, seed=1)[3]

    report = save_batch(
        conn,
        "slot",
        [images[1], images[2], late],
        position_offset=1,
        **{mode: True} if mode != "plain" else {},
    )

    assert (report.rejected, report.refused) == (0, 0), report.issues
    stored = db.execute(
        "SELECT c.position, c.chain_id = 'in-flight', o.image_path, c.status::text FROM chain_executions c"
        " JOIN ocr_executions o USING (chain_id) ORDER BY c.position"
    ).fetchall()
    paths = [im["image_path"] for im in images] + [late["image_path"]]
    assert [(pos, path) for pos, _, path, _ in stored] == list(enumerate(paths))
    assert stored[3][1:] == (True, paths[3], "SUCCESS")  # the in-flight chain keeps its id
    assert db.execute("SELECT count(*) FROM load_rejects").fetchone() == (0,)
    assert stored_totals(db, "slot") == (4, 4, 0, "SUCCESS")
    assert_totals_match_recount(db, "slot")


# ---------------------------------------------------------------------------
# Items 9 and 10: positions live inside the declared total
# ---------------------------------------------------------------------------


def test_an_input_past_the_declared_total_is_refused_with_the_whole_call(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    images = make_batch(10, prefix="inside", boxes=1)
    register_batch(conn, "inside", 10)
    save_batch(conn, "inside", images[:5], position_offset=0)

    with pytest.raises(PositionBeyondTotalError, match=r"positions are 0 to 9.*position 104") as refused:
        save_batch(conn, "inside", images[5:], position_offset=100)

    assert (refused.value.position, refused.value.total) == (104, 10)
    assert stored_totals(db, "inside") == (10, 5, 0, "STARTED")
    assert db.execute("SELECT count(*) FROM ocr_executions").fetchone() == (5,)


def test_only_a_registered_batch_or_a_call_stating_its_total_creates_a_batch(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    images = make_batch(4, prefix="create", boxes=1)

    with pytest.raises(BatchNotFoundError, match=r"register the batch first.*or pass total_images"):
        save_batch(conn, "chunked", images[2:], position_offset=2)
    assert db.execute("SELECT count(*) FROM batch_executions").fetchone() == (0,)

    save_batch(conn, "chunked", images[2:], position_offset=2, total_images=4)
    save_batch(conn, "whole", make_batch(3, prefix="whole", boxes=1))  # the whole batch: its inputs
    assert stored_totals(db, "chunked") == (4, 2, 0, "STARTED")
    assert stored_totals(db, "whole") == (3, 3, 0, "SUCCESS")


def test_a_load_whose_batch_is_deleted_meanwhile_stops_with_one_line_and_never_recreates_it(
    dsn: str, db: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "big.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in make_batch(12, prefix="gone", boxes=1)))
    import loader.cli.load as load_module

    real = load_module.save_judged
    calls: list[int] = []

    def save_then_delete(*args: Any, **kwargs: Any) -> Any:
        report = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # an operator deletes the batch between two chunks
            with psycopg.connect(dsn, autocommit=True) as operator:
                delete_batch(operator, "gone")
        return report

    monkeypatch.setattr(load_module, "save_judged", save_then_delete)

    result = CliRunner().invoke(cli, ["load", str(source), "-b", "gone", "--chunk-size", "4", "--dsn", dsn])

    assert result.exit_code == 1
    # Progress lines, then one line saying why the load stopped.
    last = result.stderr.strip().splitlines()[-1]
    assert "batch 'gone' was deleted while loading; 8 lines committed before went with it" in last
    assert "Traceback" not in result.stderr and result.stderr.count("deleted") == 1
    assert db.execute("SELECT count(*) FROM batch_executions").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM ocr_executions").fetchone() == (0,)


# ---------------------------------------------------------------------------
# Item 8: rejects a version-3 loader stored count once after the upgrade
# ---------------------------------------------------------------------------


def test_a_chunk_redelivered_after_an_upgrade_from_version_3_does_not_count_its_rejects_twice(
    new_database: Callable[[], str],
) -> None:
    old = new_database()
    with psycopg.connect(old, autocommit=True) as conn:
        conn.execute(SCHEMA_V1.read_bytes())
    upgrade(old, target=3)
    images = make_batch(6, prefix="v3", boxes=1)
    chunk = [json.dumps(images[3]), "not json", json.dumps(images[5])]
    with psycopg.connect(old) as conn:
        # What version 3 left of a Celery chunk at offset 3: its images (no positions
        # then), and its reject at position 1, counted from the chunk's first input.
        conn.execute(
            "INSERT INTO batch_executions (batch_id, total_images, completed_images, failed_images, status)"
            " VALUES ('v3', 6, 2, 1, 'STARTED')"
        )
        for n in (3, 5):
            conn.execute(
                "INSERT INTO chain_executions (chain_id, batch_id, status) VALUES (%s, 'v3', 'SUCCESS')",
                [f"chain-{n}"],
            )
            conn.execute(
                "INSERT INTO ocr_executions (chain_id, image_path, status) VALUES (%s, %s, 'success')",
                [f"chain-{n}", images[n]["image_path"]],
            )
        conn.execute(
            "INSERT INTO load_rejects (batch_id, position, reason, raw, raw_sha256)"
            " VALUES ('v3', 1, 'not valid JSON', 'not json', sha256('not json'))"
        )
    upgrade(old)

    with psycopg.connect(old, autocommit=True) as conn:
        report = save_batch(conn, "v3", chunk, position_offset=3)
        assert report.rejected == 1
        assert stored_totals(conn, "v3") == (6, 2, 1, "STARTED")
        assert_totals_match_recount(conn, "v3")
        assert conn.execute("SELECT position FROM load_rejects WHERE resolved_at IS NULL").fetchall() == [
            (4,)
        ]
        # The rest of the batch arrives: six of six, one failed, not seven.
        save_batch(conn, "v3", [json.dumps(im) for im in images[:3]], position_offset=0)
        assert stored_totals(conn, "v3") == (6, 5, 1, "SUCCESS")
        assert_totals_match_recount(conn, "v3")


# ---------------------------------------------------------------------------
# Item 13: a re-OCR never takes another batch's image; a bad line is refused alone
# ---------------------------------------------------------------------------


def test_a_reocr_of_another_batchs_image_is_refused_not_counted(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    save_batch(conn, "owner", [result("/owner/x.jpg")])
    register_batch(conn, "reocr", 2)
    save_batch(conn, "reocr", [result("/reocr/y.jpg")], position_offset=0)

    report = save_batch(
        conn,
        "reocr",
        [result("/reocr/y.jpg", text="again"), result("/owner/x.jpg")],
        position_offset=0,
        replace=True,
    )

    assert (report.replaced, report.refused, report.rejected) == (1, 1, 0)
    (issue,) = [i for i in report.issues if i.outcome == "refused"]
    assert issue.position == 1 and "already stored by another batch ('owner')" in issue.reason
    assert stored_totals(db, "reocr") == (2, 1, 0, "STARTED")
    assert db.execute("SELECT count(*) FROM load_rejects").fetchone() == (0,)
    assert stored_totals(db, "owner") == (1, 1, 0, "SUCCESS")


def test_a_reocr_with_one_cut_short_line_refuses_that_line_only(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    save_batch(conn, "cut", [result("/cut/a.jpg"), result("/cut/b.jpg")])

    report = save_batch(
        conn, "cut", [json.dumps(result("/cut/a.jpg", "failed")), b'{"image_path": "/cut/b.jp'], replace=True
    )

    assert (report.replaced, report.refused, report.rejected) == (1, 1, 0)
    assert db.execute(
        "SELECT image_path, status::text FROM ocr_executions ORDER BY image_path"
    ).fetchall() == [
        ("/cut/a.jpg", "failed"),
        ("/cut/b.jpg", "success"),
    ]
    assert stored_totals(db, "cut") == (2, 1, 1, "SUCCESS")
    assert_totals_match_recount(db, "cut")


def test_an_adopted_batch_with_crashed_chains_reads_them_missing_and_the_load_fills_them(
    old_app: Callable[..., Any],
) -> None:
    from helpers.oldapp import OldImage, ProcessStatus, Shape

    app = old_app(Shape())
    images = [OldImage(f"s3://old/crash/{i}.jpg", "success", None, []) for i in range(4)]
    app.new_batch("crash", 4)
    app.save_image("crash", images[0])
    app.crashed_chain("crash", ProcessStatus.STARTED)  # still in flight: position 1
    app.crashed_chain("crash", ProcessStatus.PENDING)  # queued, never run: position 2
    app.save_image("crash", images[3])
    app.close()
    adopt(app.dsn)

    with psycopg.connect(app.dsn, autocommit=True) as conn:
        # Two images never arrived: not SUCCESS, whatever the chains say.
        assert stored_totals(conn, "crash") == (4, 2, 0, "STARTED")
        report = save_batch(conn, "crash", [result(im.image_path) for im in images])

        assert (report.unchanged, report.stored, report.rejected) == (2, 2, 0), report.issues
        assert stored_totals(conn, "crash") == (4, 4, 0, "SUCCESS")
        assert_totals_match_recount(conn, "crash")
        assert conn.execute(
            "SELECT count(*) FROM chain_executions c JOIN ocr_executions o USING (chain_id)"
        ).fetchone() == (4,)
