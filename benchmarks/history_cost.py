"""What keeping replaced results costs a re-OCR, and what `compare` costs on a large batch.

1. A replace of N = 10,000 images (5 boxes each, one call) with result history
   (the merge as shipped: kept_results copies every replaced result into
   ocr_result_history) against the same replace without it (the same merge text
   with the kept_results CTE cut out, patched in for the baseline), in fresh
   databases, interleaved rounds, medians of ROUNDS. Target: <= 1.15x.
2. `compare` on a batch of M = 100,000 images re-OCRed once (every image has a
   current and a kept result): current vs previous, and by model names.

    .venv/bin/python benchmarks/history_cost.py DSN [--images N] [--compare-images M] [--rounds R]

(--rounds 0: only the compare figure; --compare-images 0: only the replace figure.)

(DSN: any server on which the user may CREATE DATABASE; databases are named
history_bench_* and dropped afterwards.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import loader.save.call
from loader import queries, save_batch
from loader.copy import staging_names
from loader.datagen import make_batch
from loader.lifecycle.history import compare
from loader.schema.apply import apply_schema

ROUNDS = 5
# Images per call when the compare batch is loaded (the CLI's chunks are 5,000).
LOAD_CHUNK = 10_000


@contextmanager
def fresh_database(admin: str) -> Iterator[str]:
    name = f"history_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = make_conninfo(**{**conninfo_to_dict(admin), "dbname": name})
        apply_schema(dsn)
        yield dsn
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def merge_without_history() -> sql.Composed:
    """The shipped merge with its kept_results CTE cut out: the same statement, keeping nothing."""
    text = queries.get("merge")
    start, end = text.index("kept_results AS ("), text.index("new_boxes AS (")
    return sql.SQL(text[:start] + text[end:]).format(**staging_names())  # type: ignore[arg-type]


def rerun(results: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    out = json.loads(json.dumps(results))
    for n, r in enumerate(out):
        r["model_version"] = model
        if n % 10 == 0:
            r.update(status="failed", error=f"{model}: timeout", text_boxes=[])
        else:
            r["text_boxes"][0]["text"] += " (reread)"
    return out


def timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def backend_cpu(conn: psycopg.Connection[Any]) -> float:
    """CPU seconds the connection's server process has used (Linux, server on this machine).

    Wall time on a machine other work shares swings by 2x between rounds; the CPU the
    backend spends on the same statement does not.
    """
    fields = Path(f"/proc/{conn.info.backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_replace(
    admin: str, first: list[dict[str, Any]], second: list[dict[str, Any]], keep: bool
) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) of one replace call."""
    shipped = loader.save.call._MERGE
    with fresh_database(admin) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        save_batch(conn, "b", first)
        conn.execute("CHECKPOINT")  # superuser; the replace then starts from the same state
        if not keep:
            loader.save.call._MERGE = merge_without_history()
        try:
            cpu = backend_cpu(conn)
            seconds = timed(lambda: save_batch(conn, "b", second, replace=True))
            cpu = backend_cpu(conn) - cpu
        finally:
            loader.save.call._MERGE = shipped
        kept = conn.execute("SELECT count(*) FROM ocr_result_history").fetchone()
        assert kept is not None and kept[0] == (len(second) if keep else 0)
    return seconds, cpu


def replace_cost(admin: str, images: int, rounds: int) -> None:
    first = make_batch(images, prefix="hist")
    for r in first:
        r["model_version"] = "ocr-v1"
    second = rerun(first, "ocr-v2")
    timings: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for n in range(rounds):
        for keep in (n % 2 == 0, n % 2 != 0):  # interleaved, alternating which goes first
            timings[keep].append(one_replace(admin, first, second, keep))
    for what, index in (("wall time", 0), ("server CPU", 1)):
        runs = {keep: [t[index] for t in timings[keep]] for keep in timings}
        with_history, without = statistics.median(runs[True]), statistics.median(runs[False])
        print(
            f"replace of {images:,} images (5 boxes each, one call), {what}: with history "
            f"{with_history * 1000:.0f} ms, without {without * 1000:.0f} ms: {with_history / without:.3f}x "
            f"(medians of {rounds}; with {[round(t * 1000) for t in runs[True]]}, "
            f"without {[round(t * 1000) for t in runs[False]]})"
        )


def compare_cost(admin: str, images: int) -> None:
    first = make_batch(images, prefix="cmp")
    for r in first:
        r["model_version"] = "ocr-v1"
    second = rerun(first, "ocr-v2")
    with fresh_database(admin) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, images, LOAD_CHUNK):
            save_batch(
                conn, "big", first[start : start + LOAD_CHUNK], position_offset=start, total_images=images
            )
        for start in range(0, images, LOAD_CHUNK):
            part = second[start : start + LOAD_CHUNK]
            save_batch(conn, "big", part, position_offset=start, total_images=images, replace=True)
        conn.execute("VACUUM ANALYZE")
        for label, kwargs in (
            ("current vs previous", {}),
            ("--from ocr-v1 --to ocr-v2", {"from_model": "ocr-v1", "to_model": "ocr-v2"}),
        ):
            runs = [timed(lambda kw=kwargs: compare(conn, "big", top=10, **kw)) for _ in range(3)]  # type: ignore[misc]
            result = compare(conn, "big", top=10, **kwargs)  # type: ignore[arg-type]
            print(
                f"compare on {images:,} images ({label}): {statistics.median(runs):.2f} s (median of 3; "
                f"{result.compared:,} compared, {result.success_to_failed:,} success -> failed, "
                f"{result.text_changed:,} text changed)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dsn")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--compare-images", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    if args.rounds:
        replace_cost(args.dsn, args.images, args.rounds)
    if args.compare_images:
        compare_cost(args.dsn, args.compare_images)


if __name__ == "__main__":
    main()
