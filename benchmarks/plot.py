"""Plot rows/s against N for every approach, from a results JSON written by the benchmark run.

    .venv/bin/python benchmarks/plot.py [results.json] [out.png]

Defaults: benchmarks/results/latest.json -> docs/benchmarks.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: CI and servers
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402

DEFAULT_RESULTS = HERE / "results" / "latest.json"
DEFAULT_PNG = HERE.parent / "docs" / "benchmarks.png"

_STYLE = {
    "row-by-row": ("tab:red", "v"),
    "orm-bulk": ("tab:orange", "s"),
    "executemany": ("tab:purple", "D"),
    "loader": ("tab:blue", "o"),
    "raw COPY floor": ("tab:gray", "^"),
}


def plot(data: dict[str, Any], out: Path) -> Path:
    # Every approach on fresh databases; the loader on analyzed ones too, dotted.
    groups = report.by_database(data["results"])
    results = groups.get("fresh") or next(iter(groups.values()))
    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    analyzed = sorted(
        (r["n"], r["rows_per_s"]) for r in groups.get("analyzed", []) if r["approach"] == report.LOADER
    )
    if analyzed:
        ax.plot(
            *zip(*analyzed, strict=True), ":", color="black", marker="x", label="loader, analyzed database"
        )
    for name in report.ORDER:
        points = sorted((r["n"], r["rows_per_s"]) for r in results if r["approach"] == name)
        if not points:
            continue
        color, marker = _STYLE.get(name, ("black", "o"))
        style = "--" if name == report.FLOOR else "-"
        width = 2.5 if name == report.LOADER else 1.5
        ax.plot(*zip(*points, strict=True), style, color=color, marker=marker, linewidth=width, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({r["n"] for r in results})
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.set_xlabel("images per batch (N); 7 rows per image")
    ax.set_ylabel("rows stored per second (median)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title("Saving one OCR batch: throughput by approach", fontsize=12)
    fig.text(0.5, 0.005, report.heading(data["meta"]), ha="center", fontsize=8, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else DEFAULT_RESULTS
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_PNG
    print(plot(json.loads(source.read_text(encoding="utf-8")), out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
