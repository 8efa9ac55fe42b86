"""`loader demo`: a generated batch with a few broken images, written as the JSONL a backfill reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loader.datagen import break_some, make_batch

# Every how-many-th image break_some damages: about 1 percent, enough to show
# every failure kind in the report without drowning the successes.
DAMAGE_EVERY = 97


@dataclass(frozen=True)
class DemoInput:
    path: Path
    lines: int
    damaged: list[int]  # 0-based lines stored as failed (bad values, upstream failure)
    rejected: list[int]  # 0-based lines that cannot be stored at all (truncated, duplicate)


def write_demo_file(path: Path, images: int, batch_id: str) -> DemoInput:
    """Write ``images`` OCR results as JSONL, a few of them broken the ways OCR stages break.

    Image paths carry the batch id, so demos run into the same database never
    claim each other's images.
    """
    results = make_batch(images, prefix=batch_id)
    damaged = break_some(results, every=DAMAGE_EVERY)
    lines = [json.dumps(result, ensure_ascii=False).encode("utf-8") for result in results]
    rejected: list[int] = []
    if images >= 3:
        # A line cut short (a writer killed mid-line) and a line repeated (a
        # producer that retried): neither can be stored, both are kept raw.
        last = images - 1
        lines[last] = lines[last][: len(lines[last]) // 2]
        dup = images - 2 if images - 2 not in damaged and images - 3 not in damaged else images // 2
        lines[dup] = lines[dup - 1]
        rejected = sorted({dup, last})
        damaged = [d for d in damaged if d not in rejected]
    with path.open("wb") as out:
        for line in lines:
            out.write(line + b"\n")
    return DemoInput(path, images, damaged, rejected)
