"""A production-size rehearsal: millions of images loaded by real Celery workers, then
the operations a production database lives with (issue 21, item 5).

    .venv/bin/python benchmarks/rehearsal.py --dsn postgresql://postgres@127.0.0.1:5432/postgres \\
        [--database loader_rehearsal] [--images 10000000] [--minutes 40] [--workers 3] \\
        [--batch 2000] [--out benchmarks/results/rehearsal-pg15.json] [--keep]

Not part of CI or `dev.py bench`: it runs for as long as --minutes allows (the load
stops submitting when either --images or the time is reached) and needs ~2.3 GB of
disk per million images. In order:

1. a database --database (refused if it exists) with the schema, ANALYZEd;
2. the per-call cost at the start: three save_batch calls of 10,000 images, each a
   new batch, from this process, with no load running;
3. the load: --workers real `celery worker --pool=prefork -c 1` processes on a Redis
   queue, connected straight to the server; batches of --batch images sent inline,
   at most 4 per worker in flight (the broker holds only those). The images are
   made from a few generated batches whose paths are rewritten per batch (unique
   paths, realistic text and boxes, no generator in the way). Every 5% of the
   target the script notes the rate of the last slice, the database's size and the
   hit ratio of the index blocks, so the first wall shows where it starts;
4. the tables' and indexes' sizes, `VACUUM ANALYZE` of the whole database, timed;
5. the per-call cost at the end, as in 2;
6. retention: `delete_finished` of every batch finished in the first tenth of the
   load (one transaction per batch, as `loader delete --before` does), timed, then
   `VACUUM` of the tables it emptied;
7. the database dropped, unless --keep.

Results go to --out (JSON) and are printed. The machine is shared: the load
average at the start and the end is in the results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers.celery_harness import Broker, Worker  # noqa: E402

from loader import save_batch  # noqa: E402
from loader.celery import CeleryConfig, make_app, submit_batch  # noqa: E402
from loader.datagen import make_batch  # noqa: E402
from loader.lifecycle.delete import delete_finished  # noqa: E402
from loader.schema.apply import apply_schema  # noqa: E402
from loader.testing import with_dbname  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/12"
# Distinct generated batches the load's images are rewritten from.
TEMPLATES = 8
MARK = "RHRSLPFX"
# A call of this many images measures the per-call cost (start and end).
CALL_IMAGES = 10_000
CALL_ROUNDS = 3
# Batches in flight per worker: enough to keep each busy, few enough for the broker.
IN_FLIGHT_PER_WORKER = 4
RESULT_TIMEOUT_S = 600


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _templates(batch: int) -> list[list[str]]:
    return [
        [
            json.dumps(r, ensure_ascii=False, separators=(",", ":"))
            for r in make_batch(batch, prefix=MARK, seed=seed)
        ]
        for seed in range(TEMPLATES)
    ]


def _calls(dsn: str, label: str) -> dict[str, Any]:
    """The cost of CALL_ROUNDS save_batch calls of CALL_IMAGES images, each a new batch."""
    times = []
    with psycopg.connect(dsn) as conn:
        for n in range(CALL_ROUNDS):
            images = make_batch(CALL_IMAGES, prefix=f"probe-{label}-{n}", seed=100 + n)
            started = time.perf_counter()
            save_batch(conn, f"probe-{label}-{n}", images)
            times.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(times), 3), "times_s": [round(t, 3) for t in times]}


def _snapshot(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_database_size(current_database()),"
            " sum(idx_blks_hit), sum(idx_blks_read) FROM pg_statio_user_indexes"
        ).fetchone()
        assert row is not None
    size, hit, read = row
    return {
        "database_gib": round(size / 2**30, 2),
        "index_blocks_hit": int(hit or 0),
        "index_blocks_read": int(read or 0),
    }


def _sizes(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT relname, pg_table_size(oid) FROM pg_class WHERE relkind = 'r'"
            " AND relnamespace = 'public'::regnamespace ORDER BY 2 DESC"
        ).fetchall()
        indexes = conn.execute(
            "SELECT c.relname, pg_relation_size(c.oid) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid"
            " WHERE t.relnamespace = 'public'::regnamespace ORDER BY 2 DESC"
        ).fetchall()
        hits = conn.execute(
            "SELECT indexrelname, idx_blks_hit, idx_blks_read FROM pg_statio_user_indexes ORDER BY 1"
        ).fetchall()
    return {
        "tables_mib": {n: round(s / 2**20, 1) for n, s in tables},
        "indexes_mib": {n: round(s / 2**20, 1) for n, s in indexes},
        "index_hit_ratio": {n: round(h / (h + r), 4) if h + r else None for n, h, r in hits},
    }


def _load(dsn: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Load until --images or --minutes; returns the timeline and the per-task durations."""
    templates = _templates(args.batch)
    broker = Broker("redis", REDIS_URL, REDIS_URL)
    queue = f"rehearsal-{uuid.uuid4().hex[:10]}"
    env = {
        "LOADER_POOL_MIN": "1",
        "LOADER_POOL_MAX": "2",
        "LOADER_RESULT_EXPIRES": "3600",
        "LOADER_QUEUE": queue,
    }
    workers = []
    deadline = time.monotonic() + args.minutes * 60
    step = max(args.images // 20, args.batch)
    timeline: list[dict[str, Any]] = []
    durations: list[float] = []
    finished_at: list[str] = []
    try:
        for i in range(args.workers):
            worker = Worker(broker, dsn, scratch / f"w{i}", env)
            worker.queue, worker.hostname = queue, f"w{i}-{queue}@localhost"
            workers.append(worker.start())
        client = make_app(CeleryConfig(broker_url=REDIS_URL, result_backend=REDIS_URL, queue=queue))
        pending: deque[Any] = deque()
        sent = done = 0
        started = last_t = time.perf_counter()
        last_done = 0
        while True:
            while (
                len(pending) < IN_FLIGHT_PER_WORKER * args.workers
                and sent < args.images
                and time.monotonic() < deadline
            ):
                n = sent // args.batch
                name = f"r{n:07d}"
                lines = [line.replace(MARK, name) for line in templates[n % TEMPLATES]]
                pending.append(submit_batch(name, lines, total_images=len(lines), app=client))
                sent += len(lines)
            if not pending:
                break
            report = pending.popleft().result.get(timeout=RESULT_TIMEOUT_S)
            assert report["stored"] == args.batch, report
            durations.append(float(report["duration_s"]))
            finished_at.append(datetime.datetime.now(datetime.UTC).isoformat())
            done += args.batch
            if done - last_done >= step or not pending:
                now = time.perf_counter()
                point = {
                    "images": done,
                    "elapsed_s": round(now - started, 1),
                    "slice_images_per_s": round((done - last_done) / (now - last_t)),
                    "task_median_s": round(statistics.median(durations[-(step // args.batch) :]), 3),
                    "loadavg": _loadavg(),
                    **_snapshot(dsn),
                }
                print(json.dumps(point), flush=True)
                timeline.append(point)
                last_t, last_done = now, done
        seconds = time.perf_counter() - started
        client.close()
    finally:
        for worker in workers:
            worker.stop()
    return {
        "images": done,
        "seconds": round(seconds, 1),
        "images_per_s": round(done / seconds),
        "timeline": timeline,
        "task_first_100_median_s": round(statistics.median(durations[:100]), 3),
        "task_last_100_median_s": round(statistics.median(durations[-100:]), 3),
        "cutoff": finished_at[len(finished_at) // 10],
    }


def _timed(dsn: str, statement: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute(statement)
        return round(time.perf_counter() - started, 1)


def _retention(dsn: str, cutoff: str) -> dict[str, Any]:
    started = time.perf_counter()
    batches = images = boxes = 0
    with psycopg.connect(dsn) as conn:
        for deleted in delete_finished(conn, datetime.datetime.fromisoformat(cutoff)):
            batches += 1
            images += deleted.images
            boxes += deleted.boxes
    seconds = time.perf_counter() - started
    vacuum = _timed(dsn, "VACUUM chain_executions, ocr_executions, ocr_text_boxes, task_logs, loader_calls")
    return {
        "batches": batches,
        "images": images,
        "boxes": boxes,
        "seconds": round(seconds, 1),
        "images_per_s": round(images / seconds) if seconds else None,
        "vacuum_s": vacuum,
    }


def render(result: dict[str, Any]) -> str:
    """The results as the Markdown tables of docs/scaling.md."""
    load = result["load"]
    lines = [
        "| images loaded | elapsed | images/s (this slice) | task median (2,000 images) | database"
        " | index blocks read outside shared_buffers | load average |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in load["timeline"]:
        lines.append(
            f"| {p['images']:,} | {p['elapsed_s']:,.0f} s | {p['slice_images_per_s']:,}"
            f" | {p['task_median_s']:.2f} s | {p['database_gib']} GiB | {p['index_blocks_read']:,}"
            f" | {p['loadavg']} |"
        )
    sizes = result.get("sizes_after_load", {})
    lines += ["", "| index | MiB | hit ratio in shared_buffers |", "|---|---:|---:|"]
    hits = sizes.get("index_hit_ratio", {})
    for name, mib in sizes.get("indexes_mib", {}).items():
        lines.append(f"| `{name}` | {mib:,} | {hits.get(name)} |")
    lines += ["", "| table | MiB |", "|---|---:|"]
    lines += [f"| `{name}` | {mib:,} |" for name, mib in sizes.get("tables_mib", {}).items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("LOADER_BENCH_DSN") or os.environ.get("LOADER_TEST_DSN")
    )
    parser.add_argument("--database", default="loader_rehearsal")
    parser.add_argument("--images", type=int, default=10_000_000)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "rehearsal.json")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--render", action="store_true", help="print --out's results as Markdown tables")
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(args.out.read_text(encoding="utf-8"))))
        return 0
    if not args.dsn:
        parser.error("--dsn (or LOADER_BENCH_DSN / LOADER_TEST_DSN) is required")
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.database)))
        version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
        settings = dict(
            conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings"
                " WHERE name IN ('shared_buffers', 'max_wal_size', 'work_mem', 'maintenance_work_mem')"
            ).fetchall()
        )
    dsn = with_dbname(args.dsn, args.database)
    result: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python benchmarks/rehearsal.py " + " ".join(argv),
            "server_version": version,
            "settings": settings,
            "cpus": os.cpu_count(),
            "loadavg_start": _loadavg(),
            "shared": "2 cores shared with 7 other engineers' test runs and benchmarks",
        }
    }
    try:
        apply_schema(dsn)
        _timed(dsn, "ANALYZE")
        result["call_start"] = _calls(dsn, "start")
        print(json.dumps({"call_start": result["call_start"]}), flush=True)
        with tempfile.TemporaryDirectory(prefix="rehearsal-") as scratch:
            result["load"] = _load(dsn, args, Path(scratch))
        result["sizes_after_load"] = _sizes(dsn)
        result["vacuum_analyze_s"] = _timed(dsn, "VACUUM ANALYZE")
        print(json.dumps({"vacuum_analyze_s": result["vacuum_analyze_s"]}), flush=True)
        result["call_end"] = _calls(dsn, "end")
        result["call_end_vs_start"] = round(
            result["call_end"]["median_s"] / result["call_start"]["median_s"], 2
        )
        print(json.dumps({"call_end": result["call_end"]}), flush=True)
        result["retention"] = _retention(dsn, result["load"]["cutoff"])
        result["meta"]["loadavg_end"] = _loadavg()
    finally:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        if not args.keep:
            with psycopg.connect(args.dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.database))
                )
    print(json.dumps({k: v for k, v in result.items() if k != "sizes_after_load"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
