"""What a redelivered call costs, against its first save, and what deleting a batch costs.

For N = 10,000 images (5 boxes each) in one call, in fresh databases, interleaved
rounds (median of ROUNDS): the first save; the same call again (the batch's
ledger recognises it: BEGIN, lock_batch, COMMIT); and the same inputs as another
cut (two calls of N/2, which the ledger does not know: judged and merged, every
input unchanged). Then the time to delete a 100,000-image batch (700,000 rows)
with delete_batch. Dicts and JSON lines both, since the digest of dicts costs more:

    .venv/bin/python benchmarks/replay_cost.py DSN [--images N] [--delete-images M]

(DSN: any server on which the user may CREATE DATABASE.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from loader import register_batch, save_batch
from loader.datagen import make_batch
from loader.lifecycle.delete import delete_batch
from loader.schema.apply import apply_schema

ROUNDS = 5


@contextmanager
def fresh_database(admin: str) -> Iterator[str]:
    name = f"replay_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        dsn = make_conninfo(**{**conninfo_to_dict(admin), "dbname": name})
        apply_schema(dsn)
        yield dsn
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def one_round(admin: str, inputs: list[Any]) -> tuple[float, float, float]:
    half = len(inputs) // 2
    with fresh_database(admin) as dsn, psycopg.connect(dsn) as conn:
        first = timed(lambda: save_batch(conn, "b", inputs))
        replay = timed(lambda: save_batch(conn, "b", inputs))
        recut = timed(
            lambda: (
                save_batch(conn, "b", inputs[:half]),
                save_batch(conn, "b", inputs[half:], position_offset=half),
            )
        )
    return first, replay, recut


def replays(admin: str, images: int) -> None:
    data = make_batch(images, prefix="replay")
    for form, inputs in (("dicts", data), ("JSON lines", [json.dumps(d).encode() for d in data])):
        rounds = [one_round(admin, inputs) for _ in range(ROUNDS)]
        first, replay, recut = (statistics.median(r[i] for r in rounds) for i in range(3))
        print(
            f"{images:,} images as {form}: first save {first * 1000:.0f} ms; the same call again "
            f"{replay * 1000:.1f} ms ({replay / first:.1%} of it); as another cut {recut * 1000:.0f} ms "
            f"({recut / first:.0%}); medians of {ROUNDS}"
        )


def deletion(admin: str, images: int) -> None:
    with fresh_database(admin) as dsn, psycopg.connect(dsn) as conn:
        register_batch(conn, "big", images)
        data = make_batch(images, prefix="delete")
        for start in range(0, images, 10_000):
            save_batch(conn, "big", data[start : start + 10_000], position_offset=start)
        seconds = timed(lambda: delete_batch(conn, "big"))
        print(f"delete_batch of {images:,} images ({images * 7:,} rows): {seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--delete-images", type=int, default=100_000)
    args = parser.parse_args()
    replays(args.dsn, args.images)
    deletion(args.dsn, args.delete_images)


if __name__ == "__main__":
    main()
