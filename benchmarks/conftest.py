"""Benchmark fixtures: one server for the whole run, a fresh database per approach and N.

Server: ``LOADER_BENCH_DSN``, else ``LOADER_TEST_DSN``, else the embedded
PostgreSQL 18 (with pg_stat_statements). ``LOADER_BENCH_SMOKE=1`` runs N=100
once per approach (a few seconds, for CI); ``LOADER_BENCH_SIZES=100,1000``
picks sizes, ``LOADER_BENCH_APPROACHES=loader,raw COPY floor`` approaches.
Results are printed as a Markdown table at the end, and written as
JSON to ``LOADER_BENCH_OUT`` when set (run.py does).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import report
from counting import Counter, detect

from loader.datagen import make_batch
from loader.testing import TemplateDatabases, embedded_server

SMOKE = os.environ.get("LOADER_BENCH_SMOKE", "") not in ("", "0")
SIZES = (
    (100,)
    if SMOKE
    else tuple(int(s) for s in os.environ.get("LOADER_BENCH_SIZES", "100,1000,10000").split(",") if s)
)
BOXES = 5  # text boxes per image, as the workload
# LOADER_BENCH_APPROACHES="loader,raw COPY floor" measures only those (all by default).
ONLY = tuple(a for a in os.environ.get("LOADER_BENCH_APPROACHES", "").split(",") if a)

# LOADER_BENCH_DATABASES="fresh" measures on fresh databases only (both by default):
# "analyzed" is a database holding earlier batches, ANALYZEd (loader.testing.earlier_batches).
DATABASES = tuple(d for d in os.environ.get("LOADER_BENCH_DATABASES", "fresh,analyzed").split(",") if d)

RESULTS: list[dict[str, Any]] = []
META: dict[str, Any] = {}


@pytest.fixture(scope="session")
def bench_server() -> Iterator[str]:
    dsn = os.environ.get("LOADER_BENCH_DSN") or os.environ.get("LOADER_TEST_DSN")
    with contextlib.ExitStack() as stack:
        if not dsn:
            dsn = stack.enter_context(embedded_server(stat_statements=True))
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        META.update(
            date=datetime.date.today().isoformat(),
            cores=os.cpu_count(),
            server_version=str(row[0]).split()[0] if row else "?",
        )
        yield dsn


@pytest.fixture(scope="session")
def templates(bench_server: str) -> Iterator[TemplateDatabases]:
    tpl = TemplateDatabases(bench_server, prefix="loader_bench")
    yield tpl
    tpl.close()


@pytest.fixture(scope="session")
def counter(bench_server: str) -> Counter:
    found = detect(bench_server)
    META["statements_source"] = found.method
    return found


_BATCHES: dict[int, list[dict[str, Any]]] = {}


def batch(n: int) -> list[dict[str, Any]]:
    """The same generated images for every approach (Korean text, bbox polygons)."""
    if n not in _BATCHES:
        _BATCHES[n] = make_batch(n, boxes=BOXES, prefix=f"bench{n}")
    return _BATCHES[n]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    rounds = sorted({r["rounds"] for r in RESULTS})
    META["rounds"] = f"{rounds[0]}" if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"
    META["rounds"] += " rounds" if rounds[-1] > 1 else " round"
    write = terminalreporter.write_line
    write("")
    write(f"## Save-path benchmarks ({report.heading(META)})")
    for database, results in report.by_database(RESULTS).items():
        write("")
        write(f"### {report.DATABASE_TITLES.get(database, database)}")
        write("")
        for line in report.table(results).splitlines():
            write(line)
        write("")
        for line in report.targets(results).splitlines():
            write(line)
    if SMOKE:
        write("")
        write("(smoke mode: N=100, one round; timings say nothing, the run only proves the suite works)")
    out = os.environ.get("LOADER_BENCH_OUT")
    if out:
        Path(out).write_text(
            json.dumps({"meta": META, "smoke": SMOKE, "results": RESULTS}, indent=1) + "\n",
            encoding="utf-8",
        )
