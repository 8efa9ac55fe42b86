"""The Celery side's configuration, read from the environment (see docs/celery.md)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from loader.errors import ConfigurationError, redact_dsn
from loader.save import Settings

#: The loader's task, by the name publishers use (``send_task(TASK_NAME, ...)``).
TASK_NAME = "loader.save_ocr_batch"

# Broker when LOADER_BROKER_URL is unset: the local Redis, database 0.
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
# Queue the loader's task is routed to and its workers consume.
DEFAULT_QUEUE = "loader"
# Largest results payload sent inside the message, in bytes of JSON lines. 4 MiB
# is ~4,000 images of 5 boxes: far below Redis' 512 MiB value limit and RabbitMQ's
# 16 MiB default max_message_size (4.x), and a message that size still moves in
# milliseconds. Anything larger travels as a file reference.
DEFAULT_INLINE_MAX_BYTES = 4 * 1024 * 1024
# Images per save_batch call when a worker streams a referenced file: one
# transaction of 10,000 images (5 boxes each) takes ~1.5 s on 2 cores:
# short enough to keep locks brief, big enough that per-call overhead is noise.
DEFAULT_CHUNK_IMAGES = 10_000
# Retries of a transient failure before the task fails for good.
DEFAULT_MAX_RETRIES = 5
# First retry delay, in seconds; doubles per retry (jittered, never below half).
DEFAULT_RETRY_BACKOFF_S = 2.0
# Cap of one retry delay, in seconds: a failover takes tens of seconds, not hours.
DEFAULT_RETRY_BACKOFF_MAX_S = 120.0
# Bound on one task-log write (statement, lock wait, pool wait), in milliseconds:
# the log is advisory, so a slow database must cost the task little.
DEFAULT_TASKLOG_TIMEOUT_MS = 2_000
# Seconds results stay in the result backend: a day is enough for a caller to
# collect its report, and bounds what the backend keeps.
DEFAULT_RESULT_EXPIRES_S = 24 * 3600
# Seconds Redis keeps an unacknowledged (acks_late) message before another worker
# gets it; must exceed the longest task, else a running task is delivered twice.
DEFAULT_VISIBILITY_TIMEOUT_S = 3_600


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigurationError(f"{name}={value} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:  # also refuses NaN
        raise ConfigurationError(f"{name}={value} must be at least {minimum}")
    return value


def _json_object(env: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = env.get(name, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"{name} must be a JSON object, got a JSON {type(value).__name__}")
    return value


def _default_backend(broker_url: str) -> str:
    """The result backend when LOADER_RESULT_BACKEND is unset: the broker itself, when it is Redis.

    Any other broker (RabbitMQ) has no default on purpose: its usual backend,
    rpc://, hands a result only to the process that sent the task (another
    process's AsyncResult(id).get() times out while the task log says SUCCESS)
    and keeps an uncollected result's queue for a day. Refusing to start makes
    the choice explicit instead of surprising (see docs/celery.md).
    """
    if broker_url.startswith(("redis://", "rediss://")):
        return broker_url
    raise ConfigurationError(
        f"LOADER_RESULT_BACKEND is not set and the broker ({redact_dsn(broker_url)}) stores no results; "
        "set it to a backend every process can read, e.g. LOADER_RESULT_BACKEND=redis://cache:6379/1 or "
        "db+postgresql://user@host/db (needs SQLAlchemy), or to rpc:// if only the submitting process "
        "collects results (see docs/celery.md)"
    )


def _spool_url(env: Mapping[str, str]) -> str | None:
    """LOADER_SPOOL_URL: an object store (s3://bucket/prefix), or None for the spool directory."""
    raw = env.get("LOADER_SPOOL_URL", "").strip()
    if not raw or raw.startswith("s3://"):
        return raw or None
    raise ConfigurationError(
        f"LOADER_SPOOL_URL={raw!r} is not an s3://bucket/prefix URL; for a directory every worker "
        "mounts, leave it unset and set LOADER_SPOOL_DIR"
    )


@dataclass(frozen=True)
class CeleryConfig:
    """Everything the loader's Celery app, workers and submit helper read from the environment."""

    dsn: str | None = None
    pool_min: int = 1
    pool_max: int = 4
    pool_timeout_s: float = 30.0
    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str = field(default_factory=lambda: _default_backend(DEFAULT_BROKER_URL))
    queue: str = DEFAULT_QUEUE
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S
    retry_backoff_max_s: float = DEFAULT_RETRY_BACKOFF_MAX_S
    inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES
    spool_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "loader-spool")
    #: s3://bucket/prefix: large batches go to this object store instead of
    #: ``spool_dir``, which then only holds the worker's temporary copies.
    spool_url: str | None = None
    #: Port of the worker's metrics endpoint (LOADER_METRICS_PORT), None for none.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    chunk_images: int = DEFAULT_CHUNK_IMAGES
    tasklog_timeout_ms: int = DEFAULT_TASKLOG_TIMEOUT_MS
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S
    result_expires_s: int = DEFAULT_RESULT_EXPIRES_S
    #: Extra kombu transport options (e.g. Redis Sentinel's master_name), merged
    #: over the visibility timeout.
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    save_settings: Settings = field(default_factory=Settings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CeleryConfig:
        """Read ``LOADER_*`` variables; unset or empty ones take the defaults."""
        env = os.environ if env is None else env
        broker = env.get("LOADER_BROKER_URL", "").strip() or DEFAULT_BROKER_URL
        pool_min = _int(env, "LOADER_POOL_MIN", 1, 0)
        pool_max = _int(env, "LOADER_POOL_MAX", 4, 1)
        if pool_max < pool_min:
            raise ConfigurationError(f"LOADER_POOL_MAX={pool_max} is below LOADER_POOL_MIN={pool_min}")
        base = Settings()
        return cls(
            dsn=env.get("LOADER_DSN", "").strip() or None,
            pool_min=pool_min,
            pool_max=pool_max,
            pool_timeout_s=_float(env, "LOADER_POOL_TIMEOUT", 30.0, 0.1),
            broker_url=broker,
            result_backend=env.get("LOADER_RESULT_BACKEND", "").strip() or _default_backend(broker),
            queue=env.get("LOADER_QUEUE", "").strip() or DEFAULT_QUEUE,
            max_retries=_int(env, "LOADER_MAX_RETRIES", DEFAULT_MAX_RETRIES, 0),
            retry_backoff_s=_float(env, "LOADER_RETRY_BACKOFF", DEFAULT_RETRY_BACKOFF_S, 0.0),
            retry_backoff_max_s=_float(env, "LOADER_RETRY_BACKOFF_MAX", DEFAULT_RETRY_BACKOFF_MAX_S, 0.0),
            inline_max_bytes=_int(env, "LOADER_INLINE_MAX_BYTES", DEFAULT_INLINE_MAX_BYTES, 0),
            spool_dir=Path(
                env.get("LOADER_SPOOL_DIR", "").strip() or Path(tempfile.gettempdir()) / "loader-spool"
            ),
            spool_url=_spool_url(env),
            metrics_port=_int(env, "LOADER_METRICS_PORT", 0, 0) or None,
            metrics_host=env.get("LOADER_METRICS_HOST", "").strip() or "127.0.0.1",
            chunk_images=_int(env, "LOADER_CHUNK_IMAGES", DEFAULT_CHUNK_IMAGES, 1),
            tasklog_timeout_ms=_int(env, "LOADER_TASKLOG_TIMEOUT_MS", DEFAULT_TASKLOG_TIMEOUT_MS, 1),
            visibility_timeout_s=_int(env, "LOADER_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT_S, 1),
            result_expires_s=_int(env, "LOADER_RESULT_EXPIRES", DEFAULT_RESULT_EXPIRES_S, 1),
            broker_transport_options=_json_object(env, "LOADER_BROKER_TRANSPORT_OPTIONS"),
            save_settings=Settings(
                work_mem=env.get("LOADER_WORK_MEM", "").strip() or base.work_mem,
                statement_timeout=env.get("LOADER_STATEMENT_TIMEOUT", "").strip() or base.statement_timeout,
                lock_timeout=env.get("LOADER_LOCK_TIMEOUT", "").strip() or base.lock_timeout,
            ),
        )

    def require_dsn(self) -> str:
        if not self.dsn:
            raise ConfigurationError(
                "LOADER_DSN is not set: the worker needs the database to write to, e.g. "
                "LOADER_DSN=postgresql://ocr_worker@db.internal/ocr (password in ~/.pgpass or PGPASSWORD)"
            )
        return self.dsn


@cache
def config() -> CeleryConfig:
    """This process's configuration, read once from the environment."""
    return CeleryConfig.from_env()
