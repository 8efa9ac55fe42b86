"""The scaling curve: 1, 2, 4, 8 Celery workers saving 200,000 images through PgBouncer.

    .venv/bin/python benchmarks/fleet.py [--workers 1,2,4,8] [--images 200000] [--batch 2000]
                                         [--pool-size 4] [--dsn DSN] [--out benchmarks/results/fleet.json]
    .venv/bin/python benchmarks/fleet.py --render-only    # plot + docs/scaling.md from the stored JSON

Opt-in (not part of `dev.py bench`): a few minutes on 2 cores. At each point:

1. a fresh database (the loader schema) on the server of --dsn (else
   LOADER_BENCH_DSN / LOADER_TEST_DSN: the machine's PostgreSQL 15);
2. a PgBouncer (Debian's pgbouncer) on a free loopback port in front of it, in
   transaction pooling with --pool-size server connections: what a fleet of
   workers on many hosts would share;
3. N real worker processes (`celery -A loader.celery worker --pool=prefork
   --concurrency=1`), all consuming one queue of the local Redis, each
   connecting through PgBouncer;
4. the images, pre-encoded as JSON lines, sent as --batch-image tasks (inline:
   a 2,000-image batch is ~2 MiB, below the 4 MiB inline limit); the clock runs
   from the first publish to the last result;
5. CPU seconds of the PostgreSQL backends serving the database (/proc of the
   pids in pg_stat_activity), of the worker processes, and of the whole machine
   (/proc/stat), so the curve says where the time went;
6. a check that every image and box is stored exactly once.

The machine is shared: other engineers' work shows in "machine busy". PgBouncer is
started by ``loader.testing.pgbouncer_server``, as the tests start theirs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import matplotlib
import psycopg

matplotlib.use("Agg")  # no display
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers.celery_harness import Broker, Worker  # noqa: E402

from loader.celery import CeleryConfig, make_app, submit_batch  # noqa: E402
from loader.datagen import make_batch  # noqa: E402
from loader.testing import TemplateDatabases, pgbouncer_server  # noqa: E402

RESULTS = HERE / "results" / "fleet.json"
PNG = ROOT / "docs" / "fleet.png"
DOC = ROOT / "docs" / "scaling.md"
BEGIN, END = "<!-- fleet.py:begin -->", "<!-- fleet.py:end -->"
# Redis database of the benchmark's queue (the tests use 13).
REDIS_URL = "redis://127.0.0.1:6379/12"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Seconds for all results of one point: generous for a loaded 2-core machine.
RESULT_TIMEOUT_S = 1800


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                pids += _tree(int(child))
    return pids


def _machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def _backends(direct_dsn: str) -> dict[int, float]:
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        pids = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return {pid: _cpu_s(pid) for (pid,) in pids}


def _sizes(direct_dsn: str) -> dict[str, Any]:
    """Size (MiB) of the loader's big tables and their indexes, with B-tree depth (pageinspect)."""
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        tables = {
            name: round(size / 2**20, 1)
            for name, size in conn.execute(
                "SELECT relname, pg_table_size(oid) FROM pg_class"
                " WHERE relname IN ('ocr_executions', 'ocr_text_boxes', 'chain_executions') ORDER BY 1"
            ).fetchall()
        }
        indexes = {}
        for name, size, method in conn.execute(
            "SELECT c.relname, pg_relation_size(c.oid), a.amname FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam"
            " WHERE i.indrelid IN ('ocr_executions'::regclass, 'ocr_text_boxes'::regclass,"
            " 'chain_executions'::regclass) ORDER BY 1"
        ).fetchall():
            level = (
                conn.execute("SELECT level FROM bt_metap(%s)", [name]).fetchone()
                if method == "btree"
                else None
            )
            indexes[name] = {"mib": round(size / 2**20, 1), "levels": int(level[0]) + 1 if level else None}
    return {"tables_mib": tables, "indexes": indexes}


def _encode_batches(images: int, batch: int) -> list[list[str]]:
    batches = []
    for first in range(0, images, batch):
        results = make_batch(min(batch, images - first), prefix=f"fleet-{first:07d}", seed=first)
        batches.append([json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in results])
    return batches


def run_point(
    templates: TemplateDatabases, workers: int, batches: list[list[str]], pool_size: int, scratch: Path
) -> dict[str, Any]:
    direct = templates.create()
    broker = Broker("redis", REDIS_URL, REDIS_URL)
    queue = f"fleet-{uuid.uuid4().hex[:10]}"
    started_workers: list[Worker] = []
    try:
        with pgbouncer_server(direct, "transaction", pool_size) as bouncer:
            env = {"LOADER_POOL_MIN": "1", "LOADER_POOL_MAX": "2", "LOADER_RESULT_EXPIRES": "900"}
            for i in range(workers):
                worker = Worker(broker, bouncer, scratch / f"w{workers}-{i}", env)
                worker.queue, worker.hostname = queue, f"w{i}-{queue}@localhost"
                worker.env["LOADER_QUEUE"] = queue
                started_workers.append(worker.start())
            client = make_app(CeleryConfig(broker_url=REDIS_URL, result_backend=REDIS_URL, queue=queue))
            backends_before = _backends(direct)
            worker_pids = [p for w in started_workers if w.process for p in _tree(w.process.pid)]
            workers_before = {p: _cpu_s(p) for p in worker_pids}
            machine_before, own_before, clock = _machine_busy_s(), time.process_time(), time.perf_counter()
            submissions = [
                submit_batch(f"fleet-{n:04d}", lines, total_images=len(lines), app=client)
                for n, lines in enumerate(batches)
            ]
            reports = [s.result.get(timeout=RESULT_TIMEOUT_S) for s in submissions]
            seconds = time.perf_counter() - clock
            machine_s = _machine_busy_s() - machine_before
            submitter_s = time.process_time() - own_before
            backends_after = _backends(direct)
            worker_pids = [p for w in started_workers if w.process for p in _tree(w.process.pid)]
            workers_s = sum(_cpu_s(p) - workers_before.get(p, 0.0) for p in worker_pids)
            client.close()
            # Task-log writes that failed (logged and dropped, never failing a task).
            tasklog_failures = sum(w.log_tail(10**6).count("not recorded") for w in started_workers)
    finally:
        for worker in started_workers:
            worker.stop()
    server_s = sum(cpu - backends_before.get(pid, 0.0) for pid, cpu in backends_after.items())
    sizes = _sizes(direct)
    images = sum(len(b) for b in batches)
    with psycopg.connect(direct) as conn:
        stored = conn.execute(
            "SELECT (SELECT count(*) FROM ocr_executions), (SELECT count(*) FROM ocr_text_boxes),"
            " (SELECT count(DISTINCT image_path) FROM ocr_executions)"
        ).fetchone()
    templates.drop(direct)
    assert stored == (images, images * 5, images), stored
    assert sum(r["stored"] for r in reports) == images
    return {
        "workers": workers,
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds),
        "server_cpu_s": round(server_s, 1),
        "server_cores": round(server_s / seconds, 2),
        "server_connections": len(backends_after),
        "workers_cpu_s": round(workers_s, 1),
        "submitter_cpu_s": round(submitter_s, 1),
        "machine_busy_cores": round(machine_s / seconds, 2),
        "server_cpu_ms_per_1000_images": round(1000 * server_s / images * 1000, 1),
        "tasklog_write_failures": tasklog_failures,
        "sizes": sizes,
    }


def load_cores(point: dict[str, Any]) -> float:
    """CPU cores this load's own processes kept busy: backends, workers, submitter."""
    own = point["server_cpu_s"] + point["workers_cpu_s"] + point.get("submitter_cpu_s", 0.0)
    return round(own / point["seconds"], 2)


def table(data: dict[str, Any]) -> str:
    rows = [
        "| workers | seconds | images/s | vs 1 worker | PostgreSQL backends CPU (cores) |"
        " backend CPU ms per 1,000 images | worker processes CPU s | submitter CPU s |"
        " this load's processes (cores) | machine busy (cores, of 2) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = data["points"][0]["images_per_s"]
    for p in data["points"]:
        rows.append(
            f"| {p['workers']} | {p['seconds']} | {p['images_per_s']:,} | {p['images_per_s'] / base:.2f}x |"
            f" {p['server_cores']} | {p['server_cpu_ms_per_1000_images']} | {p['workers_cpu_s']} |"
            f" {p.get('submitter_cpu_s', '')} | {load_cores(p)} | {p['machine_busy_cores']} |"
        )
    return "\n".join(rows)


def sizes_table(point: dict[str, Any]) -> str:
    sizes, images = point["sizes"], point["images"]
    rows = ["| relation | MiB | MiB per million images | B-tree levels |", "|---|---:|---:|---:|"]
    for name, mib in sizes["tables_mib"].items():
        rows.append(f"| table `{name}` | {mib} | {mib * 1e6 / images:,.0f} | |")
    for name, index in sizes["indexes"].items():
        levels = index["levels"] if index["levels"] is not None else "(hash)"
        rows.append(f"| index `{name}` | {index['mib']} | {index['mib'] * 1e6 / images:,.0f} | {levels} |")
    return "\n".join(rows)


def plot(data: dict[str, Any]) -> None:
    points = data["points"]
    xs = [p["workers"] for p in points]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(xs, [p["images_per_s"] for p in points], "o-", color="tab:blue", label="images/s")
    ax.set_xlabel("Celery workers (one process each) through PgBouncer")
    ax.set_ylabel("images stored per second", color="tab:blue")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_ylim(bottom=0)
    cpu = ax.twinx()
    cpu.plot(xs, [p["server_cores"] for p in points], "s--", color="tab:red", label="PostgreSQL backends")
    cpu.plot(
        xs, [load_cores(p) for p in points], "D-.", color="tab:purple", label="this load, all its processes"
    )
    cpu.plot(xs, [p["machine_busy_cores"] for p in points], "^:", color="tab:gray", label="whole machine")
    cpu.set_ylabel("CPU cores busy (of 2)", color="tab:red")
    cpu.set_ylim(0, 2.1)
    fig.legend(loc="lower right", bbox_to_anchor=(0.88, 0.15))
    meta = data["meta"]
    ax.set_title(f"{meta['images']:,} images, PostgreSQL {meta['server_version']}, 2 shared cores")
    fig.tight_layout()
    fig.savefig(PNG)


def render(data: dict[str, Any]) -> None:
    plot(data)
    meta = data["meta"]
    block = "\n".join(
        [
            BEGIN,
            "",
            f"Measured {meta['date']} by `{meta['command']}`: {meta['images']:,} images (5 boxes each) in"
            f" batches of {meta['batch']:,}, PgBouncer {meta['pgbouncer']} in transaction pooling with"
            f" {meta['pool_size']} server connections, PostgreSQL {meta['server_version']}, Redis broker;"
            f" **this machine has 2 cores shared with other engineers** (load average at start:"
            f" {meta['loadavg']}).",
            "",
            table(data),
            "",
            f"![throughput and CPU against workers]({PNG.name})",
            "",
            f"Sizes after the last point's {data['points'][-1]['images']:,} images (as at every point):",
            "",
            sizes_table(data["points"][-1]),
            "",
            END,
        ]
    )
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + block + tail, encoding="utf-8")
    print(f"updated {PNG} and {DOC}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument(
        "--dsn", default=os.environ.get("LOADER_BENCH_DSN") or os.environ.get("LOADER_TEST_DSN")
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    if args.render_only:
        render(json.loads(args.out.read_text(encoding="utf-8")))
        return 0
    if not args.dsn:
        parser.error(
            "--dsn (or LOADER_BENCH_DSN / LOADER_TEST_DSN) is required: the scaling curve needs a real server"
        )
    batches = _encode_batches(args.images, args.batch)
    templates = TemplateDatabases(args.dsn, prefix="loader_fleet")
    version = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True, check=False)
    with psycopg.connect(args.dsn) as conn:
        server_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/fleet.py " + " ".join(argv),
        "images": args.images,
        "batch": args.batch,
        "pool_size": args.pool_size,
        "server_version": server_version.split()[0],
        "pgbouncer": (version.stdout.split() or ["?", "?"])[1],
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "cpus": os.cpu_count(),
    }
    points = []
    try:
        with tempfile.TemporaryDirectory(prefix="fleet-") as scratch:
            for workers in [int(w) for w in args.workers.split(",")]:
                point = run_point(templates, workers, batches, args.pool_size, Path(scratch))
                print(json.dumps({k: v for k, v in point.items() if k != "sizes"}), flush=True)
                points.append(point)
    finally:
        templates.close()
    data = {"meta": meta, "points": points}
    args.out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(table(data))
    render(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
