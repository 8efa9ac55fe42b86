"""The chunk engine (loader.save.chunks) under `loader load` and Celery batch files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.checks import assert_totals_match_recount, row_counts, stored_totals
from psycopg_pool import ConnectionPool

from loader import LoadReport, Settings, register_batch, save_batch
from loader.celery.payload import load_file
from loader.save.chunks import Chunk, Totals, load_chunks
from loader.save.jsonl import Sources
from loader.save.pipeline import Judged, judge, save_judged

# Every test here runs on a fresh database and on an analyzed one holding earlier batches.
pytestmark = pytest.mark.production_statistics


def write(path: Path, n: int, *, status: str = "success", broken: frozenset[int] = frozenset()) -> Path:
    lines = []
    for i in range(n):
        row: dict[str, Any] = {"image_path": f"/c/{i}.jpg", "public_path": f"/p/{i}.jpg", "status": status}
        if status == "failed":
            row["error"] = "engine crashed"
        lines.append(b"{cut short" if i in broken else json.dumps(row).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def store_with(conn: psycopg.Connection[Any], batch_id: str) -> Any:
    def store(judged: Judged) -> LoadReport:
        return save_judged(conn, batch_id, judged)

    return store


def test_chunks_are_stored_in_order_and_their_reports_summed(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    path = write(tmp_path / "a.jsonl", 25, broken=frozenset({4, 17}))
    register_batch(conn, "E", 25)
    seen: list[tuple[int, int]] = []

    def on_chunk(chunk: Chunk, totals: Totals) -> None:
        seen.append((chunk.first, chunk.lines))

    outcome = load_chunks("E", Sources([str(path)]), store_with(conn, "E"), chunk_size=10, on_chunk=on_chunk)

    assert seen == [(0, 10), (10, 10), (20, 5)]
    assert (outcome.next_position, outcome.stopped) == (25, False)
    report = outcome.totals.report(outcome.duration_s)
    assert (report.received, report.stored, report.rejected, report.statements) == (25, 23, 2, 24)
    assert [i.position for i in report.issues] == [4, 17]
    assert stored_totals(db, "E") == (25, 23, 2, "SUCCESS")


def test_a_stop_request_ends_the_load_after_the_chunk_in_flight_and_skip_resumes_it(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    path = write(tmp_path / "a.jsonl", 30)
    register_batch(conn, "S", 30)

    first = load_chunks("S", Sources([str(path)]), store_with(conn, "S"), chunk_size=10, stop=lambda: True)
    assert (first.next_position, first.stopped, first.totals.chunks) == (10, True, 1)
    assert stored_totals(db, "S")[1] == 10

    rest = load_chunks(
        "S", Sources([str(path)]), store_with(conn, "S"), chunk_size=10, skip=first.next_position
    )

    assert (rest.next_position, rest.totals.chunks, rest.totals.counts.unchanged) == (30, 2, 0)
    assert stored_totals(db, "S") == (30, 30, 0, "SUCCESS")
    assert_totals_match_recount(db, "S")


def test_issues_are_capped_once_over_all_chunks_while_the_counts_stay_exact(
    conn: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("loader.save.chunks.MAX_ISSUES_KEPT", 7)
    path = write(tmp_path / "f.jsonl", 20, status="failed")
    register_batch(conn, "I", 20)

    outcome = load_chunks("I", Sources([str(path)]), store_with(conn, "I"), chunk_size=6)

    assert (outcome.totals.counts.failed, len(outcome.totals.issues), outcome.totals.issues_omitted) == (
        20,
        7,
        13,
    )


def test_a_celery_batch_file_sums_replaced_failures_like_save_batch(
    pool: ConnectionPool, tmp_path: Path
) -> None:
    failed = write(tmp_path / "failed.jsonl", 12, status="failed")
    fixed = write(tmp_path / "fixed.jsonl", 12)
    load_file(pool, "C", failed, total_images=None, chunk_images=5, settings=Settings())

    report = load_file(pool, "C", fixed, total_images=None, chunk_images=5, settings=Settings(), replace=True)
    replay = load_file(pool, "C", failed, total_images=None, chunk_images=5, settings=Settings())

    assert (report.stored, report.replaced, report.statements, report.received) == (0, 12, 24, 12)
    assert (replay.unchanged, replay.replaced) == (12, 0)
    assert report.progress.completed_images == 12 and report.progress.failed_images == 0


def test_judge_then_save_judged_stores_and_reports_what_save_batch_does(
    templates: Any, tmp_path: Path
) -> None:
    lines = write(tmp_path / "a.jsonl", 12, broken=frozenset({3})).read_bytes().splitlines()
    two_steps, one_step = templates.create(), templates.create()
    try:
        with psycopg.connect(two_steps) as conn:
            first = save_judged(conn, "P", judge("P", lines[:6]), total_images=12)
            second = save_judged(conn, "P", judge("P", lines[6:], position_offset=6), total_images=12)
        with psycopg.connect(one_step) as conn:
            direct = [
                save_batch(conn, "P", lines[:6], total_images=12),
                save_batch(conn, "P", lines[6:], total_images=12, position_offset=6),
            ]
        fields = ("received", "stored", "failed", "rejected", "unchanged", "statements", "issues")
        for a, b in zip((first, second), direct, strict=True):
            assert {f: getattr(a, f) for f in fields} == {f: getattr(b, f) for f in fields}
        with psycopg.connect(two_steps) as a, psycopg.connect(one_step) as b:
            assert (row_counts(a), stored_totals(a, "P")) == (row_counts(b), stored_totals(b, "P"))
    finally:
        templates.drop(two_steps)
        templates.drop(one_step)
