"""The raw COPY floor for a JSONL file: the same lines, the same chunks, no validation.

    .venv/bin/python benchmarks/raw_copy_load.py FILE --dsn DSN --batch-id B [--chunk-size 5000]

What `loader load` is compared with at scale (benchmarks/million.py): the file is
read and decoded (json.loads, no checks), and each chunk of lines is one
transaction of binary COPY straight into the final tables, as the suite's raw
COPY floor does it (OCR ids reserved up front, chains, OCR rows, boxes). The
batch row is written once, before the first chunk, with its final totals. One
JSON line per chunk on stdout: {"chunk", "images", "seconds"} (the chunk's
transaction, its decoding included), then {"done", "images", "seconds"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from approaches import _INSERT_BATCH, CONNECT_KWARGS, CopyFloor  # noqa: E402


def chunks(path: Path, size: int) -> Iterator[list[bytes]]:
    lines: list[bytes] = []
    with path.open("rb") as f:
        for line in f:
            lines.append(line)
            if len(lines) == size:
                yield lines
                lines = []
    if lines:
        yield lines


class ChunkFloor(CopyFloor):
    """The suite's floor, one chunk per transaction, into a batch created once."""

    def __call__(self, batch_id: str, results: Any) -> None:
        conn = self.conn
        chain_ids = [self.chain_id(batch_id, item["image_path"]) for item in results]
        with conn.transaction(), conn.cursor() as cur:
            self.copy_rows(cur, batch_id, results, chain_ids)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--batch-id", required=True)
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--total", type=int, required=True, help="images in the file (the batch's total)")
    args = parser.parse_args(argv)

    floor = ChunkFloor()
    floor.open(args.dsn)
    started = time.perf_counter()
    images = 0
    try:
        with psycopg.connect(args.dsn, **CONNECT_KWARGS) as conn:
            conn.execute(_INSERT_BATCH, (args.batch_id, "SUCCESS", args.total, args.total, 0))
        for number, lines in enumerate(chunks(args.file, args.chunk_size)):
            chunk_started = time.perf_counter()
            results = [json.loads(line) for line in lines]
            floor(args.batch_id, results)
            images += len(results)
            seconds = time.perf_counter() - chunk_started
            print(json.dumps({"chunk": number, "images": len(results), "seconds": seconds}), flush=True)
    finally:
        floor.close()
    print(json.dumps({"done": True, "images": images, "seconds": time.perf_counter() - started}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
