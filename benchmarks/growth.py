"""Cost against the database's size: is a call as cheap on a full, analyzed database as on
an empty one, and does a chunk cost the same at the end of a large batch as at its start?

    .venv/bin/python benchmarks/growth.py [--dsn DSN] [--preload 1000000] [--call 10000]
        [--rounds 3] [--batch 100000] [--chunk 2000] [--prefix loader_growth] [--out FILE]

`python3 dev.py bench` runs it with --preload 100000 (and --smoke: a 20,000-image
batch, one round); 10^6 and more are documented runs (docs/benchmarks.md). Steps:

1. two databases with the schema: "empty" (ANALYZEd while empty) and "preloaded":
   --preload images stored by the loader itself, in batches of --call images
   (earlier batches, as production's), then `VACUUM ANALYZE`, as autovacuum
   leaves a table;
2. --rounds interleaved rounds of one --call-image call (a new batch each time)
   on each database: the ratio of the medians is what the database's size costs
   a call (target: <= 1.2 at 10^6 images);
3. on the preloaded database, a --batch-image batch declared up front and saved
   in chunks of --chunk at their offsets, as `loader load` and a Celery fleet
   save a large batch: the batch grows after the last ANALYZE, which is where
   issue 21's plans flipped. Per-chunk times; median of the last five over the
   first five (target: <= 1.2).

No timing is asserted; the figures go to stdout and --out (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from loader import register_batch, save_batch  # noqa: E402
from loader.datagen import make_batch  # noqa: E402
from loader.schema.apply import apply_schema  # noqa: E402
from loader.testing import embedded_server, with_dbname  # noqa: E402

TARGET = 1.2
# Chunks at each end of the large batch whose median is compared.
ENDS = 5


def _database(admin: str, name: str) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = with_dbname(admin, name)
    apply_schema(dsn)
    return dsn


def _maintain(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def _preload(dsn: str, images: int, per_batch: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        for first in range(0, images, per_batch):
            name = f"earlier-{first // per_batch:05d}"
            save_batch(conn, name, make_batch(min(per_batch, images - first), prefix=name))
    return time.perf_counter() - started


def _call(dsn: str, name: str, images: list[dict[str, Any]]) -> float:
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        save_batch(conn, name, images)
        return time.perf_counter() - started


def _chunks(dsn: str, images: int, chunk: int) -> list[float]:
    data = make_batch(images, prefix="growing")
    times = []
    with psycopg.connect(dsn) as conn:
        register_batch(conn, "growing", images)
        for first in range(0, images, chunk):
            started = time.perf_counter()
            save_batch(conn, "growing", data[first : first + chunk], position_offset=first)
            times.append(time.perf_counter() - started)
    return times


def measure(admin: str, args: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    names = {"empty": f"{args.prefix}_{tag}_empty", "preloaded": f"{args.prefix}_{tag}_preloaded"}
    try:
        empty = _database(admin, names["empty"])
        _maintain(empty)
        preloaded = _database(admin, names["preloaded"])
        preload_s = _preload(preloaded, args.preload, args.call)
        _maintain(preloaded)
        calls: dict[str, list[float]] = {"empty": [], "preloaded": []}
        for n in range(args.rounds):
            images = make_batch(args.call, prefix=f"call-{n}", seed=n)
            # Interleaved, so both see the same neighbours on a shared machine.
            for kind, dsn in (("empty", empty), ("preloaded", preloaded)):
                calls[kind].append(_call(dsn, f"call-{n}", images))
        chunks = _chunks(preloaded, args.batch, args.chunk)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names.values():
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    empty_s, full_s = statistics.median(calls["empty"]), statistics.median(calls["preloaded"])
    first, last = statistics.median(chunks[:ENDS]), statistics.median(chunks[-ENDS:])
    return {
        "preload_images": args.preload,
        "preload_s": round(preload_s, 1),
        "call_images": args.call,
        "call_empty_s": [round(t, 3) for t in calls["empty"]],
        "call_preloaded_s": [round(t, 3) for t in calls["preloaded"]],
        "call_ratio": round(full_s / empty_s, 2),
        "batch_images": args.batch,
        "chunk": args.chunk,
        "chunk_s": [round(t, 3) for t in chunks],
        "chunk_first_s": round(first, 3),
        "chunk_last_s": round(last, 3),
        "chunk_ratio": round(last / first, 2),
    }


def table(result: dict[str, Any]) -> str:
    def holds(ratio: float) -> str:
        return "yes" if ratio <= TARGET else "**no**"

    r = result
    return "\n".join(
        [
            "| measure | empty / first | preloaded / last | ratio | holds (<= 1.2) |",
            "|---|---:|---:|---:|:---:|",
            f"| {r['call_images']:,}-image call, empty analyzed database vs {r['preload_images']:,} images"
            f" preloaded (median of {len(r['call_empty_s'])}) | {statistics.median(r['call_empty_s']):.2f} s"
            f" | {statistics.median(r['call_preloaded_s']):.2f} s | {r['call_ratio']:.2f}x"
            f" | {holds(r['call_ratio'])} |",
            f"| {r['batch_images']:,}-image batch in chunks of {r['chunk']:,}, first vs last {ENDS} chunks"
            f" (medians) | {r['chunk_first_s']:.2f} s | {r['chunk_last_s']:.2f} s | {r['chunk_ratio']:.2f}x"
            f" | {holds(r['chunk_ratio'])} |",
        ]
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("LOADER_BENCH_DSN") or os.environ.get("LOADER_TEST_DSN")
    )
    parser.add_argument("--preload", type=int, default=1_000_000)
    parser.add_argument("--call", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=2_000)
    parser.add_argument("--prefix", default="loader_growth", help="names of the databases made (and dropped)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--smoke", action="store_true", help="CI: 10^5 preloaded, a 20,000-image batch, one round"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.preload, args.batch, args.rounds = 100_000, 20_000, 1
    server = contextlib.nullcontext(args.dsn) if args.dsn else embedded_server()
    with server as admin:
        with psycopg.connect(admin) as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
        result = measure(admin, args)
    result["meta"] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/growth.py " + " ".join(argv),
        "server_version": version,
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    print(f"\nPostgreSQL {version}, load average {result['meta']['loadavg']}:\n")
    print(table(result))
    print("chunk times (s): " + " ".join(f"{t:.2f}" for t in result["chunk_s"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
