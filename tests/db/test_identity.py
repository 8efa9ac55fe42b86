"""One identity for every input: a batch's final state depends only on its inputs and their
positions, never on how they were cut into calls, how often a call was sent, or by which path
(CLI chunks, API chunks with offsets, the Celery task in chunks) they arrived."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from helpers.celery_harness import DEFAULT_AMQP_URL, Broker, Worker, _amqp_answers
from helpers.checks import recount, stored_totals

from loader import PositionConflictError, register_batch, save_batch
from loader.celery.submit import submit_batch
from loader.cli import cli
from loader.testing import TemplateDatabases

# Every test here runs on a fresh database and on an analyzed one holding earlier batches.
pytestmark = pytest.mark.production_statistics

BATCH = "hostile"
RESULT_TIMEOUT_S = 120


def _good(n: int, *, text: str = "t", prefix: str = "/h") -> dict[str, Any]:
    box = {"text": f"{text}{n}", "confidence": 0.5, "bbox": [[0, 0], [n, 1]]}
    return {
        "image_path": f"{prefix}/{n}.png",
        "public_path": f"{prefix}/pub/{n}.png",
        "text_boxes": [box, box],
    }


def hostile_lines() -> list[bytes]:
    """40 inputs: successes, upstream failures, invalid values, lines that are not JSON or have no
    path, and duplicates of earlier lines at distances 1, 3, 8 and 20 (byte-identical repeats)."""
    lines: list[bytes] = []
    for n in range(40):
        if n % 10 == 3:
            data: Any = {"image_path": f"/h/{n}.png", "status": "failed", "error": "engine crashed"}
        elif n % 10 == 6:
            data = {
                "image_path": f"/h/{n}.png",
                "text_boxes": [{"text": "x", "confidence": 1.7, "bbox": [[0, 0]]}],
            }
        elif n % 13 == 9:
            lines.append(b'{"image_path": "/h/cut')
            continue
        elif n % 17 == 11:
            data = {"text_boxes": []}
        else:
            data = _good(n)
        lines.append(json.dumps(data).encode())
    for distance, at in ((1, 5), (3, 15), (8, 25), (20, 35)):
        lines[at] = lines[at - distance]
    # A public_path used by an earlier image of the batch.
    lines[38] = json.dumps({"image_path": "/h/other.png", "public_path": "/h/pub/0.png"}).encode()
    return lines


def state(dsn: str, batch_id: str = BATCH) -> dict[str, Any]:
    """Everything a batch holds, without ids and timestamps."""
    with psycopg.connect(dsn) as db:
        images = db.execute(
            "SELECT c.position, o.image_path, o.public_path, o.status::text, o.error, o.model_version,"
            " c.status::text,"
            " (SELECT coalesce(json_agg(json_build_array(b.position, b.text, b.confidence, b.bbox)"
            "   ORDER BY b.position), '[]') FROM ocr_text_boxes b WHERE b.ocr_execution_id = o.id)::text"
            " FROM chain_executions c JOIN ocr_executions o ON o.chain_id = c.chain_id"
            " WHERE c.batch_id = %s ORDER BY c.position",
            [batch_id],
        ).fetchall()
        rejects = db.execute(
            "SELECT position, image_path, reason, raw, resolved_at IS NOT NULL FROM load_rejects"
            " WHERE batch_id = %s ORDER BY position, raw_sha256",
            [batch_id],
        ).fetchall()
        totals = stored_totals(db, batch_id)
        assert totals[1:3] == recount(db, batch_id)
    return {"images": images, "rejects": rejects, "totals": totals}


@pytest.fixture
def databases(templates: TemplateDatabases) -> Iterator[Callable[[], str]]:
    """Fresh databases holding the schema, one per way of loading the batch."""
    made: list[str] = []

    def make() -> str:
        made.append(templates.create())
        return made[-1]

    yield make
    for url in made:
        templates.drop(url)


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Broker:
    """RabbitMQ as the broker (results in files: RabbitMQ stores none), whatever pick_broker prefers."""
    if not _amqp_answers(DEFAULT_AMQP_URL):
        pytest.skip(f"RabbitMQ does not answer at {DEFAULT_AMQP_URL} (.ci/run starts it)")
    results = tmp_path_factory.mktemp("rabbitmq-results")
    return Broker("rabbitmq", DEFAULT_AMQP_URL, results.as_uri())


def _celery_chunks(broker: Broker, dsn: str, scratch: Path, lines: list[bytes], size: int) -> None:
    worker = Worker(broker, dsn, scratch).start()
    try:
        client = worker.client()
        for start in range(0, len(lines), size):
            chunk = [line.decode() for line in lines[start : start + size]]
            submission = submit_batch(
                BATCH, chunk, position_offset=start, total_images=len(lines), app=client
            )
            submission.result.get(timeout=RESULT_TIMEOUT_S)
        client.close()
    finally:
        worker.stop()


def test_the_batch_through_rabbitmq_in_chunks_ends_as_one_call(
    databases: Callable[[], str], tmp_path: Path, rabbitmq: Broker
) -> None:
    lines = hostile_lines()
    one, chunked = databases(), databases()
    with psycopg.connect(one) as conn:
        save_batch(conn, BATCH, lines)
    _celery_chunks(rabbitmq, chunked, tmp_path / "worker", lines, 6)
    assert state(chunked) == state(one)


def _cli(*args: str) -> None:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _api_chunks(dsn: str, lines: list[bytes], sizes: list[int]) -> None:
    start, call = 0, 0
    with psycopg.connect(dsn) as conn:
        while start < len(lines):
            size = sizes[call % len(sizes)]
            chunk = lines[start : start + size]
            save_batch(conn, BATCH, chunk, position_offset=start, total_images=len(lines))
            start, call = start + size, call + 1


def test_one_hostile_batch_cut_every_way_ends_in_one_state(
    databases: Callable[[], str], tmp_path: Path, broker: Broker
) -> None:
    lines = hostile_lines()
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    states: dict[str, dict[str, Any]] = {}

    for size in (1, 2, 7, 1000):
        dsn = databases()
        _cli("load", str(path), "-b", BATCH, "--chunk-size", str(size), "--dsn", dsn)
        states[f"cli chunks of {size}"] = state(dsn)

    dsn = databases()
    _api_chunks(dsn, lines, [5, 11, 3])
    states["api chunks with offsets"] = state(dsn)

    dsn = databases()
    with psycopg.connect(dsn) as conn:
        first = save_batch(conn, BATCH, lines)
        again = save_batch(conn, BATCH, lines)  # the same call: recognised by the ledger
    _cli("load", str(path), "-b", BATCH, "--chunk-size", "3", "--dsn", dsn)  # another cut: replays too
    _api_chunks(dsn, lines, [13])
    assert again.replayed and again.unchanged == len(lines) and again.statements == 3
    assert first.stored + first.failed + first.rejected == len(lines)
    states["one call, replayed three ways"] = state(dsn)

    dsn = databases()
    _celery_chunks(broker, dsn, tmp_path / "worker", lines, 9)
    states["celery task in chunks of 9"] = state(dsn)

    reference = states["cli chunks of 1000"]
    for way, got in states.items():
        assert got == reference, way
    total, completed, failed, status = reference["totals"]
    assert (total, completed + failed, status) == (len(lines), len(lines), "SUCCESS")
    open_rejects = [r for r in reference["rejects"] if not r[4]]
    assert len(reference["images"]) + len(open_rejects) == len(lines)
    reasons = {r[0]: r[2] for r in reference["rejects"]}
    assert reasons[35] == "duplicate image_path (first at position 12)"  # 35 repeats 15, which repeats 12
    assert reasons[38] == f"public_path already used by another image (batch {BATCH!r})"


def test_calls_numbered_from_zero_are_refused_in_one_line_and_keep_nothing(
    conn: psycopg.Connection[Any],
) -> None:
    register_batch(conn, "numbered", 4)
    save_batch(conn, "numbered", [_good(0), _good(1)], total_images=4)
    with pytest.raises(PositionConflictError, match=r"position_offset") as refused:
        save_batch(conn, "numbered", [_good(2), _good(3)], total_images=4)
    assert refused.value.positions == [0, 1]
    assert "\n" not in str(refused.value)
    progress = save_batch(conn, "numbered", [_good(2), _good(3)], position_offset=2, total_images=4).progress
    assert (progress.status, progress.completed_images, progress.total_images) == ("SUCCESS", 4, 4)


def test_registered_batch_sent_in_chunks_in_any_order_ends_success_at_its_total(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    inputs = [_good(n, prefix="/c") for n in range(100)]
    register_batch(conn, "chunks", 100)
    for start in (50, 0, 75, 25, 50):  # out of order, one chunk twice
        report = save_batch(
            conn, "chunks", inputs[start : start + 25], position_offset=start, total_images=100
        )
        assert report.progress.total_images == 100
    assert stored_totals(db, "chunks") == (100, 100, 0, "SUCCESS")


def test_a_replayed_call_costs_three_statements_and_changes_nothing(conn: psycopg.Connection[Any]) -> None:
    inputs = [_good(n, prefix="/r") for n in range(20)]
    first = save_batch(conn, "replay", inputs)
    again = save_batch(conn, "replay", inputs)
    as_lines = save_batch(conn, "replay", [json.dumps(i) for i in inputs])  # other bytes: merged, unchanged
    assert (first.replayed, first.statements) == (False, 8)
    assert (again.replayed, again.statements, again.unchanged) == (True, 3, 20)
    assert (as_lines.replayed, as_lines.unchanged) == (False, 20)
    assert again.progress == first.progress == as_lines.progress


def test_a_duplicate_across_calls_reads_like_one_within_a_call(conn: psycopg.Connection[Any]) -> None:
    within = save_batch(conn, "within", [_good(7, prefix="/w"), b"{}", _good(7, prefix="/w")])
    line = json.dumps(_good(7, prefix="/a")).encode()
    across = [
        save_batch(conn, "across", [line, b"{}"], total_images=3),  # positions live inside the total
        save_batch(conn, "across", [line], position_offset=2),
    ]
    assert (
        within.issues[-1].reason
        == across[1].issues[-1].reason
        == "duplicate image_path (first at position 0)"
    )
    assert across[1].statements > 8  # the reject keeps its raw bytes: a second, small merge
