"""The benchmark results as Markdown: the table, and the issue's targets checked against it.

Results are plain dicts (one per approach and N), as the benchmark test records
them and as run.py stores them in results/latest.json:
approach, n, rows, rounds, median_s, rows_per_s, statements, statements_source,
peak_mib.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

ORDER = ("row-by-row", "orm-bulk", "executemany", "loader", "raw COPY floor")
LOADER = "loader"
FLOOR = "raw COPY floor"

Result = dict[str, Any]

#: What each kind of database held when the numbers were taken (results before issue 21 were all fresh).
DATABASE_TITLES = {
    "fresh": "On a fresh database (the schema, empty, never analyzed)",
    "analyzed": "On an analyzed database holding earlier batches (as production's: statistics taken, "
    "4 batches of 1,000 images stored before; loader.testing.earlier_batches)",
}


def by_database(results: Iterable[Result]) -> dict[str, list[Result]]:
    """The results grouped by the database they were measured on, fresh first."""
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.get("database", "fresh"), []).append(r)
    return dict(sorted(groups.items(), key=lambda item: item[0] != "fresh"))


def _find(results: Iterable[Result], approach: str, n: int) -> Result | None:
    return next((r for r in results if r["approach"] == approach and r["n"] == n), None)


def _sorted(results: Iterable[Result]) -> list[Result]:
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(results, key=lambda r: (r["n"], rank.get(r["approach"], len(ORDER))))


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def table(results: Sequence[Result]) -> str:
    """One row per approach and N; 'loader is' compares the loader's median with that row's."""
    lines = [
        "| N images | approach | median | rows/s | loader is | statements (server) | peak client memory |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in _sorted(results):
        loader = _find(results, LOADER, r["n"])
        if loader and r["approach"] != LOADER:
            ratio = r["median_s"] / loader["median_s"]
            versus = f"{ratio:.2f}x faster" if ratio >= 1 else f"{ratio:.2f}x the speed"
        else:
            versus = "-"
        statements = "n/a" if r["statements"] is None else f"{r['statements']:,}"
        lines.append(
            f"| {r['n']:,} | {r['approach']} | {_seconds(r['median_s'])} | {r['rows_per_s']:,.0f} | "
            f"{versus} | {statements} | {r['peak_mib']:.2f} MiB |"
        )
    return "\n".join(lines)


def targets(results: Sequence[Result]) -> str:
    """The issue's targets, each with the measured ratio and whether it holds."""
    lines = ["| target | measured | holds |", "|---|---:|:---:|"]

    def throughput_ratio(n: int, other: str, goal: float, text: str) -> None:
        loader, them = _find(results, LOADER, n), _find(results, other, n)
        if not (loader and them):
            return
        # Throughput ratio = inverse ratio of the medians (same rows for both).
        ratio = them["median_s"] / loader["median_s"]
        lines.append(f"| {text} | {ratio:.2f}x | {'yes' if ratio >= goal else '**no**'} |")

    throughput_ratio(10_000, FLOOR, 0.85, "loader >= 0.85x raw COPY floor throughput, N=10,000")
    throughput_ratio(1_000, FLOOR, 0.7, "loader >= 0.7x raw COPY floor throughput, N=1,000")
    throughput_ratio(10_000, "row-by-row", 20, "loader >= 20x row-by-row, N=10,000")
    throughput_ratio(10_000, "orm-bulk", 10, "loader >= 10x ORM bulk, N=10,000")
    throughput_ratio(10_000, "executemany", 1.8, "loader >= 1.8x executemany, N=10,000")

    counts = {r["n"]: r["statements"] for r in results if r["approach"] == LOADER}
    if counts:
        known = {c for c in counts.values() if c is not None}
        same = len(known) == 1 and None not in counts.values()
        shown = ", ".join(f"{c if c is not None else 'n/a'} (N={n:,})" for n, c in sorted(counts.items()))
        holds = same and max(known) <= 8
        lines.append(
            f"| loader statements identical at every N and <= 8 | {shown} | {'yes' if holds else '**no**'} |"
        )
    return "\n".join(lines)


def heading(meta: dict[str, Any]) -> str:
    """One line saying where and how the numbers were measured."""
    return (
        f"{meta['date']} · {meta['cores']} cores · PostgreSQL {meta['server_version']} · "
        f"statements counted by {meta['statements_source']} · medians of {meta['rounds']}"
    )
