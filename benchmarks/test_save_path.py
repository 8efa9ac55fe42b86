"""Saving the same batch five ways, for N = 100, 1,000 and 10,000 images.

Per approach and N, in a fresh clone of the schema'd template database:
1. a counted run (also the warm-up): fresh connections, server-side statement
   count, peak client memory (tracemalloc: Python allocations made during the
   call, the input excluded; the same measure for every approach). Then the
   stored rows are checked, so a broken approach cannot post a fast time.
2. timed rounds: the tables are truncated before each round, outside the timing,
   so every round loads into the same empty tables; the approach keeps its
   connection across rounds, as a worker keeps its pool.
Every case runs on two databases (LOADER_BENCH_DATABASES picks): "fresh", the bare
schema never analyzed, and "analyzed", a database holding earlier batches with
statistics taken (loader.testing.earlier_batches), as production's is; there a round
deletes the batch (delete_batch) instead of truncating, so the earlier rows and
their statistics stay.
No timing is asserted anywhere: the numbers go to the table and to extra_info.
"""

from __future__ import annotations

import math
import time
import tracemalloc
from typing import Any

import psycopg
import pytest
import report
from approaches import APPROACHES
from conftest import BOXES, DATABASES, ONLY, RESULTS, SIZES, SMOKE, batch
from counting import CLIENT, PG_STAT_STATEMENTS, Counter, database_of

from loader import queries
from loader.testing import TemplateDatabases

# Time the timed rounds of one case may take, in seconds; rounds are also kept
# between MIN_ROUNDS (a median of fewer means little) and MAX_ROUNDS.
ROUND_BUDGET_S = 20.0
MIN_ROUNDS = 3
MAX_ROUNDS = 15

TABLES = ", ".join(
    [
        "batch_executions",
        "chain_executions",
        "ocr_executions",
        "ocr_text_boxes",
        "load_rejects",
        "task_logs",
        "loader_calls",
        # Result history (schema version 5) references batch_executions.
        "ocr_result_history",
    ]
)

CASES = [
    (n, name, database)
    for database in DATABASES
    for n in SIZES
    for name in report.ORDER
    if not ONLY or name in ONLY
]


def _rounds(counted_run_s: float) -> int:
    if SMOKE:
        return 1
    return max(MIN_ROUNDS, min(MAX_ROUNDS, math.floor(ROUND_BUDGET_S / max(counted_run_s, 1e-3))))


def _check_stored(db: psycopg.Connection[Any], batch_id: str, n: int) -> None:
    # The batch's own rows: an analyzed database holds earlier batches too.
    row = db.execute(
        """
        SELECT (SELECT count(*) FROM chain_executions WHERE batch_id = %(b)s),
               (SELECT count(*) FROM ocr_executions o JOIN chain_executions c USING (chain_id)
                WHERE c.batch_id = %(b)s),
               (SELECT count(*) FROM ocr_text_boxes b JOIN ocr_executions o ON o.id = b.ocr_execution_id
                JOIN chain_executions c USING (chain_id) WHERE c.batch_id = %(b)s),
               (SELECT array[total_images, completed_images, failed_images]
                FROM batch_executions WHERE batch_id = %(b)s AND status = 'SUCCESS')
        """,
        {"b": batch_id},
    ).fetchone()
    assert row == (n, n, n * BOXES, [n, n, 0]), f"stored rows differ from the input: {row}"


def _emptied(db: psycopg.Connection[Any], batch_id: str, database: str) -> None:
    """Before a round: the tables empty again (fresh), or the batch deleted (analyzed, whose
    earlier batches and statistics stay, as production's do; the deleted rows stay dead
    until autovacuum, as production's do)."""
    if database == "fresh":
        db.execute(f"TRUNCATE {TABLES}")
        return
    with db.transaction():
        db.execute(queries.get("batch_lock"), {"batch_id": batch_id})
        db.execute(queries.get("delete_batch"), {"batch_id": batch_id})


@pytest.mark.parametrize(
    ("n", "name", "database"), CASES, ids=[f"{d}-{n}-{name.replace(' ', '_')}" for n, name, d in CASES]
)
def test_save(
    benchmark: Any, n: int, name: str, database: str, templates: TemplateDatabases, counter: Counter
) -> None:
    results = batch(n)
    batch_id = f"bench-{n}"
    dsn = templates.create(analyzed=database == "analyzed")
    dbname = database_of(dsn)
    approach = APPROACHES[name]()
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            approach.open(counter.counting_dsn(dsn))
            try:
                mark = counter.mark(dbname)
                tracemalloc.start()
                started = time.perf_counter()
                approach(batch_id, results)
                counted_run_s = time.perf_counter() - started
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                statements = counter.since(dbname, mark)
                client_count = approach.statements(n, BOXES)
            finally:
                if tracemalloc.is_tracing():
                    tracemalloc.stop()
                approach.close()
            _check_stored(db, batch_id, n)
            if name == "loader" and counter.method == PG_STAT_STATEMENTS:
                # The loader's own report must agree with the server. (A server log
                # shows a multi-statement query as one line, so it can count fewer.)
                assert statements == client_count, (statements, client_count)

            def truncate() -> tuple[tuple[Any, ...], dict[str, Any]]:
                _emptied(db, batch_id, database)
                return (batch_id, results), {}

            rounds = _rounds(counted_run_s)
            approach.open(dsn)
            try:
                benchmark.pedantic(approach, setup=truncate, rounds=rounds, iterations=1)
            finally:
                approach.close()
            _check_stored(db, batch_id, n)
    finally:
        templates.drop(dsn)

    median = benchmark.stats.stats.median
    source = counter.method if statements is not None else CLIENT
    result = {
        "approach": name,
        "n": n,
        "database": database,
        "rows": n * (2 + BOXES),
        "rounds": rounds,
        "median_s": median,
        "rows_per_s": n * (2 + BOXES) / median,
        "statements": statements if statements is not None else client_count,
        "statements_source": source,
        "statements_client": client_count,
        "peak_mib": peak / 2**20,
    }
    benchmark.extra_info.update(result)
    RESULTS.append(result)
