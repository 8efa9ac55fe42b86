"""Cost of one chunk at the start and at the end of a large batch.

The merge used to recount the whole batch on every call, so a chunk cost more
the fuller its batch was. Run against any server on which the user may CREATE
DATABASE:

    .venv/bin/python benchmarks/chunk_cost.py postgresql://postgres@127.0.0.1:5432/postgres [chunks] [size]

Prints the median and minimum time of the first and of the last five chunks: the whole
save_batch call, and its merge statement alone (timed around the client's
execute of the merge, round trip included).
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from loader import queries, register_batch, save_batch
from loader.datagen import make_batch
from loader.schema.apply import apply_schema


def main() -> None:
    admin = sys.argv[1]
    chunks = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    name = f"chunk_cost_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = make_conninfo(**{**conninfo_to_dict(admin), "dbname": name})
    try:
        apply_schema(dsn)
        data = make_batch(chunks * size, boxes=5, prefix="cost")
        times: list[float] = []
        merges: list[float] = []
        merge_sql = queries.get("merge")
        execute = psycopg.Connection.execute

        def timed(self, query, params=None, **kw):  # type: ignore[no-untyped-def]
            if query is not merge_sql:
                return execute(self, query, params, **kw)
            started = time.perf_counter()
            cur = execute(self, query, params, **kw)
            merges.append(time.perf_counter() - started)
            return cur

        psycopg.Connection.execute = timed  # type: ignore[method-assign]
        with psycopg.connect(dsn) as conn:
            register_batch(conn, "big", chunks * size)
            for k in range(chunks):
                part = data[k * size : (k + 1) * size]
                started = time.perf_counter()
                save_batch(conn, "big", part, position_offset=k * size)
                times.append(time.perf_counter() - started)

        def ms(values: list[float]) -> str:
            # The minimum too: on a shared machine it is what the work costs
            # when nothing else runs; the median moves with the neighbours.
            return f"{statistics.median(values) * 1000:.1f} ms (min {min(values) * 1000:.1f})"

        print(
            f"{chunks} chunks of {size} images: call {ms(times[:5])} (first five) -> "
            f"{ms(times[-5:])} (last five); merge {ms(merges[:5])} -> {ms(merges[-5:])}"
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
