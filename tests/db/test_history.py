"""Result history: a re-OCR, a repair or a rollback keeps the result it replaces (in the
merge's own statement); loader.lifecycle.history reads it, compares two model versions in SQL,
rolls back as a counted replace, and prunes; deleting a batch takes its history along."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from helpers.checks import LoginRole, assert_totals_match_recount, snapshot, stored_totals
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from loader import DatabaseError, delete_batch, save_batch
from loader.cli import cli
from loader.datagen import make_batch
from loader.lifecycle.history import (
    batch_versions,
    compare,
    image_history,
    prune_history,
    rollback,
    rollback_plan,
)
from loader.orm import OCRExecution, OCRResultVersion, engine_url
from loader.progress.read import CHANNEL

# Seconds to wait for a progress event that should arrive.
WAIT_S = 1.0


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def with_model(results: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    out = copy.deepcopy(results)
    for r in out:
        r["model_version"] = model
    return out


def rerun(results: list[dict[str, Any]], model: str, seed: int) -> list[dict[str, Any]]:
    """What another model says about the same images: some fail, some recover, texts,
    boxes and confidences move, and some results stay exactly as they were."""
    rng = random.Random(seed)
    out = with_model(results, model)
    for r in out:
        roll = rng.random()
        if roll < 0.15:
            r.update(status="failed", error=f"{model}: engine timeout", text_boxes=[])
        elif r["status"] == "failed":
            r.update(
                status="success",
                error=None,
                text_boxes=[{"text": "back", "confidence": 0.5, "bbox": [[0, 0]]}],
            )
        elif roll < 0.3:
            r["text_boxes"][0]["text"] += " (reread)"
        elif roll < 0.45:
            r["text_boxes"].append({"text": "extra", "confidence": 0.61, "bbox": [[1, 2], [3, 4]]})
        elif roll < 0.6:
            r["text_boxes"].pop()
        elif roll < 0.75:
            r["text_boxes"][-1]["confidence"] = round(r["text_boxes"][-1]["confidence"] / 2, 4)
    return out


def boxes_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [] if result["status"] == "failed" else result["text_boxes"]


def expected_comparison(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparison worked out in Python, image by image, from what each model said."""
    pairs = list(zip(old, new, strict=True))

    def texts(r: dict[str, Any]) -> list[str]:
        return [b["text"] for b in boxes_of(r)]

    def conf(rs: list[dict[str, Any]]) -> float | None:
        boxes = [b["confidence"] for r in rs for b in boxes_of(r)]
        return sum(boxes) / len(boxes) if boxes else None

    return {
        "compared": len(pairs),
        "unchanged": sum(
            (a["status"], a.get("error"), boxes_of(a)) == (b["status"], b.get("error"), boxes_of(b))
            for a, b in pairs
        ),
        "success_to_failed": sum(a["status"] == "success" and b["status"] == "failed" for a, b in pairs),
        "failed_to_success": sum(a["status"] == "failed" and b["status"] == "success" for a, b in pairs),
        "text_changed": sum(
            a["status"] == b["status"] == "success" and texts(a) != texts(b) for a, b in pairs
        ),
        "boxes_added": sum(max(len(boxes_of(b)) - len(boxes_of(a)), 0) for a, b in pairs),
        "boxes_removed": sum(max(len(boxes_of(a)) - len(boxes_of(b)), 0) for a, b in pairs),
        "from_mean_confidence": pytest.approx(conf(old)),
        "to_mean_confidence": pytest.approx(conf(new)),
    }


def counts_of(c: Any) -> dict[str, Any]:
    return {k: getattr(c, k) for k in expected_comparison([], [])}


def changed_boxes(a: dict[str, Any], b: dict[str, Any]) -> int:
    ta, tb = [x["text"] for x in boxes_of(a)], [x["text"] for x in boxes_of(b)]
    return sum(
        (ta[i] if i < len(ta) else None) != (tb[i] if i < len(tb) else None)
        for i in range(max(len(ta), len(tb)))
    )


def history_rows(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    cur = db.execute("SELECT * FROM ocr_result_history ORDER BY ocr_execution_id, version")
    names = [c.name for c in cur.description or ()]
    rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    for row in rows:  # the three arrays, as the boxes they hold
        boxes = zip(row.pop("texts"), row.pop("confidences"), row.pop("bboxes"), strict=True)
        row["boxes"] = [{"text": t, "confidence": c, "bbox": b} for t, c, b in boxes]
    return rows


# --------------------------------------------------------------------------- keeping


def test_a_re_ocr_keeps_every_result_it_replaces_with_its_boxes_in_order(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    first = with_model(make_batch(20, prefix="keep"), "ocr-v1")
    first[3].update(status="failed", error="engine crashed", text_boxes=[])
    save_batch(conn, "keep", first)
    second = rerun(first, "ocr-v2", seed=1)

    report = save_batch(conn, "keep", second, replace=True)

    assert report.replaced == 20
    kept = history_rows(db)
    assert len(kept) == 20
    ledger = {d for (d,) in db.execute("SELECT digest FROM loader_calls WHERE batch_id = 'keep'")}
    for old, row in zip(first, kept, strict=True):
        assert (row["version"], row["model_version"], row["status"], row["error"], row["public_path"]) == (
            1,
            "ocr-v1",
            old["status"],
            old["error"],
            old["public_path"],
        )
        assert row["boxes"] == boxes_of(old)
        assert (row["batch_id"], row["replaced_in"]) == ("keep", "replace")
        assert row["replaced_by"] in ledger and row["stored_at"] < row["replaced_at"]
    # The current result is version 2; API reads both, newest first.
    versions = image_history(conn, first[0]["image_path"])
    assert [(v.version, v.current, v.model_version) for v in versions] == [
        (2, True, "ocr-v2"),
        (1, False, "ocr-v1"),
    ]
    assert versions[0].boxes == boxes_of(second[0]) and versions[1].boxes == boxes_of(first[0])
    assert_totals_match_recount(db, "keep")


def test_plain_saves_and_replays_keep_nothing(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    data = make_batch(10, prefix="plain")
    save_batch(conn, "plain", data)
    save_batch(conn, "plain", data)  # a redelivery
    save_batch(conn, "plain", data[:5], repair=True)  # fixes nothing: refused
    assert history_rows(db) == []
    again = rerun(data, "m2", seed=2)
    save_batch(conn, "plain", again, replace=True)
    before = snapshot(db), history_rows(db)
    replay = save_batch(conn, "plain", again, replace=True)  # the same re-OCR call again: judged again
    assert replay.unchanged == 10 and (snapshot(db), history_rows(db)) == before
    once = "a re-OCR call replaces a result once: this very call was committed before"
    assert {issue.reason for issue in replay.issues} == {once}


def test_a_repaired_failure_keeps_the_failure(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    good = with_model(make_batch(3, prefix="rep"), "m1")
    bad = copy.deepcopy(good)
    bad[1].update(status="failed", error="GPU out of memory", text_boxes=[])
    save_batch(conn, "rep", bad)

    report = save_batch(conn, "rep", good, repair=True)

    assert report.replaced == 1
    (row,) = history_rows(db)
    assert (row["status"], row["error"], row["boxes"], row["replaced_in"]) == (
        "failed",
        "GPU out of memory",
        [],
        "repair",
    )
    assert [v.version for v in image_history(conn, good[1]["image_path"])] == [2, 1]


def test_a_re_ocr_counts_one_more_task_and_never_resets_the_applications_counters(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    data = make_batch(2, prefix="tasks")
    save_batch(conn, "tasks", data)
    # The application's own task bookkeeping on the chains: 1 2 1.
    db.execute("UPDATE chain_executions SET total_tasks = 1, completed_tasks = 2, failed_tasks = 1")
    again = copy.deepcopy(data)
    again[1].update(status="failed", error="worse model", text_boxes=[])

    save_batch(conn, "tasks", again, replace=True)

    rows = db.execute(
        "SELECT total_tasks, completed_tasks, failed_tasks, status::text"
        " FROM chain_executions ORDER BY position"
    ).fetchall()
    assert rows == [(2, 3, 1, "SUCCESS"), (2, 2, 2, "FAILURE")]


def test_an_input_stored_failed_for_invalid_data_keeps_its_model_version(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    data = with_model(make_batch(2, prefix="inv"), "ocr-v7")
    data[0]["text_boxes"][0]["confidence"] = 1.7
    data[1]["text_boxes"][0]["bbox"] = "not a polygon"
    report = save_batch(conn, "inv", data)
    assert report.failed == 2
    assert db.execute("SELECT model_version FROM ocr_executions ORDER BY id").fetchall() == [
        ("ocr-v7",),
        ("ocr-v7",),
    ]


# --------------------------------------------------------------------------- compare


def test_compare_counts_what_changed_between_two_model_versions(conn: psycopg.Connection[Any]) -> None:
    v1 = with_model(make_batch(300, prefix="cmp"), "ocr-v1")
    for r in v1[::23]:
        r.update(status="failed", error="timeout", text_boxes=[])
    v2 = rerun(v1, "ocr-v2", seed=3)
    save_batch(conn, "cmp", v1)
    save_batch(conn, "cmp", v2, replace=True)
    expected = expected_comparison(v1, v2)

    current_vs_previous = compare(conn, "cmp", top=5)
    by_name = compare(conn, "cmp", from_model="ocr-v1", to_model="ocr-v2", top=5)

    assert counts_of(current_vs_previous) == expected
    assert counts_of(by_name) == expected
    assert (by_name.from_models, by_name.to_models, by_name.batch_images) == (["ocr-v1"], ["ocr-v2"], 300)
    most = max(changed_boxes(a, b) for a, b in zip(v1, v2, strict=True))
    assert [i.changed_boxes for i in by_name.most_changed] == sorted(
        (changed_boxes(a, b) for a, b in zip(v1, v2, strict=True) if a != b), reverse=True
    )[:5]
    assert by_name.most_changed[0].changed_boxes == most


def test_compare_picks_each_sides_model_across_three_versions(conn: psycopg.Connection[Any]) -> None:
    v1 = with_model(make_batch(60, prefix="three"), "a")
    v2, v3 = rerun(v1, "b", seed=4), rerun(v1, "c", seed=5)
    save_batch(conn, "three", v1)
    save_batch(conn, "three", v2, replace=True)
    save_batch(conn, "three", v3, replace=True)

    assert counts_of(compare(conn, "three", from_model="a", to_model="b")) == expected_comparison(v1, v2)
    assert counts_of(compare(conn, "three", from_model="a")) == expected_comparison(v1, v3)
    assert counts_of(compare(conn, "three")) == expected_comparison(v2, v3)
    # Nothing of model "c" is older than the newest "b": no image has both sides.
    assert compare(conn, "three", from_model="c", to_model="b").compared == 0


# --------------------------------------------------------------------------- rollback


def test_rollback_restores_the_previous_results_as_a_counted_and_evented_replace(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], dsn: str
) -> None:
    v1 = with_model(make_batch(40, prefix="rb"), "good")
    v2 = rerun(v1, "worse", seed=6)
    save_batch(conn, "rb", v1)
    save_batch(conn, "rb", v2, replace=True)
    totals_v1 = (40, 40, 0, "SUCCESS")
    assert stored_totals(db, "rb") != totals_v1
    assert rollback_plan(conn, "rb") == {"good": 40}

    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        done = rollback(conn, "rb")
        events = [json.loads(n.payload) for n in listener.notifies(timeout=WAIT_S)]

    assert done.report is not None and done.report.replaced == 40 and done.restored == {"good": 40}
    assert stored_totals(db, "rb") == totals_v1
    assert events[-1] == {"batch_id": "rb", "completed": 40, "failed": 0, "total": 40, "status": "SUCCESS"}
    assert_totals_match_recount(db, "rb")
    for r in v1:
        now, worse, first = image_history(conn, r["image_path"])
        assert (now.version, now.model_version, now.status, now.boxes) == (3, "good", "success", boxes_of(r))
        assert (worse.version, worse.model_version, first.version) == (2, "worse", 1)
    # Append-only: the rollback's replaced results are kept too, and it can itself be rolled back.
    assert len(history_rows(db)) == 80
    again = rollback(conn, "rb")
    assert again.report is not None and again.report.replaced == 40 and not again.report.replayed
    assert counts_of(compare(conn, "rb")) == expected_comparison(v1, v2)


def test_rollback_to_a_named_model_version(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    v1 = with_model(make_batch(20, prefix="named"), "a")
    save_batch(conn, "named", v1)
    save_batch(conn, "named", rerun(v1, "b", seed=7), replace=True)
    save_batch(conn, "named", rerun(v1, "c", seed=8), replace=True)

    done = rollback(conn, "named", to_model="a")

    assert done.report is not None and done.report.replaced == 20
    current = db.execute("SELECT DISTINCT model_version, result_version FROM ocr_executions").fetchall()
    assert current == [("a", 4)]
    assert rollback(conn, "named", to_model="a") == (None, {})  # already there
    assert rollback(conn, "named", to_model="nope") == (None, {})


# --------------------------------------------------------------------------- retention and deletion


def test_retention_keeps_the_newest_k_or_drops_what_was_replaced_before_a_date(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    v1 = with_model(make_batch(5, prefix="ret"), "m1")
    save_batch(conn, "ret", v1)
    for n in range(2, 5):
        save_batch(conn, "ret", rerun(v1, f"m{n}", seed=n), replace=True)
    save_batch(conn, "other", with_model(make_batch(5, prefix="oth"), "m1"))
    save_batch(
        conn, "other", rerun(with_model(make_batch(5, prefix="oth"), "m1"), "m2", seed=9), replace=True
    )

    assert prune_history(conn, keep=2, batch_id="ret") == {"ret": 5}
    assert sorted({r["version"] for r in history_rows(db) if r["batch_id"] == "ret"}) == [2, 3]
    assert len([r for r in history_rows(db) if r["batch_id"] == "other"]) == 5

    # Version numbers go on where they were.
    save_batch(conn, "ret", rerun(v1, "m5", seed=10), replace=True)
    assert [v.version for v in image_history(conn, v1[0]["image_path"])] == [5, 4, 3, 2]

    db.execute("UPDATE ocr_result_history SET replaced_at = now() - interval '40 days' WHERE version <= 3")
    cutoff = datetime.now(UTC) - timedelta(days=30)
    deleted = prune_history(conn, replaced_before=cutoff)
    assert deleted == {"ret": 10, "other": 5}
    assert sorted({r["version"] for r in history_rows(db)}) == [4]


def test_the_workers_role_keeps_history_and_only_loader_admin_prunes_it(
    login_role: Callable[..., LoginRole], dsn: str, db: psycopg.Connection[Any]
) -> None:
    writer, admin = login_role("writer", in_role="loader_writer"), login_role("admin", in_role="loader_admin")
    data = with_model(make_batch(6, prefix="roles"), "m1")
    with psycopg.connect(writer.dsn(dsn)) as worker:
        save_batch(worker, "roles", data)
        assert save_batch(worker, "roles", rerun(data, "m2", seed=15), replace=True).replaced == 6
        with pytest.raises(DatabaseError, match="permission denied"):
            prune_history(worker, keep=0)
    assert len(history_rows(db)) == 6
    with psycopg.connect(admin.dsn(dsn)) as operator:
        assert prune_history(operator, keep=0) == {"roles": 6}
    assert history_rows(db) == []


def test_deleting_a_batch_removes_its_history_and_nothing_else(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    for batch in ("gone", "stays"):
        data = with_model(make_batch(8, prefix=batch), "m1")
        save_batch(conn, batch, data)
        save_batch(conn, batch, rerun(data, "m2", seed=11), replace=True)
    kept = [r for r in history_rows(db) if r["batch_id"] == "stays"]

    delete_batch(conn, "gone")

    assert history_rows(db) == kept
    # Its images load again from scratch: version 1, no history.
    save_batch(conn, "gone", with_model(make_batch(8, prefix="gone"), "m3"))
    assert [v.version for v in image_history(conn, "/data/gone/images/0000000.jpg")] == [1]


# --------------------------------------------------------------------------- CLI and ORM


def test_the_command_line_shows_history_compares_rolls_back_and_prunes(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], dsn: str
) -> None:
    v1 = with_model(make_batch(30, prefix="cli"), "ocr-v1")
    v2 = rerun(v1, "ocr-v2", seed=12)
    save_batch(conn, "cli", v1)
    save_batch(conn, "cli", v2, replace=True)
    path = v1[0]["image_path"]

    shown = run("history", path, "--dsn", dsn)
    assert shown.exit_code == 0 and "ocr-v1" in shown.output and "ocr-v2" in shown.output
    assert json.loads(run("history", path, "--json", "--dsn", dsn).output)["versions"][1][
        "boxes"
    ] == boxes_of(v1[0])
    by_model = json.loads(run("history", "--batch", "cli", "--json", "--dsn", dsn).output)["model_versions"]
    assert {(m["model_version"], m["current_images"], m["kept_results"]) for m in by_model} == {
        ("ocr-v2", 30, 0),
        ("ocr-v1", 0, 30),
    }

    table = run("compare", "cli", "--from", "ocr-v1", "--to", "ocr-v2", "--top", "3", "--dsn", dsn)
    assert table.exit_code == 0 and "success -> failed" in table.output
    assert max(len(line) for line in table.output.splitlines()) <= 80
    as_json = json.loads(run("compare", "cli", "--json", "--dsn", dsn).output)
    assert {k: as_json[k] for k in expected_comparison(v1, v2)} == expected_comparison(v1, v2)

    refused = CliRunner().invoke(cli, ["rollback", "cli", "--dsn", dsn], input="n\n")
    assert refused.exit_code == 1 and "nothing restored" in refused.output
    restored = run("rollback", "cli", "--yes", "--dsn", dsn)
    assert restored.exit_code == 0 and "restored 30 images" in restored.output
    assert stored_totals(db, "cli") == (30, 30, 0, "SUCCESS")

    pruned = run("history", "--keep", "1", "--batch", "cli", "--yes", "--dsn", dsn)
    assert pruned.exit_code == 0 and "30 kept results deleted" in pruned.output
    missing = CliRunner().invoke(cli, ["history", "/no/such.jpg", "--dsn", dsn])
    assert missing.exit_code == 1 and "no image" in missing.output


def test_history_reads_through_the_orm(conn: psycopg.Connection[Any], dsn: str) -> None:
    v1 = with_model(make_batch(3, prefix="orm"), "m1")
    save_batch(conn, "orm", v1)
    save_batch(conn, "orm", rerun(v1, "m2", seed=13), replace=True)
    save_batch(conn, "orm", rerun(v1, "m3", seed=14), replace=True)
    engine = create_engine(engine_url(dsn))
    try:
        with Session(engine) as session:
            image = session.scalars(
                select(OCRExecution).where(OCRExecution.image_path == v1[0]["image_path"])
            ).one()
            assert image.result_version == 3
            assert [(h.version, h.model_version) for h in image.history] == [(2, "m2"), (1, "m1")]
            assert image.history[-1].boxes == boxes_of(v1[0])
            kept = session.scalars(select(OCRResultVersion).where(OCRResultVersion.batch_id == "orm")).all()
            assert len(kept) == 6
    finally:
        engine.dispose()
    assert [v.model_version for v in batch_versions(conn, "orm")] == ["m3", "m2", "m1"]
