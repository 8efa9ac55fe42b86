"""Real brokers and real worker processes for the Celery tests.

Broker, in this order: Redis at LOADER_TEST_REDIS_URL (default database 13 of the
local Redis, kept for these tests), else RabbitMQ at LOADER_TEST_AMQP_URL, else
kombu's filesystem transport (serverless, but still across processes, so every
test still runs a real worker subprocess). LOADER_TEST_BROKER=redis|rabbitmq|
filesystem forces one. Each worker consumes its own uniquely named queue, so
parallel test runs on one broker do not take each other's messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from celery import Celery

from loader.celery import CeleryConfig, make_app

TESTS_DIR = Path(__file__).resolve().parent.parent
CELERY_BIN = Path(sys.executable).with_name("celery")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
# Seconds a worker gets to start (imports, fork, broker connection) on a busy 2-core machine.
WORKER_START_TIMEOUT_S = 60.0
# Seconds a warm shutdown may take before the worker's process group is killed.
WORKER_STOP_TIMEOUT_S = 20.0

T = TypeVar("T")


@dataclass(frozen=True)
class Broker:
    kind: str  # redis | rabbitmq | filesystem
    url: str
    result_backend: str
    transport_options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.kind} ({self.url})"


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except Exception:
        return False


def _amqp_answers(url: str) -> bool:
    import kombu

    try:
        with kombu.Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


def pick_broker(scratch: Path) -> Broker:
    """The broker the tests use; prints which, and why when it is not Redis."""
    forced = os.environ.get("LOADER_TEST_BROKER", "").strip().lower()
    redis_url = os.environ.get("LOADER_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    amqp_url = os.environ.get("LOADER_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    results = (scratch / "results").as_uri()
    if forced in {"", "redis"} and _redis_answers(redis_url):
        return Broker("redis", redis_url, redis_url)
    if forced in {"", "rabbitmq"} and _amqp_answers(amqp_url):
        if not forced:
            print(f"\nRedis at {redis_url} does not answer: Celery tests use RabbitMQ at {amqp_url}")
        (scratch / "results").mkdir(parents=True, exist_ok=True)
        return Broker("rabbitmq", amqp_url, results)
    if forced not in {"", "filesystem"}:
        raise RuntimeError(f"LOADER_TEST_BROKER={forced}: that broker does not answer")
    folder = scratch / "broker"
    folder.mkdir(parents=True, exist_ok=True)
    (scratch / "results").mkdir(parents=True, exist_ok=True)
    why = "LOADER_TEST_BROKER=filesystem" if forced else "NEITHER Redis NOR RabbitMQ ANSWERS"
    print(
        f"\n{'!' * 78}\n{why}: the Celery tests use kombu's serverless filesystem transport\n"
        f"instead of a broker server (the worker is still a real subprocess)\n{'!' * 78}"
    )
    # control_folder too: kombu otherwise writes its pidbox files into the working directory.
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(folder)}
    return Broker("filesystem", "filesystem://", results, options)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, every: float = 0.02) -> T:
    """Poll ``probe`` until it returns something other than None (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Worker:
    """``celery -A loader.celery worker --pool=prefork -c N`` (1 by default) as a subprocess of the test."""

    def __init__(
        self, broker: Broker, dsn: str, scratch: Path, env: dict[str, str] | None = None, concurrency: int = 1
    ) -> None:
        self.broker = broker
        self.concurrency = concurrency
        self.queue = f"loader-test-{uuid.uuid4().hex[:12]}"
        self.hostname = f"{self.queue}@localhost"
        self.spool_dir = scratch / "spool"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.logfile = scratch / f"{self.queue}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("LOADER_", "CELERY_"))}
        self.env.update(
            LOADER_DSN=dsn,
            LOADER_BROKER_URL=broker.url,
            LOADER_RESULT_BACKEND=broker.result_backend,
            LOADER_BROKER_TRANSPORT_OPTIONS=json.dumps(broker.transport_options),
            LOADER_QUEUE=self.queue,
            LOADER_SPOOL_DIR=str(self.spool_dir),
            # Results outlive a test by a few minutes at most on the shared broker.
            LOADER_RESULT_EXPIRES="600",
            # The tests' own opt-in tasks (tests/helpers/celery_tasks.py) are importable.
            PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])),
        )
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> CeleryConfig:
        return CeleryConfig(
            broker_url=self.broker.url,
            result_backend=self.broker.result_backend,
            broker_transport_options=self.broker.transport_options,
            queue=self.queue,
            spool_dir=self.spool_dir,
        )

    def client(self) -> Celery:
        """A publishing app of the test process, pointed at this worker's broker and queue."""
        return make_app(self.config(), main="loader-tests")

    def start(self) -> Worker:
        command = [
            str(CELERY_BIN),
            "-A",
            "loader.celery",
            "worker",
            "--pool=prefork",
            f"--concurrency={self.concurrency}",
            "-Q",
            self.queue,
            "-n",
            self.hostname,
            "-I",
            "helpers.celery_tasks",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=INFO",
            f"--logfile={self.logfile}",
        ]
        with open(self.logfile.with_suffix(".out"), "wb") as out:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                cwd=str(TESTS_DIR.parent),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() can reach the children
            )
        wait_for("the worker to be ready", self._ready, timeout=WORKER_START_TIMEOUT_S, every=0.05)
        return self

    def _ready(self) -> bool | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the worker exited with {self.process.returncode}:\n{self.log_tail()}")
        return True if "ready." in self._read(self.logfile) else None

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        text = self._read(self.logfile.with_suffix(".out")) + self._read(self.logfile)
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Warm shutdown; the whole process group is killed if that takes too long."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(WORKER_STOP_TIMEOUT_S)
        # Children of a killed or stuck worker: our own process group, by its id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        self._drop_queue()

    def _drop_queue(self) -> None:
        """Remove this run's queue from the broker (best effort: leftovers harm no one)."""
        try:
            if self.broker.kind == "redis":
                import redis

                # kombu deletes an empty Redis queue's bindings only if the (then
                # absent) list exists, so remove every key named after the queue.
                client = redis.Redis.from_url(self.broker.url, socket_timeout=5)
                keys = list(client.scan_iter(match=f"*{self.queue}*", count=1000))
                if keys:
                    client.delete(*keys)
                return
            with self.client().connection_for_write() as conn:
                channel = conn.default_channel
                channel.queue_delete(self.queue)
                channel.exchange_delete(self.queue)
        except Exception as exc:
            print(f"could not delete queue {self.queue}: {exc}")


def worker_backend(
    db: psycopg.Connection[Any], *, wait_event_type: str = "Lock", exclude_worker: int | None = None
) -> tuple[int, int] | None:
    """(backend pid, worker process pid) of a worker backend of this database in that wait, if any."""
    rows = db.execute(
        "SELECT pid, application_name FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = %s"
        " AND application_name LIKE 'loader-celery pid=%%'",
        [wait_event_type],
    ).fetchall()
    for backend_pid, application_name in rows:
        worker_pid = int(application_name.rsplit("=", 1)[1])
        if worker_pid != exclude_worker:
            return backend_pid, worker_pid
    return None


def process_gone(pid: int) -> bool | None:
    return True if not Path(f"/proc/{pid}").exists() else None


def task_log(db: psycopg.Connection[Any], task_id: str) -> dict[str, Any] | None:
    cur = db.execute(
        # chain_id: the header the task carried, as resolved to its chain's id.
        "SELECT t.task_name, c.chain_id, t.chain_execution_id, t.status::text AS status, t.retries,"
        " t.error, t.started_at, t.finished_at"
        " FROM task_logs t LEFT JOIN chain_executions c ON c.id = t.chain_execution_id WHERE t.task_id = %s",
        [task_id],
    )
    row = cur.fetchone()
    if row is None:
        return None
    assert cur.description is not None
    return dict(zip([c.name for c in cur.description], row, strict=True))


def wait_task_retried(db: psycopg.Connection[Any], task_id: str) -> dict[str, Any]:
    """The task's log row once it counts a retry. RETRY itself is a passing status:
    under a short backoff the retry's STARTED overwrites it within a fraction of a
    second, and a poll on a loaded machine can miss that window; the count stays."""
    return wait_for(
        f"task {task_id} to be logged as retried",
        lambda: row if (row := task_log(db, task_id)) is not None and row["retries"] >= 1 else None,
        timeout=30,
    )


def wait_task_log(db: psycopg.Connection[Any], task_id: str, status: str) -> dict[str, Any]:
    """The task's log row once it shows ``status``. The worker writes SUCCESS and
    FAILURE from signals sent just after the result is stored, so a caller holding
    the result may look a few milliseconds too early."""
    return wait_for(
        f"task {task_id} to be logged as {status}",
        lambda: row if (row := task_log(db, task_id)) is not None and row["status"] == status else None,
        timeout=30,
    )
