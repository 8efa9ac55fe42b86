"""Two `loader load` processes of different batches at once against one, and where the CPU goes.

    .venv/bin/python benchmarks/two_loads.py [--images 60000] [--chunk-size 5000] [--dsn DSN]
                                              [--out benchmarks/results/concurrent-pg15.json]

Opt-in (not part of `dev.py bench`), about a minute. Two JSONL files of
``--images`` generated images each (different paths). First one load alone into
a fresh database, then both at once (two processes, two batches) into another.
For each run: wall time, combined images/s, the CPU seconds of the loader
processes (wait4) and of the PostgreSQL server's processes (their utime+stime
from /proc, before and after; only when the server runs on this machine), and
so how many of the machine's cores were busy on average.
Server: --dsn, else LOADER_BENCH_DSN / LOADER_TEST_DSN, else the embedded PostgreSQL 18.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from counting import database_of  # noqa: E402
from memory import write_jsonl  # noqa: E402
from million import loader_command  # noqa: E402

from loader.testing import TemplateDatabases, embedded_server  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float | None:
    """utime + stime of a process on this machine, or None if it is not (or no longer) here."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime, stime: fields 14 and 15 of /proc/PID/stat (1-based), here 11 and 12.
    return (int(fields[11]) + int(fields[12])) / _TICKS


class BackendCpu:
    """CPU seconds of the server backends serving one database, sampled while they live.

    Only those backends: the server may be busy with other clients too. A backend's
    last 0.1 s before it exits can be missed; a remote server reads as None.
    """

    def __init__(self, monitor_dsn: str, dbname: str) -> None:
        self.monitor_dsn, self.dbname = monitor_dsn, dbname
        self.seen: dict[int, float] = {}
        self.local = True
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        with psycopg.connect(self.monitor_dsn, autocommit=True) as conn:
            while not self.done.wait(0.1):
                pids = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    [self.dbname],
                ).fetchall()
                for (pid,) in pids:
                    cpu = _cpu_s(pid)
                    if cpu is None:
                        self.local = False
                    else:
                        self.seen[pid] = max(cpu, self.seen.get(pid, 0.0))

    def __enter__(self) -> BackendCpu:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    @property
    def seconds(self) -> float | None:
        return sum(self.seen.values()) if self.local and self.seen else None


def run_loads(monitor_dsn: str, dsn: str, commands: list[list[str]]) -> dict[str, Any]:
    """Start the commands together, wait for all: wall time, client and server CPU seconds."""
    started = time.perf_counter()
    client_cpu = 0.0
    with contextlib.ExitStack() as stack:
        backends = stack.enter_context(BackendCpu(monitor_dsn, database_of(dsn)))
        procs = []
        for command in commands:
            out = stack.enter_context(tempfile.TemporaryFile())
            procs.append((subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL), out))
        for proc, out in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"loader load failed ({status})")
            client_cpu += usage.ru_utime + usage.ru_stime
            out.seek(0)
            report = json.loads(out.read())
            if report["stored"] != report["received"]:
                raise RuntimeError(f"stored {report['stored']} of {report['received']}")
        wall = time.perf_counter() - started
    return {"seconds": wall, "client_cpu_s": client_cpu, "server_cpu_s": backends.seconds}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument(
        "--dsn", default=os.environ.get("LOADER_BENCH_DSN") or os.environ.get("LOADER_TEST_DSN")
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    files = [
        write_jsonl(Path(f"/tmp/loader-bench-{args.images}.jsonl"), args.images),
        write_jsonl(Path(f"/tmp/loader-bench-{args.images}-b.jsonl"), args.images, prefix="memb"),
    ]

    runs: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        server = args.dsn or stack.enter_context(embedded_server())
        with psycopg.connect(server) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        templates = TemplateDatabases(server, prefix="loader_conc")
        stack.callback(templates.close)
        for name, count in (("one load", 1), ("two loads at once", 2)):
            dsn = templates.create()
            try:
                commands = [loader_command(dsn, files[i], f"conc-{i}", args.chunk_size) for i in range(count)]
                run = run_loads(server, dsn, commands)
            finally:
                templates.drop(dsn)
            run["images"] = count * args.images
            runs[name] = run

    server_version = str(version[0]).split()[0] if version else "?"
    print(f"\nPostgreSQL {server_version}, {os.cpu_count()} cores, chunks of {args.chunk_size:,}\n")
    print(table(runs))
    if args.out:
        meta = {
            "date": datetime.date.today().isoformat(),
            "cores": os.cpu_count(),
            "server_version": server_version,
            "images": args.images,
            "chunk_size": args.chunk_size,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n", encoding="utf-8")
    return 0


def table(runs: dict[str, Any]) -> str:
    lines = [
        "| run | images | wall | images/s (combined) | loader CPU | server CPU | cores busy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in runs.items():
        server = r["server_cpu_s"]
        busy = (r["client_cpu_s"] + (server or 0.0)) / r["seconds"]
        lines.append(
            f"| {name} | {r['images']:,} | {r['seconds']:.1f} s | {r['images'] / r['seconds']:,.0f} | "
            f"{r['client_cpu_s']:.1f} s | {'n/a' if server is None else f'{server:.1f} s'} | {busy:.2f} |"
        )
    one, two = runs["one load"], runs["two loads at once"]
    ratio = (two["images"] / two["seconds"]) / (one["images"] / one["seconds"])
    lines += ["", f"two loads at once: {ratio:.2f}x the throughput of one"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
