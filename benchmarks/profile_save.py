"""Where one save_batch call spends its time: client phases, the merge's plan, the client profile.

    .venv/bin/python benchmarks/profile_save.py [--images 10000] [--rounds 5] [--dsn DSN]

1. Phases (medians over the rounds, each into emptied tables): judge_call (judging
   the inputs), lock_batch, the two staging COPYs, the merge, the rest.
2. The merge once more under EXPLAIN (ANALYZE, BUFFERS): the time of each
   insert and of the foreign-key triggers (that call is then rolled back).
3. cProfile of judge_call(): the functions it spends its time in.
Server: --dsn, else LOADER_BENCH_DSN / LOADER_TEST_DSN, else the embedded PostgreSQL 18.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import loader.save.call as save_module
from loader import save_batch
from loader.datagen import make_batch
from loader.save.validate import judge_call
from loader.testing import TemplateDatabases, embedded_server

TABLES = ", ".join(
    [
        "batch_executions",
        "chain_executions",
        "ocr_executions",
        "ocr_text_boxes",
        "load_rejects",
        "task_logs",
        "loader_calls",
        # Result history (schema version 5) references batch_executions.
        "ocr_result_history",
    ]
)


class _Explained(Exception):
    """Raised after the merge was explained, to roll that call back."""


@contextlib.contextmanager
def _timed_phases(phases: dict[str, float], explain: list[str] | None = None) -> Iterator[None]:
    """Time save_batch's steps by wrapping what it calls (the code itself is untouched)."""
    real_execute = psycopg.Connection.execute
    real_copy, real_judge = save_module.copy_rows, save_module.judge_call

    def add(name: str, started: float) -> None:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started

    def execute(self: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        text = str(query)
        name = "lock_batch" if "pg_advisory_xact_lock" in text else "merge" if "new_ocr" in text else "other"
        if name == "merge" and explain is not None:
            rows = real_execute(self, f"EXPLAIN (ANALYZE, BUFFERS) {text}", *args, **kwargs).fetchall()
            explain.extend(row[0] for row in rows)
            raise _Explained
        started = time.perf_counter()
        try:
            return real_execute(self, query, *args, **kwargs)
        finally:
            add(name, started)

    def wrap(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                add(name, started)

        return timed

    psycopg.Connection.execute = execute  # type: ignore[method-assign]
    save_module.copy_rows = wrap("staging COPYs", real_copy)
    # Judged at once, so the phase holds the judging (save_batch judges when the verdicts are first read).
    save_module.judge_call = wrap(
        "judge_call (validation)", lambda batch_id, numbered, now: real_judge(batch_id, numbered)
    )
    try:
        yield
    finally:
        psycopg.Connection.execute = real_execute  # type: ignore[method-assign]
        save_module.copy_rows, save_module.judge_call = real_copy, real_judge


def _plan_summary(lines: list[str]) -> list[str]:
    """The lines of an EXPLAIN ANALYZE that say where the merge's time went."""
    keep = re.compile(r"Insert on|Hash Join|Sort  |Trigger for|Execution Time|Planning Time|CTE \w+$")
    return [line for line in lines if keep.search(line)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    env_dsn = os.environ.get("LOADER_BENCH_DSN") or os.environ.get("LOADER_TEST_DSN")
    parser.add_argument("--dsn", default=env_dsn)
    args = parser.parse_args(argv)
    results = make_batch(args.images, prefix=f"bench{args.images}")

    with contextlib.ExitStack() as stack:
        server = args.dsn or stack.enter_context(embedded_server())
        templates = TemplateDatabases(server, prefix="loader_prof")
        stack.callback(templates.close)
        dsn = templates.create()
        stack.callback(templates.drop, dsn)
        with (
            psycopg.connect(dsn, autocommit=True) as db,
            psycopg.connect(dsn, prepare_threshold=None) as conn,
        ):
            version = db.execute("SHOW server_version").fetchone()
            samples: dict[str, list[float]] = defaultdict(list)
            for round_no in range(args.rounds + 1):
                db.execute(f"TRUNCATE {TABLES}")
                phases: dict[str, float] = {}
                started = time.perf_counter()
                with _timed_phases(phases):
                    save_batch(conn, "profiled", results)
                phases["total"] = time.perf_counter() - started
                if round_no:  # the first round warms up
                    for name, seconds in phases.items():
                        samples[name].append(seconds)
            db.execute(f"TRUNCATE {TABLES}")
            plan: list[str] = []
            with contextlib.suppress(_Explained), _timed_phases({}, explain=plan):
                save_batch(conn, "profiled", results)

    print(f"save_batch of {args.images:,} images, PostgreSQL {version[0] if version else '?'}, ", end="")
    print(f"medians of {args.rounds} rounds:")
    total = statistics.median(samples["total"])
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:22s} {median * 1000:8.1f} ms  {100 * median / total:5.1f}%")
    print("\nThe merge, EXPLAIN (ANALYZE, BUFFERS), main nodes:")
    for line in _plan_summary(plan):
        print(f"  {line}")

    print("\njudge_call() under cProfile (cumulative, top 12):")
    profile = cProfile.Profile()
    profile.runcall(judge_call, "profiled", enumerate(results))
    pstats.Stats(profile).sort_stats("cumulative").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
