"""Progress events per second: many small calls of one batch, counted on a listener.

    .venv/bin/python benchmarks/progress_events.py DSN [calls] [writers]

(DSN: any server on which the user may CREATE DATABASE.)

Each call stores one image (so each commit changes the totals and sends one
event); ``writers`` threads each load their own batch; a listening connection
counts what arrives. Prints calls per second, events received, and events per
second over the same time. Events are bounded by commits: one per call.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from loader import register_batch, save_batch
from loader.datagen import make_batch
from loader.progress.read import CHANNEL
from loader.schema.apply import apply_schema


def main() -> None:
    admin = sys.argv[1]
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    writers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    name = f"events_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = make_conninfo(**{**conninfo_to_dict(admin), "dbname": name})
    try:
        apply_schema(dsn)
        data = make_batch(calls, boxes=1, prefix="ev")
        received: list[float] = []
        listening = threading.Event()

        def listen() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                listening.set()
                for _ in conn.notifies(timeout=60, stop_after=calls):
                    received.append(time.perf_counter())

        listener = threading.Thread(target=listen)
        listener.start()
        listening.wait(30)
        share = calls // writers

        def write(w: int) -> None:
            with psycopg.connect(dsn) as conn:
                for k in range(w * share, (w + 1) * share):
                    save_batch(conn, f"events-{w}", data[k : k + 1], position_offset=k)

        with psycopg.connect(dsn) as conn:
            for w in range(writers):
                register_batch(conn, f"events-{w}", share)
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent = time.perf_counter() - started
        calls = share * writers
        listener.join(timeout=60)
        span = (received[-1] - started) if received else float("nan")
        print(
            f"{calls} one-image calls by {writers} writers in {sent:.2f} s ({calls / sent:,.0f} calls/s); "
            f"{len(received)} events received, {len(received) / span:,.0f} events/s"
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
