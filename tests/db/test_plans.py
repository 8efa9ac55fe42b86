"""Every probe of the save path, progress, recount, delete and retention seeks through
the index made for it on a production database: analyzed, holding earlier batches,
and with a batch that grew after the last ANALYZE (so the planner believes it holds
a handful of rows; where issue 21 measured an O(n^2) batch).

Each statement is EXPLAINed (FORMAT JSON, no ANALYZE: nothing runs) with the
parameters the loader sends, as an unnamed statement as the loader sends it (a
custom plan for these very values), and the plan is walked: every scan that
serves a probe (compares the probe's key columns for equality) must be an index
scan on the probe's index with those columns in its Index Cond, never a filter;
and no table of the schema is read whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from loader import queries, register_batch, save_batch
from loader.connection import SCHEMA_VERSION
from loader.copy import STAGE_BOXES, STAGE_IMAGES, copy_rows, staging_names
from loader.datagen import break_some, make_batch
from loader.save.call import _box_rows, _image_rows  # staging rows as a call builds them
from loader.save.validate import judge_call
from loader.settings import Settings
from loader.testing import TemplateDatabases

# The grown batch: saved after ANALYZE, in chunks, to this many images; the
# next chunk is the one EXPLAINed. The statistics say the batch does not exist.
GROWN = "grown"
CHUNK = 1000
GROWN_CHUNKS = 4
# Earlier batches, stored before ANALYZE: as many as make the statistics know
# batches are many and small, with an open reject every REJECT_EVERY inputs.
EARLIER_BATCHES = 20
EARLIER_IMAGES = 200
REJECT_EVERY = 10
# Finished batches retention can see: enough that reading them all costs more
# than an index range, as on a database that has kept its history.
OLD_BATCHES = 3000
TABLES = {
    "batch_executions",
    "chain_executions",
    "ocr_executions",
    "ocr_text_boxes",
    "load_rejects",
    "loader_calls",
    "task_logs",
}


@dataclass(frozen=True)
class Probe:
    """A lookup of ``table`` by equality on ``keys``, and the index (or indexes) made for it."""

    table: str
    keys: tuple[str, ...]
    indexes: frozenset[str]

    def __str__(self) -> str:
        return f"{self.table} ({', '.join(self.keys)}) through {' or '.join(sorted(self.indexes))}"


def probe(table: str, keys: str, *indexes: str) -> Probe:
    return Probe(table, tuple(keys.split(",")), frozenset(indexes))


CHAINS_BY_POSITION = probe("chain_executions", "batch_id,position", "chain_executions_position_once")
CHAINS_OF_BATCH = probe("chain_executions", "batch_id", "chain_executions_position_once")
CHAIN_BY_ID = probe("chain_executions", "chain_id", "chain_executions_chain_id_key")
OCR_OF_CHAIN = probe("ocr_executions", "chain_id", "ocr_executions_chain_id_key")
OCR_BY_PATH = probe("ocr_executions", "image_path", "ocr_executions_image_path_key")
OCR_BY_PUBLIC = probe("ocr_executions", "public_path", "ocr_executions_public_path_key")
BATCH = probe("batch_executions", "batch_id", "batch_executions_batch_id_key")
OPEN_REJECTS = probe("load_rejects", "batch_id", "load_rejects_open_by_position_idx", "load_rejects_once")
REJECTS_OF_BATCH = probe("load_rejects", "batch_id", "load_rejects_once")
LOGS_OF_CHAIN = probe("task_logs", "chain_execution_id", "task_logs_chain_execution_id_idx")
REJECT_AT = probe(
    "load_rejects",
    "batch_id,position",
    "load_rejects_open_by_position_idx",
    "load_rejects_once",
    # A version-3 reject at the position the input had in its call (migration 0005).
    "load_rejects_legacy_open_idx",
)
LEDGER = probe("loader_calls", "batch_id,digest", "loader_calls_pkey")
BOXES_OF_OCR = probe("ocr_text_boxes", "ocr_execution_id", "ocr_text_boxes_reading_order")
CALLS_OF_BATCH = probe("loader_calls", "batch_id", "loader_calls_pkey")


def _flat(condition: str) -> str:
    return condition.replace('"', "")


# A key compared for equality, or bounded (retention's age); never <> or IS DISTINCT FROM.
_OPERATOR = r"(?:=|<=|>=|<(?!>)|(?<!<)>)"


def _compares(condition: str, column: str) -> bool:
    """Whether a plan condition compares ``column`` for equality or bounds it (either side)."""
    text = _flat(condition)
    left = re.search(rf"(?<![\w.])(?:\w+\.)?{column}\s*{_OPERATOR}\s", text)
    right = re.search(rf"{_OPERATOR}\s*\(?(?:\w+\.)?{column}(?!\w)", text)
    return bool(left or right)


@dataclass
class Scan:
    node: str
    table: str
    index: str | None
    index_cond: str
    filters: str


def _scans(plan: dict[str, Any], table: str | None = None) -> Iterator[Scan]:
    """Every scan of a table in a plan; a bitmap index scan counts as a scan of its heap's table."""
    table = plan.get("Relation Name", table)
    kind = plan["Node Type"]
    if kind in ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Index Scan") and table:
        filters = " AND ".join(plan.get(k, "") for k in ("Filter", "Recheck Cond") if plan.get(k))
        yield Scan(kind, table, plan.get("Index Name"), plan.get("Index Cond", ""), filters)
    for child in plan.get("Plans", []):
        # A bitmap heap scan's children scan its relation's indexes; other nodes' children their own.
        yield from _scans(child, table if kind == "Bitmap Heap Scan" else None)


def violations(plan: dict[str, Any], probes: list[Probe]) -> list[str]:
    """What in a plan reads a table whole or serves a probe by filtering instead of seeking."""
    scans = list(_scans(plan))
    found = [
        f"{s.node} on {s.table} (filter {s.filters or '-'})"
        for s in scans
        if s.node == "Seq Scan" and s.table in TABLES
    ]
    for p in probes:
        serving = [
            s
            for s in scans
            if s.table == p.table and all(_compares(s.index_cond + " " + s.filters, k) for k in p.keys)
        ]
        if not serving:
            found.append(f"no scan of {p.table} by ({', '.join(p.keys)}) in the plan")
        for s in serving:
            sought = all(_compares(s.index_cond, k) for k in p.keys)
            if s.index not in p.indexes or not sought:
                found.append(
                    f"{p}: {s.node} using {s.index or 'no index'}, "
                    f"Index Cond {s.index_cond or '-'}, Filter {s.filters or '-'}"
                )
    return found


def executed(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> dict[str, Any]:
    """The plans PostgreSQL ran for a statement and for every statement nested in it.

    EXPLAIN shows a call of a function that is not inlined (lock_batch's VOLATILE
    loader_locked_call, which must read after the lock; get_progress's plpgsql
    loader_progress) as one Function Scan. auto_explain, sent to the client as
    warnings (lock_batch raises client_min_messages to warning), shows the plans
    of the statements inside them as they ran. The statement runs once, in a
    transaction rolled back.
    """
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    for name, value in [
        ("log_min_duration", "0"),
        ("log_nested_statements", "on"),
        ("log_format", "json"),
        ("log_level", "warning"),
    ]:
        conn.execute("SELECT set_config(%s, %s, true)", [f"auto_explain.{name}", value])
    conn.execute(query, params, prepare=False)
    conn.rollback()
    plans = [json.loads(n[n.index("{") :])["Plan"] for n in notices if '"Plan"' in n]
    assert plans, "auto_explain logged no plan"
    return {"Node Type": "Executed statements", "Plans": plans}


def explain(
    conn: psycopg.Connection[Any], query: str | sql.Composable, params: dict[str, Any]
) -> dict[str, Any]:
    statement = sql.SQL("EXPLAIN (FORMAT JSON) ") + (sql.SQL(query) if isinstance(query, str) else query)
    row = conn.execute(statement, params, prepare=False).fetchone()
    assert row is not None
    return dict(row[0][0]["Plan"])


@pytest.fixture(scope="module")
def grown(templates: TemplateDatabases) -> Iterator[str]:
    """A database as production holds it, with a batch that grew after its last ANALYZE.

    One for the module: nothing here writes (EXPLAIN without ANALYZE, rolled back).
    """
    dsn = templates.create()
    _fill(dsn)
    yield dsn
    templates.drop(dsn)


def _fill(dsn: str) -> None:
    # The scenario is statistics older than the batch: autovacuum must not
    # analyze the grown batch in (on a quiet server it did, within a minute, and
    # a batch half the test's table is rightly read whole). In production the
    # same holds for a batch that grew by less than autovacuum's 10 % of a table.
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(
                sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(sql.Identifier(table))
            )
    with psycopg.connect(dsn) as conn:
        for n in range(EARLIER_BATCHES):
            images = make_batch(EARLIER_IMAGES, prefix=f"plans-earlier{n}")
            break_some(images, every=37)
            for i in range(0, EARLIER_IMAGES, REJECT_EVERY):
                images[i + 1] = dict(images[i])  # a duplicate: an open reject
            save_batch(conn, f"earlier-{n}", images)
        # History retention can see: finished batches, long ago.
        conn.execute(
            "INSERT INTO batch_executions (batch_id, status, total_images, completed_images, updated_at)"
            " SELECT 'old-' || n, 'SUCCESS', 1, 1, now() - interval '400 days' + n * interval '1 minute'"
            " FROM generate_series(1, %s) AS n",
            [OLD_BATCHES],
        )
        conn.execute(
            "INSERT INTO loader_calls (batch_id, digest, first_position, inputs)"
            " SELECT batch_id, sha256(batch_id::bytea), 0, 1"
            " FROM batch_executions WHERE batch_id LIKE 'old-%%'"
        )
        _task_logs(conn)
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")
    with psycopg.connect(dsn) as conn:
        images = make_batch(CHUNK * (GROWN_CHUNKS + 1), prefix="plans-grown")
        break_some(images, every=37)
        register_batch(conn, GROWN, len(images))
        for k in range(GROWN_CHUNKS):
            part = images[k * CHUNK : (k + 1) * CHUNK]
            for i in range(0, CHUNK, REJECT_EVERY):
                part[i + 1] = dict(part[i])
            save_batch(conn, GROWN, part, position_offset=k * CHUNK)
        _task_logs(conn)
        conn.commit()


def _task_logs(conn: psycopg.Connection[Any]) -> None:
    """A Celery task log per chain, as the workers' signal handlers keep it."""
    conn.execute(
        "INSERT INTO task_logs (task_id, task_name, chain_execution_id, status)"
        " SELECT 'task-' || c.chain_id, 'ocr', c.id, 'SUCCESS' FROM chain_executions c"
        " ON CONFLICT (task_id) DO NOTHING"
    )


# The loader's defaults, as a call sends them.
_SETTINGS = Settings()


def _lock_params(batch_id: str) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "total_images": CHUNK * (GROWN_CHUNKS + 1),
        "digest": b"\x01" * 32,
        "mode": "plain",
        "first_position": GROWN_CHUNKS * CHUNK,
        "last_position": (GROWN_CHUNKS + 1) * CHUNK - 1,
        "inputs": CHUNK,
        "work_mem": _SETTINGS.work_mem,
        "statement_timeout": _SETTINGS.statement_timeout,
        "lock_timeout": _SETTINGS.lock_timeout,
        "schema_version": SCHEMA_VERSION,
    }


def _staged_next_chunk(conn: psycopg.Connection[Any]) -> None:
    """lock_batch, then the next chunk of the grown batch staged, as a call does before its merge."""
    conn.execute(queries.get("lock_batch"), _lock_params(GROWN), prepare=False)
    images = make_batch(CHUNK * (GROWN_CHUNKS + 1), prefix="plans-grown")[GROWN_CHUNKS * CHUNK :]
    prepared = judge_call(GROWN, enumerate(images, GROWN_CHUNKS * CHUNK))
    conn.execute(sql.SQL("; ").join([STAGE_IMAGES.create(), STAGE_BOXES.create()]))
    copy_rows(conn, STAGE_IMAGES, _image_rows(prepared.images, list(prepared.rejects)))
    copy_rows(conn, STAGE_BOXES, _box_rows(prepared.images))


MERGE_PROBES = [
    CHAINS_BY_POSITION,
    OCR_OF_CHAIN,
    OCR_BY_PATH,
    OCR_BY_PUBLIC,
    CHAIN_BY_ID,
    REJECT_AT,
    BATCH,
]
# A re-OCR call's merge also asks the ledger whether it was sent before, and then
# reads the boxes of the images it re-runs (plain and repair calls plan neither).
REPLACE_PROBES = [LEDGER, BOXES_OF_OCR]


@pytest.mark.parametrize("mode", ["plain", "repair", "replace"])
def test_the_merge_seeks_every_probe_in_a_batch_that_grew_since_analyze(grown: str, mode: str) -> None:
    merge = sql.SQL(queries.get("merge")).format(**staging_names())
    with psycopg.connect(grown) as conn:
        _staged_next_chunk(conn)
        params = {
            "batch_id": GROWN,
            "mode": mode,
            "digest": b"\x02" * 32,
            "first_position": GROWN_CHUNKS * CHUNK,
            "inputs": CHUNK,
        }
        plan = explain(conn, merge, params)
        conn.rollback()
    found = violations(plan, MERGE_PROBES + (REPLACE_PROBES if mode == "replace" else []))
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    ("name", "probes"),
    [
        ("recount_batch", [BATCH, OPEN_REJECTS, CHAINS_OF_BATCH, OCR_OF_CHAIN]),
        (
            "delete_batch",
            [BATCH, CHAINS_OF_BATCH, OCR_OF_CHAIN, REJECTS_OF_BATCH, CALLS_OF_BATCH, LOGS_OF_CHAIN],
        ),
        (
            "batch_failure_counts",
            [probe("chain_executions", "batch_id", "chain_executions_failed_idx"), OPEN_REJECTS],
        ),
    ],
)
def test_reads_of_one_batch_seek_it_in_a_batch_that_grew_since_analyze(
    grown: str, name: str, probes: list[Probe]
) -> None:
    params = _lock_params(GROWN)
    with psycopg.connect(grown) as conn:
        plan = explain(conn, queries.get(name), params)
    assert violations(plan, probes) == []


@pytest.mark.parametrize(
    ("name", "probes"),
    [
        # After its lock, loader_locked_call: the ledger, and the rows at the call's positions.
        ("lock_batch", [BATCH, LEDGER, CHAINS_OF_BATCH, OCR_OF_CHAIN, OPEN_REJECTS]),
        # loader_progress, and (a stale batch) loader_recount inside it.
        ("batch_progress", [BATCH, OPEN_REJECTS]),
    ],
)
def test_reads_inside_functions_seek_the_batch_in_a_batch_that_grew_since_analyze(
    grown: str, name: str, probes: list[Probe]
) -> None:
    with psycopg.connect(grown) as conn:
        plan = executed(conn, queries.get(name), _lock_params(GROWN))
    assert violations(plan, probes) == []


def test_a_stale_batchs_progress_recounts_it_through_its_index(grown: str) -> None:
    with psycopg.connect(grown) as conn:
        conn.execute("UPDATE batch_executions SET totals_stale = true WHERE batch_id = %s", [GROWN])
        plan = executed(conn, queries.get("batch_progress"), _lock_params(GROWN))
    assert violations(plan, [BATCH, OPEN_REJECTS, CHAINS_OF_BATCH, OCR_OF_CHAIN]) == []


def test_the_recount_function_seeks_the_batch(grown: str) -> None:
    with psycopg.connect(grown) as conn:
        plan = explain(conn, "SELECT * FROM loader_recount(%(batch_id)s)", {"batch_id": GROWN})
    assert violations(plan, [CHAINS_OF_BATCH, OCR_OF_CHAIN, OPEN_REJECTS]) == []


def test_retention_reads_finished_batches_by_age_through_their_index(grown: str) -> None:
    finished = probe(
        "batch_executions", "updated_at", "batch_executions_finished_idx", "batch_executions_stale_idx"
    )
    with psycopg.connect(grown) as conn:
        plan = explain(
            conn,
            queries.get("finished_batches_before"),
            {
                "before": datetime.now(UTC) - timedelta(days=30),
                "limit": 100,
                "after_updated_at": datetime(1, 1, 1, tzinfo=UTC),
                "after_id": 0,
            },
        )
    assert violations(plan, [finished]) == []


def test_a_probe_that_filters_is_caught() -> None:
    """The walker itself: the plan issue 21 reported fails, the fixed one passes."""
    bad = {
        "Node Type": "Index Scan",
        "Relation Name": "chain_executions",
        "Index Name": "chain_executions_batch_id_status_idx",
        "Index Cond": "(batch_id = 'grown'::text)",
        "Filter": '("position" = s.pos)',
    }
    good = dict(bad, **{"Index Name": "chain_executions_position_once"})
    good["Index Cond"] = "((batch_id = 'grown'::text) AND (\"position\" = s.pos))"
    del good["Filter"]
    assert violations(bad, [CHAINS_BY_POSITION]) != []
    assert violations(good, [CHAINS_BY_POSITION]) == []
