"""What the merge no longer pays per call: the whole-batch recount, by batch size.

Until the totals were kept from each call's changes, every merge recounted its
batch's chains and rejects through their indexes; that cost grows with the
batch. This loads one batch in 1,000-image chunks and times that recount
(server side, EXPLAIN ANALYZE, minimum and median of 30) at 1,000, 59,000 and
240,000 images:

    .venv/bin/python benchmarks/recount_cost.py DSN

(DSN: any server on which the user may CREATE DATABASE.)
"""

from __future__ import annotations

import re
import sys
import uuid

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from loader import register_batch, save_batch
from loader.datagen import make_batch
from loader.schema.apply import apply_schema

# The counts of the old merge's totals CTE, word for word.
RECOUNT = """
EXPLAIN (ANALYZE, TIMING OFF) SELECT
    (SELECT count(*) FROM chain_executions WHERE batch_id = 'big' AND status = 'SUCCESS'),
    (SELECT count(*) FROM chain_executions WHERE batch_id = 'big' AND status = 'FAILURE')
    + (SELECT count(*) FROM load_rejects WHERE batch_id = 'big')
"""
SIZES = (1_000, 59_000, 240_000)
CHUNK = 1000
RUNS = 30


def main() -> None:
    admin = sys.argv[1]
    name = f"recount_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = make_conninfo(**{**conninfo_to_dict(admin), "dbname": name})
    try:
        apply_schema(dsn)
        data = make_batch(SIZES[-1], boxes=0, prefix="recount")
        with psycopg.connect(dsn) as conn:
            register_batch(conn, "big", len(data))
            done = 0
            for size in SIZES:
                while done < size:
                    save_batch(conn, "big", data[done : done + CHUNK], position_offset=done)
                    done += CHUNK
                times = []
                for _ in range(RUNS):
                    plan = conn.execute(RECOUNT).fetchall()
                    conn.commit()
                    found = re.search(r"Execution Time: ([\d.]+)", plan[-1][0])
                    assert found is not None
                    times.append(float(found.group(1)))
                times.sort()
                print(
                    f"{size:>7,} images in the batch: recount {times[0]:.2f} ms (min of {RUNS}), "
                    f"median {times[RUNS // 2]:.2f} ms"
                )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
