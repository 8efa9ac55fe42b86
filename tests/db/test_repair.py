"""Repairing a batch: rejects resolved by the images that replace them, totals that
always equal a recount and never exceed the total, and the export -> fix -> load
--repair flow of the command line."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from helpers.checks import assert_totals_match_recount, recount, snapshot, stored_totals

from loader import BatchConflictError, PositionConflictError, register_batch, save_batch
from loader.cli import cli
from loader.datagen import make_batch, make_result
from loader.errors import PositionBeyondTotalError
from loader.lifecycle.repair import count_rejects, list_rejects
from loader.progress.read import recount_batch

# Every test here runs on a fresh database and on an analyzed one holding earlier batches.
pytestmark = pytest.mark.production_statistics


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def lines(results: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(r).encode() for r in results]


def open_rejects(db: psycopg.Connection[Any], batch_id: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT position, image_path FROM load_rejects WHERE batch_id = %s AND resolved_at IS NULL"
        " ORDER BY position",
        [batch_id],
    ).fetchall()


def assert_accounted_within_total(db: psycopg.Connection[Any], batch_id: str) -> None:
    total, completed, failed, _ = stored_totals(db, batch_id)
    assert completed + failed <= total
    assert_totals_match_recount(db, batch_id)


# ---------------------------------------------------------------------------
# Resolution rules (library)
# ---------------------------------------------------------------------------


def test_a_fixed_line_put_back_at_its_position_resolves_the_reject_there(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    data = lines(make_batch(10, prefix="pos"))
    fixed = data[4]
    data[4] = fixed[:20]  # cut short: not JSON, no image_path to find it by
    first = save_batch(conn, "pos", data)
    assert (first.stored, first.rejected) == (9, 1)
    assert stored_totals(db, "pos") == (10, 9, 1, "SUCCESS")

    report = save_batch(conn, "pos", [fixed], position_offset=4, repair=True)

    assert (report.stored, report.resolved, report.rejected) == (1, 1, 0)
    assert stored_totals(db, "pos") == (10, 10, 0, "SUCCESS")
    resolved_at, _resolved_by, path = db.execute(
        "SELECT r.resolved_at, r.resolved_by, o.image_path FROM load_rejects r"
        " JOIN ocr_executions o ON o.id = r.resolved_by WHERE r.batch_id = 'pos'"
    ).fetchone()
    assert resolved_at is not None and path == json.loads(fixed)["image_path"]
    assert report.progress.percentage == 100.0
    assert_accounted_within_total(db, "pos")


def test_without_repair_another_input_at_a_rejects_position_is_refused_whole(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    # Calls numbered from 0 each: the second claims positions the first filled.
    register_batch(conn, "calls", 4)
    save_batch(conn, "calls", [b"not json", json.dumps(make_result(1, random.Random(1))).encode()])
    before = snapshot(db)

    with pytest.raises(PositionConflictError, match="position 0 holds a rejected input"):
        save_batch(conn, "calls", lines(make_batch(2, prefix="calls-b")))

    assert snapshot(db) == before
    report = save_batch(conn, "calls", lines(make_batch(2, prefix="calls-b")), position_offset=2)
    assert (report.stored, report.resolved) == (2, 0)
    assert open_rejects(db, "calls") == [(0, None)]
    assert stored_totals(db, "calls") == (4, 3, 1, "SUCCESS")
    assert_accounted_within_total(db, "calls")


def test_a_reject_is_resolved_only_by_a_repair_at_its_position(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    save_batch(conn, "other", [{"image_path": "/o/1.jpg", "public_path": "/pub/shared.jpg"}])
    register_batch(conn, "mine", 2)
    first = save_batch(
        conn,
        "mine",
        [{"image_path": "/m/1.jpg", "public_path": "/pub/shared.jpg"}, {"image_path": "/m/2.jpg"}],
    )
    assert (first.stored, first.rejected) == (1, 1)
    assert open_rejects(db, "mine") == [(0, "/m/1.jpg")]

    # Sent again with its own public_path, as the fix of position 0.
    report = save_batch(conn, "mine", [{"image_path": "/m/1.jpg", "public_path": "/pub/m1.jpg"}], repair=True)

    assert (report.stored, report.resolved) == (1, 1)
    assert open_rejects(db, "mine") == []
    assert stored_totals(db, "mine") == (2, 2, 0, "SUCCESS")
    assert_accounted_within_total(db, "mine")


def test_a_duplicate_stays_open_when_a_repair_fixes_its_first_occurrence(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    one = {"image_path": "/d/1.jpg", "status": "failed", "error": "engine crashed"}
    report = save_batch(conn, "dup", [one, one])
    assert (report.failed, report.rejected) == (1, 1)

    # The failure fixed by its image: replaced in place, no input added or resolved.
    again = save_batch(conn, "dup", [{"image_path": "/d/1.jpg"}], position_offset=0, repair=True)

    assert (again.stored, again.replaced, again.resolved) == (0, 1, 0)
    assert open_rejects(db, "dup") == [(1, "/d/1.jpg")]
    assert stored_totals(db, "dup") == (2, 1, 1, "SUCCESS")
    assert_accounted_within_total(db, "dup")


def test_a_duplicate_of_an_image_an_earlier_call_stored_is_rejected_and_counted(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    save_batch(conn, "later", [{"image_path": "/l/1.jpg"}], total_images=2)

    report = save_batch(conn, "later", [{"image_path": "/l/1.jpg"}, {"image_path": "/l/1.jpg"}])

    assert (report.unchanged, report.rejected) == (1, 1)
    assert report.issues[-1].reason == "duplicate image_path (first at position 0)"
    assert open_rejects(db, "later") == [(1, "/l/1.jpg")]
    assert stored_totals(db, "later") == (2, 1, 1, "SUCCESS")
    assert_accounted_within_total(db, "later")


def test_replaying_a_repair_or_the_original_after_it_changes_nothing(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    data = lines(make_batch(6, prefix="replay"))
    original = [*data[:2], b'{"image_path": "/replay/cut', *data[3:]]
    save_batch(conn, "replay", original)
    save_batch(conn, "replay", [data[2]], position_offset=2, repair=True)
    before = snapshot(db)

    repair_again = save_batch(conn, "replay", [data[2]], position_offset=2, repair=True)
    original_again = save_batch(conn, "replay", original)

    assert (repair_again.unchanged, repair_again.resolved) == (1, 0)
    assert (original_again.unchanged, original_again.stored, original_again.rejected) == (6, 0, 0)
    assert snapshot(db) == before
    assert stored_totals(db, "replay") == (6, 6, 0, "SUCCESS")


def test_more_inputs_than_declared_are_refused_and_later_calls_are_held_to_the_declared_total(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    register_batch(conn, "over", 3)
    # Positions live inside the declared total (issue 20, item 9): the whole call is refused.
    with pytest.raises(PositionBeyondTotalError, match="positions are 0 to 2"):
        save_batch(conn, "over", make_batch(5, prefix="over"), total_images=3)
    assert stored_totals(db, "over") == (3, 0, 0, "PENDING")

    report = save_batch(conn, "over", make_batch(3, prefix="over"), total_images=3)
    assert report.progress.total_images == 3 and report.progress.percentage == 100.0
    again = save_batch(conn, "over", make_batch(3, prefix="over"), total_images=3)
    assert again.unchanged == 3
    with pytest.raises(BatchConflictError, match="declared with total_images=3"):
        save_batch(conn, "over", make_batch(3, prefix="over"), total_images=5)
    assert_accounted_within_total(db, "over")


def test_recount_converges_totals_other_writers_left_and_changes_nothing_on_a_kept_batch(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    save_batch(conn, "kept", [*make_batch(4, prefix="kept"), b"junk"])
    before = snapshot(db)
    assert recount_batch(conn, "kept").completed_images == 4
    assert snapshot(db) == before

    # The application's old path: rows written, totals never updated.
    db.execute("UPDATE batch_executions SET completed_images = 0, failed_images = 0, status = 'PENDING'")
    progress = recount_batch(conn, "kept")

    assert (progress.completed_images, progress.failed_images, progress.status) == (4, 1, "SUCCESS")
    assert_totals_match_recount(db, "kept")
    # And the merge continues from there.
    save_batch(conn, "kept", make_batch(1, prefix="kept-more"), position_offset=4, repair=True)
    assert_totals_match_recount(db, "kept")


def test_rejects_are_listed_open_and_resolved(conn: psycopg.Connection[Any]) -> None:
    data = lines(make_batch(3, prefix="list"))
    save_batch(conn, "list", [b"junk-0", data[1], b"junk-2"])
    save_batch(conn, "list", [data[0]], repair=True)

    rows = list_rejects(conn, "list")
    assert [(r.position, r.is_open) for r in rows] == [(0, False), (2, True)]
    assert rows[0].resolved_image_path == json.loads(data[0])["image_path"] and rows[0].resolved_by
    assert [r.position for r in list_rejects(conn, "list", open_only=True)] == [2]
    assert count_rejects(conn, "list") == count_rejects(conn, "list").__class__(open=1, resolved=1)


# ---------------------------------------------------------------------------
# The command line: export -> fix -> load --repair
# ---------------------------------------------------------------------------


def test_sparse_export_fixed_in_place_and_loaded_with_repair_completes_the_batch(
    dsn: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    good = lines(make_batch(50, prefix="cli"))
    broken = list(good)
    broken[10] = good[10][:15]  # not JSON
    broken[30] = json.dumps({"text_boxes": []}).encode()  # no image_path
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(broken) + b"\n")
    assert run("load", str(source), "-b", "C", "--dsn", dsn).exit_code == 0
    assert stored_totals(db, "C") == (50, 48, 2, "SUCCESS")

    export = tmp_path / "fixme.jsonl"
    result = run("rejects", "C", "--export", str(export), "--dsn", dsn)
    assert result.exit_code == 0 and "--repair" in result.stderr
    exported = export.read_bytes().split(b"\n")[:-1]
    assert len(exported) == 31 and exported[10] == broken[10] and exported[30] == broken[30]
    assert all(line == b"" for n, line in enumerate(exported) if n not in (10, 30))
    exported[10], exported[30] = good[10], good[30]
    export.write_bytes(b"\n".join(exported) + b"\n")

    loaded = run("load", str(export), "-b", "C", "--repair", "--dsn", dsn)

    assert loaded.exit_code == 0, loaded.stderr
    assert "stored 2 · failed 0 · rejected 0" in loaded.stdout and "resolved 2 rejects" in loaded.stdout
    assert "50 of 50 images accounted for" in loaded.stdout
    assert stored_totals(db, "C") == (50, 50, 0, "SUCCESS")
    listing = run("rejects", "C", "--dsn", dsn).stdout
    assert "(0 open, 2 resolved)" in listing and listing.count("resolved 20") == 2
    assert_accounted_within_total(db, "C")
    # The repair loaded again changes nothing.
    before = snapshot(db)
    assert "unchanged 2" in run("load", str(export), "-b", "C", "--repair", "--dsn", dsn).stdout
    assert snapshot(db) == before


def test_blank_lines_are_no_input_but_keep_their_numbers(
    dsn: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    source = tmp_path / "gaps.jsonl"
    source.write_bytes(b"\n  \n" + b"not json\n\n" + lines(make_batch(1, prefix="gap"))[0] + b"\n\r\n")

    result = run("load", str(source), "-b", "G", "--dsn", dsn)

    assert result.exit_code == 0, result.stderr
    assert "stored 1 · failed 0 · rejected 1" in result.stdout
    assert db.execute("SELECT position FROM load_rejects WHERE batch_id = 'G'").fetchall() == [(2,)]
    # Positions live inside the total, so a new batch spans its input's lines up to
    # the last non-blank one; the blank positions inside it have received nothing.
    assert stored_totals(db, "G") == (5, 1, 1, "STARTED")


def test_repair_needs_an_existing_batch(dsn: str, tmp_path: Path) -> None:
    source = tmp_path / "x.jsonl"
    source.write_bytes(lines(make_batch(1, prefix="x"))[0] + b"\n")

    result = CliRunner().invoke(cli, ["load", str(source), "-b", "nope", "--repair", "--dsn", dsn])

    assert result.exit_code == 1 and "no batch 'nope'" in result.stderr


def test_status_recount_repairs_totals_written_by_another_writer(
    dsn: str, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    save_batch(conn, "R", make_batch(3, prefix="R"))
    db.execute("UPDATE batch_executions SET completed_images = 0, status = 'STARTED' WHERE batch_id = 'R'")

    result = run("status", "R", "--recount", "--dsn", dsn)

    assert result.exit_code == 0 and "3 of 3 images accounted for" in result.stdout
    assert stored_totals(db, "R") == (3, 3, 0, "SUCCESS")


# ---------------------------------------------------------------------------
# The whole flow at scale
# ---------------------------------------------------------------------------

BIG = 200_000


@pytest.mark.slow
def test_a_200000_line_batch_with_1_percent_bad_lines_is_repaired_to_200000_of_200000(
    dsn: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    rng = random.Random(9)
    good = [
        json.dumps(make_result(i, rng, boxes=1, prefix="big"), separators=(",", ":")).encode()
        for i in range(BIG)
    ]
    bad = sorted(rng.sample(range(BIG), BIG // 100))
    broken = list(good)
    for n, index in enumerate(bad):
        kind = n % 3
        if kind == 0:  # cut short: not JSON
            broken[index] = good[index][: len(good[index]) // 2]
        elif kind == 1:  # no image_path
            data = json.loads(good[index])
            del data["image_path"]
            broken[index] = json.dumps(data).encode()
        else:  # invalid values: stored as failed, not rejected
            data = json.loads(good[index])
            data["text_boxes"][0]["confidence"] = 7.5
            broken[index] = json.dumps(data).encode()
    source = tmp_path / "big.jsonl"
    source.write_bytes(b"\n".join(broken) + b"\n")
    rejected = [index for n, index in enumerate(bad) if n % 3 != 2]
    stored_failed = len(bad) - len(rejected)

    first = run("load", str(source), "-b", "BIG", "--dsn", dsn)
    assert first.exit_code == 0, first.stderr
    assert stored_totals(db, "BIG") == (BIG, BIG - len(bad), len(bad), "SUCCESS")

    export = tmp_path / "fixme.jsonl"
    assert run("rejects", "BIG", "--export", str(export), "--dsn", dsn).exit_code == 0
    exported = export.read_bytes().split(b"\n")[:-1]
    assert [n for n, line in enumerate(exported) if line] == rejected
    for index in rejected:  # the fix: the line as it should have been
        exported[index] = good[index]
    export.write_bytes(b"\n".join(exported) + b"\n")
    repair = run("load", str(export), "-b", "BIG", "--repair", "--dsn", dsn)

    assert repair.exit_code == 0, repair.stderr
    assert f"{BIG:,} of {BIG:,} images accounted for" in repair.stdout
    total, completed, failed, status = stored_totals(db, "BIG")
    assert (total, completed + failed, status) == (BIG, BIG, "SUCCESS")
    assert (completed, failed) == (BIG - stored_failed, stored_failed) == recount(db, "BIG")
    kept = db.execute(
        "SELECT count(*), count(resolved_by) FROM load_rejects"
        " WHERE batch_id = 'BIG' AND resolved_at IS NOT NULL"
    ).fetchone()
    assert kept == (len(rejected), len(rejected))


def test_a_repair_line_still_bad_takes_the_place_of_the_reject_it_was_meant_to_fix(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    data = lines(make_batch(4, prefix="again"))
    save_batch(conn, "again", [data[0], b"{broken", data[2], data[3]])

    report = save_batch(conn, "again", [b"{still broken"], position_offset=1, repair=True)

    assert (report.rejected, report.resolved) == (1, 0)
    assert open_rejects(db, "again") == [(1, None)]
    assert db.execute("SELECT count(*) FROM load_rejects WHERE batch_id = 'again'").fetchone() == (2,)
    assert stored_totals(db, "again") == (4, 3, 1, "SUCCESS")
    assert_accounted_within_total(db, "again")
    # Fixed for good this time.
    assert save_batch(conn, "again", [data[1]], position_offset=1, repair=True).resolved == 1
    assert stored_totals(db, "again") == (4, 4, 0, "SUCCESS")
    assert_accounted_within_total(db, "again")


def test_the_safety_net_resolves_by_position_too_and_keeps_totals_exact(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    data = make_batch(6, prefix="net")
    original: list[Any] = [json.dumps(d).encode() for d in data]
    original[1], original[4] = b"{cut", b"{cut too"
    save_batch(conn, "net", original)
    # A rule validation does not know: the database refuses this text.
    db.execute("ALTER TABLE ocr_text_boxes ADD CONSTRAINT no_forbidden CHECK (text <> 'forbidden')")
    data[4]["text_boxes"][0]["text"] = "forbidden"

    report = save_batch(conn, "net", [data[1], {}, {}, data[4]], position_offset=1, repair=True)

    assert report.attempts == 2  # the net isolated the refused input
    assert (report.stored, report.failed, report.resolved, report.refused) == (1, 1, 2, 2)
    assert open_rejects(db, "net") == []  # the two {} of this call fix nothing: refused, not added
    assert_accounted_within_total(db, "net")


def test_a_batch_row_written_by_the_application_is_counted_from_its_first_call(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    # What BatchExecution(batch_id=..., total_images=...) inserts through the ORM.
    db.execute("INSERT INTO batch_executions (batch_id, total_images) VALUES ('app', 5)")

    save_batch(conn, "app", make_batch(3, prefix="app"))
    save_batch(conn, "app", [b"junk", {"image_path": "/app/f.jpg", "status": "failed"}], position_offset=3)

    assert stored_totals(db, "app") == (5, 3, 2, "SUCCESS")
    assert_accounted_within_total(db, "app")


MILLION = 1_000_000


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("LOADER_TEST_MILLION"),
    reason="a million images take minutes: set LOADER_TEST_MILLION=1 (issue 11's scale check)",
)
def test_totals_kept_from_each_calls_changes_equal_a_recount_at_a_million_images(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    rng = random.Random(11)
    chunk = 10_000
    register_batch(conn, "M", MILLION)
    for start in range(0, MILLION, chunk):
        part: list[Any] = [make_result(start + i, rng, boxes=0, prefix="M") for i in range(chunk)]
        for i in rng.sample(range(chunk), 20):
            part[i] = rng.choice([b"junk", {"image_path": part[i]["image_path"], "status": "failed"}])
        save_batch(conn, "M", part, position_offset=start)
        if start % 250_000 == 0:
            save_batch(conn, "M", part, position_offset=start)  # a replay
            assert_totals_match_recount(db, "M")
    total, completed, failed, status = stored_totals(db, "M")
    assert (total, completed + failed, status) == (MILLION, MILLION, "SUCCESS")
    assert_totals_match_recount(db, "M")
