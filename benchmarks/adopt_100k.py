"""Time `loader schema adopt` on an application database of N old-path images (default 100,000).

The database is made by the application's own create_all (tests/helpers/oldapp.py), then filled
set-based (the row-by-row filler of the tests would take hours): 100 batches, one chain
and one task log per image, one OCR row per image (every 20th failed, without boxes), 5
boxes per successful image. Then adopt runs once, timed, and `loader schema check` is run.

    LOADER_TEST_DSN=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/adopt_100k.py [--images 100000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.oldapp import OldApp, Shape

from loader.schema.adopt import adopt
from loader.schema.check import check
from loader.testing import with_dbname

# Images per batch in the generated database.
BATCH_SIZE = 1000

FILL = [
    """INSERT INTO batch_executions (batch_id, status, total_images, completed_images, failed_images,
                                     created_at, updated_at)
       SELECT 'bench-' || b, 'PENDING', %(per)s, 0, 0, localtimestamp, localtimestamp
       FROM generate_series(0, (%(n)s - 1) / %(per)s) b""",
    """INSERT INTO chain_executions (chain_id, batch_id, status, total_tasks, completed_tasks, failed_tasks,
                                     created_at, updated_at)
       SELECT gen_random_uuid()::text, 'bench-' || ((i - 1) / %(per)s),
              CASE WHEN i %% 20 = 0 THEN 'FAILURE' ELSE 'SUCCESS' END::processstatus,
              1, (i %% 20 <> 0)::int, (i %% 20 = 0)::int, localtimestamp, localtimestamp
       FROM generate_series(1, %(n)s) i""",
    """INSERT INTO task_logs (task_id, task_name, chain_execution_id, status, created_at, updated_at)
       SELECT gen_random_uuid()::text, 'ocr.process_image', id, status, created_at, updated_at
       FROM chain_executions ORDER BY id""",
    """INSERT INTO ocr_executions (image_path, public_path, chain_id, status, created_at, updated_at)
       SELECT '/data/old/' || id || '.jpg', 'https://cdn/old/' || id || '.jpg', chain_id,
              CASE status WHEN 'FAILURE' THEN 'FAILED' ELSE 'SUCCESS' END::ocrstatus, created_at, updated_at
       FROM chain_executions ORDER BY id""",
    """INSERT INTO ocr_text_boxes (ocr_execution_id, text, confidence, bbox, created_at, updated_at)
       SELECT o.id, '텍스트 text ' || o.id || '-' || b, 0.5 + b / 10.0,
              json_build_array(json_build_array(b, 0), json_build_array(b + 10, 0),
                               json_build_array(b + 10, 5.5), json_build_array(b, 5.5)),
              o.created_at, o.updated_at
       FROM ocr_executions o CROSS JOIN generate_series(0, 4) b
       WHERE o.status = 'SUCCESS'
       ORDER BY o.id, b""",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    maintenance = os.environ.get("LOADER_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"adopt_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        version = conn.info.server_version
    dsn = with_dbname(maintenance, name)
    try:
        app = OldApp(dsn, Shape())
        app.create_all()
        app.close()
        started = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            for statement in FILL:
                conn.execute(statement, {"n": args.images, "per": BATCH_SIZE})  # type: ignore[arg-type]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        print(f"PostgreSQL {version}: filled {args.images:,} images in {time.perf_counter() - started:.1f} s")

        report = adopt(dsn)
        rows = sum(report.rows_after.values())
        print(
            f"adopted {rows:,} rows in {report.seconds:.1f} s: "
            + ", ".join(f"{n:,} {t}" for t, n in report.rows_after.items())
        )
        started = time.perf_counter()
        diff = check(dsn)
        verdict = "clean" if diff.matches else diff.lines()
        print(f"schema check: {verdict} ({time.perf_counter() - started:.1f} s)")
    finally:
        if not args.keep:
            with psycopg.connect(maintenance, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
