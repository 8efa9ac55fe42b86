"""`loader load` of a 1,000,000-image file against raw COPY of the same file, side by side.

    .venv/bin/python benchmarks/million.py [--images 1000000] [--chunk-size 5000] [--dsn DSN]
                                           [--out benchmarks/results/million-pg15.json]

Opt-in (not part of `dev.py bench`): about 6 minutes per server on 2 cores, and a
~870 MB JSONL file generated once into /tmp (5 text boxes per image, as the suite).

1. `loader load FILE --chunk-size C` through the real CLI, in its own process,
   into a fresh database: wall time, peak RSS (benchmarks/peak_rss.py), and the time of every
   chunk from its "chunk committed" log line (``duration_s``: the chunk's
   transaction), to show whether a chunk's cost grows with its batch.
2. benchmarks/raw_copy_load.py on the same file, in the same chunk size, into
   another fresh database: binary COPY straight into the final tables, no
   validation, staging or merge.
3. Checks that both stored every image and that the loader's totals equal a
   recount of its rows.
Server: --dsn, else LOADER_BENCH_DSN / LOADER_TEST_DSN, else the embedded PostgreSQL 18.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from memory import write_jsonl  # noqa: E402

from loader.testing import TemplateDatabases, embedded_server  # noqa: E402

# Chunks averaged for "at the start" and "at the end" of the load.
EDGE_CHUNKS = 10
# The bounds: throughput against raw COPY, peak RSS of the CLI.
TARGET_RATIO = 0.8
LIMIT_MIB = 150


def run_process(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command to its end: wall time, CPU time and peak RSS of that process, its output.

    Through benchmarks/peak_rss.py, so that this script's own memory does not count.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as tmp,
    ):
        usage_file = Path(tmp) / "usage"
        started = time.perf_counter()
        returncode = subprocess.call(
            [sys.executable, str(HERE / "peak_rss.py"), str(usage_file), *command],
            stdout=out,
            stderr=err,
            env=env,
        )
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if returncode != 0:
            raise RuntimeError(f"{command[:2]} failed ({returncode}): {stderr[-2000:]}")
        maxrss_kib, cpu_s = usage_file.read_text(encoding="utf-8").split()
    return {
        "seconds": wall,
        "cpu_s": float(cpu_s),
        "peak_rss_mib": int(maxrss_kib) / 1024,  # Linux reports KiB
        "stdout": stdout,
        "stderr": stderr,
    }


def loader_command(dsn: str, source: Path, batch_id: str, chunk_size: int) -> list[str]:
    loader_bin = Path(sys.executable).with_name("loader")
    command = [str(loader_bin), "load", str(source), "--batch-id", batch_id, "--chunk-size", str(chunk_size)]
    return [*command, "--progress", "none", "--json", "--verbose", "--log-format", "json", "--dsn", dsn]


def chunk_seconds_from_log(stderr: str) -> list[float]:
    """duration_s of each "chunk committed" record of `loader load --verbose --log-format json`."""
    seconds = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("message") == "chunk committed":
                seconds.append(float(record["duration_s"]))
    return seconds


def edges(seconds: list[float]) -> tuple[float, float]:
    """Median chunk time of the first and of the last EDGE_CHUNKS full chunks."""
    full = seconds[:-1] if len(seconds) > 2 * EDGE_CHUNKS else seconds  # the last chunk may be short
    return statistics.median(full[:EDGE_CHUNKS]), statistics.median(full[-EDGE_CHUNKS:])


def _recount_matches(dsn: str, batch_id: str, images: int) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            """
            SELECT b.completed_images, b.failed_images,
                   (SELECT count(*) FROM chain_executions c
                    WHERE c.batch_id = b.batch_id AND c.status = 'SUCCESS'),
                   (SELECT count(*) FROM chain_executions c
                    WHERE c.batch_id = b.batch_id AND c.status = 'FAILURE')
                   + (SELECT count(*) FROM load_rejects r
                      WHERE r.batch_id = b.batch_id AND r.resolved_at IS NULL)
            FROM batch_executions b WHERE b.batch_id = %s
            """,
            [batch_id],
        ).fetchone()
    return row is not None and row[0] == row[2] == images and row[1] == row[3] == 0


def measure(server: str, source: Path, images: int, chunk_size: int) -> dict[str, Any]:
    templates = TemplateDatabases(server, prefix="loader_million")
    try:
        dsn = templates.create()
        try:
            run = run_process(loader_command(dsn, source, "million", chunk_size))
            report = json.loads(run["stdout"])
            if report["stored"] != images or not _recount_matches(dsn, "million", images):
                raise RuntimeError(f"loader stored {report['stored']} of {images}, or its totals are off")
        finally:
            templates.drop(dsn)
        loader_chunks = chunk_seconds_from_log(run["stderr"])
        print(f"loader load: {run['seconds']:.1f} s, peak RSS {run['peak_rss_mib']:.0f} MiB", flush=True)

        dsn = templates.create()
        try:
            script = [sys.executable, str(HERE / "raw_copy_load.py"), str(source), "--dsn", dsn]
            script += ["--batch-id", "million", "--chunk-size", str(chunk_size), "--total", str(images)]
            floor = run_process(script)
            with psycopg.connect(dsn) as conn:
                stored = conn.execute("SELECT count(*) FROM ocr_executions").fetchone()
            if stored is None or stored[0] != images:
                raise RuntimeError(f"raw COPY stored {stored} of {images}")
        finally:
            templates.drop(dsn)
        floor_chunks = [r["seconds"] for r in map(json.loads, floor["stdout"].splitlines()) if "chunk" in r]
        print(f"raw COPY:    {floor['seconds']:.1f} s, peak RSS {floor['peak_rss_mib']:.0f} MiB", flush=True)
    finally:
        templates.close()

    def summary(run: dict[str, Any], chunks: list[float]) -> dict[str, Any]:
        first, last = edges(chunks)
        return {
            "seconds": run["seconds"],
            "images_per_s": images / run["seconds"],
            "cpu_s": run["cpu_s"],
            "peak_rss_mib": run["peak_rss_mib"],
            "chunks": len(chunks),
            "chunk_first_s": first,
            "chunk_last_s": last,
        }

    return {"loader": summary(run, loader_chunks), "floor": summary(floor, floor_chunks)}


def table(result: dict[str, Any], images: int, chunk_size: int) -> str:
    lines = [
        f"| {images:,} images, chunks of {chunk_size:,} | wall | images/s | client CPU | peak RSS | "
        f"chunk, first {EDGE_CHUNKS} | chunk, last {EDGE_CHUNKS} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in (("loader", "`loader load`"), ("floor", "raw COPY (benchmarks/raw_copy_load.py)")):
        r = result[name]
        lines.append(
            f"| {label} | {r['seconds']:.1f} s | {r['images_per_s']:,.0f} | {r['cpu_s']:.0f} s | "
            f"{r['peak_rss_mib']:.0f} MiB | {r['chunk_first_s'] * 1000:.0f} ms | "
            f"{r['chunk_last_s'] * 1000:.0f} ms |"
        )
    ratio = result["loader"]["images_per_s"] / result["floor"]["images_per_s"]
    rss = result["loader"]["peak_rss_mib"]
    lines += [
        "",
        f"loader / raw COPY throughput: {ratio:.2f}x (target >= {TARGET_RATIO}x: "
        f"{'holds' if ratio >= TARGET_RATIO else 'MISSED'}); loader peak RSS {rss:.0f} MiB "
        f"(limit {LIMIT_MIB} MiB: {'holds' if rss < LIMIT_MIB else 'MISSED'})",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument(
        "--dsn", default=os.environ.get("LOADER_BENCH_DSN") or os.environ.get("LOADER_TEST_DSN")
    )
    parser.add_argument("--file", type=Path, default=None, help="JSONL input (default: generated in /tmp)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    source = write_jsonl(args.file or Path(f"/tmp/loader-bench-{args.images}.jsonl"), args.images)

    with contextlib.ExitStack() as stack:
        server = args.dsn or stack.enter_context(embedded_server())
        with psycopg.connect(server) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        result = measure(server, source, args.images, args.chunk_size)

    server_version = str(version[0]).split()[0] if version else "?"
    print(f"\nPostgreSQL {server_version}, {os.cpu_count()} cores\n")
    print(table(result, args.images, args.chunk_size))
    if args.out:
        meta = {
            "date": datetime.date.today().isoformat(),
            "cores": os.cpu_count(),
            "server_version": server_version,
            "images": args.images,
            "chunk_size": args.chunk_size,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, **result}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
