"""The loader, the raw COPY floor and the prototypes, in interleaved rounds on the same data.

    .venv/bin/python benchmarks/experiments/compare.py [--sizes 1000,10000] [--rounds 9] [--dsn DSN]
                                                       [--only loader,floor,...]

One fresh database per N; every round runs each approach once (in a rotating
order), into tables truncated before it, outside the timing. A first round warms
up and checks that every approach stored exactly N chains, N OCR rows, 5·N boxes
and the right totals. Prints medians and each one's throughput against the
floor's (ratio of medians). Interleaving keeps a shared machine's load from
favouring whichever approach ran in a quiet minute.
Server: --dsn, else LOADER_BENCH_DSN / LOADER_TEST_DSN, else the embedded PostgreSQL 18.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from approaches import Approach, CopyFloor, Loader  # noqa: E402
from no_probes import LoaderWithoutProbes  # noqa: E402
from prototypes import BoxesDirect, SplitBoxesDirect, SplitCall  # noqa: E402
from test_save_path import TABLES, _check_stored  # noqa: E402

from loader.datagen import make_batch  # noqa: E402
from loader.testing import TemplateDatabases, embedded_server  # noqa: E402

CANDIDATES: dict[str, Callable[[], Approach]] = {
    "loader": Loader,
    "floor": CopyFloor,
    # The loader with the identity rule's probes taken out of its merge (what they cost).
    "no-probes": LoaderWithoutProbes,
    "split2": lambda: SplitCall(2),
    "split4": lambda: SplitCall(4),
    "boxes-direct": BoxesDirect,
    "split2-boxes-direct": lambda: SplitBoxesDirect(2),
}


def compare(dsn: str, n: int, rounds: int, names: list[str]) -> dict[str, list[float]]:
    results = make_batch(n, boxes=5, prefix=f"bench{n}")
    approaches = {name: CANDIDATES[name]() for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    with psycopg.connect(dsn, autocommit=True) as db:
        for approach in approaches.values():
            approach.open(dsn)
        try:
            for round_no in range(rounds + 1):
                order = names[round_no % len(names) :] + names[: round_no % len(names)]
                for name in order:
                    db.execute(f"TRUNCATE {TABLES}")
                    started = time.perf_counter()
                    approaches[name](f"bench-{n}", results)
                    elapsed = time.perf_counter() - started
                    if round_no == 0:
                        _check_stored(db, f"bench-{n}", n)
                    else:
                        times[name].append(elapsed)
        finally:
            for approach in approaches.values():
                approach.close()
    return times


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--only", default=",".join(CANDIDATES))
    parser.add_argument(
        "--dsn", default=os.environ.get("LOADER_BENCH_DSN") or os.environ.get("LOADER_TEST_DSN")
    )
    args = parser.parse_args(argv)
    names = [name for name in args.only.split(",") if name]
    with contextlib.ExitStack() as stack:
        server = args.dsn or stack.enter_context(embedded_server())
        with psycopg.connect(server) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        templates = TemplateDatabases(server, prefix="loader_exp")
        stack.callback(templates.close)
        print(
            f"PostgreSQL {str(version[0]).split()[0] if version else '?'}, {os.cpu_count()} cores, ", end=""
        )
        print(f"medians of {args.rounds} interleaved rounds\n")
        print("| N | approach | statements | median | rows/s | throughput vs floor |")
        print("|---:|---|---:|---:|---:|---:|")
        for n in (int(s) for s in args.sizes.split(",")):
            dsn = templates.create()
            try:
                times = compare(dsn, n, args.rounds, names)
            finally:
                templates.drop(dsn)
            medians = {name: statistics.median(values) for name, values in times.items()}
            floor = medians.get("floor")
            for name, median in medians.items():
                versus = f"{floor / median:.2f}x" if floor else "-"
                statements = 8 if name in ("loader", "no-probes") else CANDIDATES[name]().statements(n, 5)
                rate = 7 * n / median
                print(f"| {n:,} | {name} | {statements} | {median * 1000:.0f} ms | {rate:,.0f} | {versus} |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
