"""Peak client memory (and speed) of `loader load` on a large batch, by chunk size.

    .venv/bin/python benchmarks/memory.py [--images 100000] [--chunk-sizes 1000,2000,5000,10000,20000]
                                          [--dsn DSN] [--out results/memory.json]

Writes a JSONL file of generated results (5 text boxes each, as the benchmarks)
to /tmp once, then loads it into a fresh database per chunk size through the
real CLI, in its own process, and reads that process's peak resident set size
from the kernel (ru_maxrss through benchmarks/peak_rss.py: everything, Python
heap, libpq and pydantic included, and nothing of this script's own memory).
Server: --dsn, else LOADER_BENCH_DSN / LOADER_TEST_DSN, else the embedded PostgreSQL 18.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from loader.datagen import make_batch  # noqa: E402
from loader.testing import TemplateDatabases, embedded_server  # noqa: E402

# Images generated per make_batch call while writing the file: bounds this
# script's own memory, which is not what is measured.
_GENERATE_STEP = 5_000
# The bound on the CLI's peak RSS for a 100,000-image batch.
LIMIT_MIB = 300


def write_jsonl(path: Path, images: int, prefix: str = "mem") -> Path:
    """The input file (reused when it already holds exactly ``images`` lines)."""
    if path.exists():
        with path.open("rb") as f:
            if sum(1 for _ in f) == images:
                return path
    tmp = path.with_suffix(".part")
    with tmp.open("w", encoding="utf-8") as f:
        for start in range(0, images, _GENERATE_STEP):
            batch = make_batch(min(_GENERATE_STEP, images - start), prefix=f"{prefix}/{start}", seed=start)
            f.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in batch)
    tmp.replace(path)
    return path


def run_cli(dsn: str, source: Path, batch_id: str, chunk_size: int) -> dict[str, Any]:
    """One `loader load` in its own process: wall time and peak RSS."""
    from million import run_process  # noqa: PLC0415  (million imports this module)

    loader_bin = Path(sys.executable).with_name("loader")
    command = [str(loader_bin), "load", str(source), "--batch-id", batch_id]
    command += ["--chunk-size", str(chunk_size), "--progress", "none", "--json", "--dsn", dsn]
    run = run_process(command)
    report = json.loads(run["stdout"])
    return {
        "chunk_size": chunk_size,
        "seconds": run["seconds"],
        "images_per_s": report["received"] / run["seconds"],
        "stored": report["stored"],
        "peak_rss_mib": run["peak_rss_mib"],
    }


def table(runs: list[dict[str, Any]], images: int) -> str:
    lines = [
        f"| database | chunk size | `loader load` of {images:,} images | images/s | peak client RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.get('database', 'fresh')} | {r['chunk_size']:,} | {r['seconds']:.1f} s |"
            f" {r['images_per_s']:,.0f} | {r['peak_rss_mib']:.0f} MiB |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--chunk-sizes", default="1000,2000,5000,10000,20000")
    parser.add_argument(
        "--dsn", default=os.environ.get("LOADER_BENCH_DSN") or os.environ.get("LOADER_TEST_DSN")
    )
    parser.add_argument("--file", type=Path, default=None, help="JSONL input (default: generated in /tmp)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--databases",
        default="fresh,analyzed",
        help="fresh: the bare schema; analyzed: earlier batches stored and ANALYZEd (as production's)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.chunk_sizes.split(",") if s]
    source = write_jsonl(args.file or Path(f"/tmp/loader-bench-{args.images}.jsonl"), args.images)

    runs = []
    with contextlib.ExitStack() as stack:
        server = args.dsn or stack.enter_context(embedded_server())
        with psycopg.connect(server) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        templates = TemplateDatabases(server, prefix="loader_mem")
        stack.callback(templates.close)
        for database, size in [(d, z) for d in args.databases.split(",") if d for z in sizes]:
            dsn = templates.create(analyzed=database == "analyzed")
            try:
                run = {"database": database, **run_cli(dsn, source, f"mem-{size}", size)}
            finally:
                templates.drop(dsn)
            if run["stored"] != args.images:
                raise RuntimeError(f"stored {run['stored']} of {args.images} images")
            runs.append(run)
            print(
                f"{database:>8} chunk {size:>6,}: {run['seconds']:6.1f} s, "
                f"{run['images_per_s']:7,.0f} images/s, peak RSS {run['peak_rss_mib']:5.0f} MiB",
                flush=True,
            )

    print()
    print(table(runs, args.images))
    worst = max(r["peak_rss_mib"] for r in runs)
    verdict = "holds" if worst < LIMIT_MIB else "MISSED"
    print(f"\npeak client RSS at most {worst:.0f} MiB (limit {LIMIT_MIB} MiB): {verdict}")
    if args.out:
        meta = {
            "date": datetime.date.today().isoformat(),
            "cores": os.cpu_count(),
            "server_version": str(version[0]).split()[0] if version else "?",
            "images": args.images,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
