"""Many SSE subscribers on one API process: connections held, latency from commit to delivery.

    .venv/bin/python benchmarks/sse_subscribers.py DSN [subscribers] [batches] [rounds]

(DSN: any server on which the user may CREATE DATABASE; defaults 1000 subscribers
over 10 batches, 20 rounds.)

Runs the FastAPI endpoint of docs/progress-events.md (the page's own code, one
ProgressHub) under uvicorn in a separate process, opens ``subscribers``
server-sent-event streams to it spread evenly over ``batches`` batches, then
commits one-image calls to each batch in turn, ``rounds`` times. Each
subscriber notes when each event arrives; latency is that time minus the time
the writer's save_batch returned from its COMMIT (the same machine's clock).
Prints PostgreSQL connections held by the API process while every stream is
open (pg_stat_activity), the latency median / p99 / max, events delivered, and
the API process's CPU time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import psycopg

from loader import register_batch, save_batch
from loader.datagen import make_batch
from loader.testing import TemplateDatabases

DOC = Path(__file__).resolve().parent.parent / "docs" / "progress-events.md"
#: Seconds between rounds of commits: lets every stream take its event before the next.
ROUND_PAUSE_S = 0.05


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(port: int) -> None:
    """The API process: the page's endpoint under uvicorn."""
    import uvicorn  # noqa: PLC0415

    _raise_fd_limit()
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    (code,) = [b for b in blocks if "FastAPI(" in b]
    module = types.ModuleType("progress_sse_doc")
    exec(compile(code, str(DOC), "exec"), module.__dict__)  # the page's own code
    uvicorn.run(module.app, host="127.0.0.1", port=port, log_level="warning", backlog=4096)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _subscribe(port: int, batch_id: str, arrivals: list[tuple[str, int, float]], ready: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /batches/{batch_id}/progress HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    first = True
    try:
        while line := await reader.readline():
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if first:
                first = False
                ready.release()
                continue
            arrivals.append((batch_id, event["completed"], time.time()))
            if event["status"] == "SUCCESS":
                return
    finally:
        writer.close()


def _connections(dsn: str) -> int:
    """Other sessions on the benchmark database (pg_stat_activity): while the
    streams are open and before the writer connects, only the API process's."""
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run(
    dsn: str, port: int, subscribers: int, batches: int, rounds: int, api_pid: int
) -> dict[str, Any]:
    ids = [f"sse-{b}" for b in range(batches)]
    data = {b: make_batch(rounds, boxes=1, prefix=b) for b in ids}
    with psycopg.connect(dsn) as conn:
        for b in ids:
            register_batch(conn, b, rounds)
    arrivals: list[tuple[str, int, float]] = []
    ready = asyncio.Semaphore(0)
    tasks = [
        asyncio.create_task(_subscribe(port, ids[i % batches], arrivals, ready)) for i in range(subscribers)
    ]
    for _ in range(subscribers):
        await ready.acquire()
    held = await asyncio.to_thread(_connections, dsn)
    cpu_before = _cpu_s(api_pid)
    committed: dict[tuple[str, int], float] = {}

    def write() -> None:
        with psycopg.connect(dsn) as conn:
            for k in range(rounds):
                for b in ids:
                    save_batch(conn, b, data[b][k : k + 1], position_offset=k)
                    committed[(b, k + 1)] = time.time()
                time.sleep(ROUND_PAUSE_S)

    started = time.perf_counter()
    await asyncio.to_thread(write)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
    elapsed = time.perf_counter() - started
    latencies = sorted((t - committed[(b, n)]) * 1000 for b, n, t in arrivals)
    return {
        "subscribers": subscribers,
        "batches": batches,
        "commits": rounds * batches,
        "events_delivered": len(latencies),
        "events_expected": subscribers * rounds,
        "pg_connections_held_by_api": held,
        "latency_ms_median": round(statistics.median(latencies), 1),
        "latency_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 1),
        "latency_ms_max": round(latencies[-1], 1),
        "api_cpu_s": round(_cpu_s(api_pid) - cpu_before, 2),
        "elapsed_s": round(elapsed, 1),
    }


def main() -> None:
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
        return
    admin = sys.argv[1]
    subscribers = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    batches = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    _raise_fd_limit()
    templates = TemplateDatabases(admin, prefix="bench_sse")
    dsn = templates.create()
    port = _free_port()
    env = {**os.environ, "LOADER_DSN": dsn, "SSE_HEARTBEAT_S": "15"}
    env.pop("LOADER_LISTEN_DSN", None)
    api = subprocess.Popen([sys.executable, __file__, "serve", str(port)], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or api.poll() is not None:
                    raise SystemExit("the API process did not start") from None
                time.sleep(0.1)
        result = asyncio.run(_run(dsn, port, subscribers, batches, rounds, api.pid))
    finally:
        api.terminate()
        api.wait(timeout=30)
        templates.close()
    with psycopg.connect(admin) as c:
        result["server"] = c.info.server_version
    print(json.dumps(result))


if __name__ == "__main__":
    main()
