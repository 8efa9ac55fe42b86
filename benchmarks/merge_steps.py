"""Where the merge of one call spends its time, step by step: EXPLAIN (ANALYZE, BUFFERS) of it.

    .venv/bin/python benchmarks/merge_steps.py [--dsn DSN] [--images 10000] [--fresh]

On an analyzed database holding earlier batches (loader.testing.earlier_batches;
--fresh: the bare schema), one call of --images new images is staged as save_batch
stages it, and its merge runs under EXPLAIN ANALYZE, then rolls back. Printed: the
time of each of the merge's CTEs (inclusive: a CTE's time contains the steps it reads
from), and of each identity probe (an index scan per staged input: time per loop x
loops), so the identity rule's price reads off directly. Server: --dsn, else
LOADER_BENCH_DSN / LOADER_TEST_DSN, else the embedded PostgreSQL 18.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loader import queries
from loader.connection import SCHEMA_VERSION
from loader.copy import STAGE_BOXES, STAGE_IMAGES, copy_rows, staging_names
from loader.datagen import make_batch
from loader.save.call import _box_rows, _image_rows
from loader.save.validate import judge_call
from loader.settings import Settings
from loader.testing import TemplateDatabases, embedded_server


def _nodes(plan: dict[str, Any], cte: str | None = None) -> Iterator[tuple[str | None, dict[str, Any]]]:
    name = plan.get("Subplan Name", "")
    cte = name[4:] if name.startswith("CTE ") else cte
    yield cte, plan
    for child in plan.get("Plans", []):
        yield from _nodes(child, cte)


def explain_merge(dsn: str, images: int) -> dict[str, Any]:
    batch_id = "steps"
    settings = Settings()
    with psycopg.connect(dsn) as conn:
        conn.execute(
            queries.get("lock_batch"),
            {
                "batch_id": batch_id,
                "total_images": images,
                "digest": b"\x00" * 32,
                "mode": "plain",
                "first_position": 0,
                "last_position": images - 1,
                "inputs": images,
                "work_mem": settings.work_mem,
                "statement_timeout": "0",
                "lock_timeout": settings.lock_timeout,
                "schema_version": SCHEMA_VERSION,
            },
            prepare=False,
        )
        prepared = judge_call(batch_id, enumerate(make_batch(images, prefix="steps")))
        conn.execute(sql.SQL("; ").join([STAGE_IMAGES.create(), STAGE_BOXES.create()]))
        copy_rows(conn, STAGE_IMAGES, _image_rows(prepared.images, list(prepared.rejects)))
        copy_rows(conn, STAGE_BOXES, _box_rows(prepared.images))
        merge = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + sql.SQL(queries.get("merge")).format(
            **staging_names()
        )
        params = {"batch_id": batch_id, "mode": "plain", "digest": b"\x01" * 32, "first_position": 0}
        row = conn.execute(merge, {**params, "inputs": images}, prepare=False).fetchone()
        conn.rollback()
    assert row is not None
    return dict(row[0][0])


def report(result: dict[str, Any]) -> str:
    plan = result["Plan"]
    lines = [f"merge: {result['Execution Time']:.0f} ms (triggers {_triggers(result):.0f} ms)", ""]
    lines += ["| step (CTE, inclusive) | ms |", "|---|---:|"]
    for cte, node in _nodes(plan):
        if node.get("Subplan Name", "").startswith("CTE "):
            lines.append(f"| {cte} | {node['Actual Total Time']:.0f} |")
    lines += ["", "| probe (index scan per staged input) | in CTE | loops | ms |", "|---|---|---:|---:|"]
    for cte, node in _nodes(plan):
        if node["Node Type"] in ("Index Scan", "Index Only Scan") and node.get("Actual Loops", 0) > 1:
            total = node["Actual Total Time"] * node["Actual Loops"]
            lines.append(f"| {node['Index Name']} | {cte} | {node['Actual Loops']:,} | {total:.0f} |")
    return "\n".join(lines)


def _triggers(result: dict[str, Any]) -> float:
    return float(sum(t.get("Time", 0.0) for t in result.get("Triggers", [])))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("LOADER_BENCH_DSN") or os.environ.get("LOADER_TEST_DSN")
    )
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument(
        "--fresh", action="store_true", help="the bare schema instead of an analyzed database"
    )
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        server = args.dsn or stack.enter_context(embedded_server())
        templates = TemplateDatabases(server, prefix="loader_steps")
        stack.callback(templates.close)
        dsn = templates.create(analyzed=not args.fresh)
        print(report(explain_merge(dsn, args.images)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
