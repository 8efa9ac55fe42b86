"""The Celery side's configuration, read from the environment (see docs/celery.md)."""

from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from loader.errors import ConfigurationError, redact_dsn
from loader.settings import Limits, Settings, describe_errors

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
# Images per save_batch call when a worker streams a referenced file: short
# enough to keep each transaction's locks brief, big enough that the per-call
# overhead (8 statements) is noise (docs/benchmarks.md has the per-call times).
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


class CeleryConfig(Settings, Limits):
    """Everything the loader's Celery app, workers and submit helper read from the environment.

    ``CeleryConfig()`` reads the ``LOADER_*`` variables named below, and the server
    settings of loader.Settings (LOADER_WORK_MEM, LOADER_STATEMENT_TIMEOUT,
    LOADER_LOCK_TIMEOUT) and the validation limits of loader.settings.Limits
    (LOADER_MAX_BOXES, LOADER_MAX_TEXT_CHARS, LOADER_MAX_BBOX_POINTS), the same way
    as ``Settings()`` (pydantic-settings; unset or empty ones take the defaults,
    values are stripped); ``CeleryConfig(queue="q")``
    takes the fields given by name over the environment. A bad value is a
    ConfigurationError naming the variable.
    """

    model_config = SettingsConfigDict(extra="ignore")

    dsn: str | None = Field(None, validation_alias="LOADER_DSN")
    pool_min: Annotated[int, Ge(0)] = Field(1, validation_alias="LOADER_POOL_MIN")
    pool_max: Annotated[int, Ge(1)] = Field(4, validation_alias="LOADER_POOL_MAX")
    pool_timeout_s: Annotated[float, Ge(0.1)] = Field(30.0, validation_alias="LOADER_POOL_TIMEOUT")
    broker_url: str = Field(DEFAULT_BROKER_URL, validation_alias="LOADER_BROKER_URL")
    #: None: the broker when it is Redis (see backend()).
    result_backend: str | None = Field(None, validation_alias="LOADER_RESULT_BACKEND")
    queue: str = Field(DEFAULT_QUEUE, validation_alias="LOADER_QUEUE")
    max_retries: Annotated[int, Ge(0)] = Field(DEFAULT_MAX_RETRIES, validation_alias="LOADER_MAX_RETRIES")
    retry_backoff_s: Annotated[float, Ge(0.0)] = Field(
        DEFAULT_RETRY_BACKOFF_S, validation_alias="LOADER_RETRY_BACKOFF"
    )
    retry_backoff_max_s: Annotated[float, Ge(0.0)] = Field(
        DEFAULT_RETRY_BACKOFF_MAX_S, validation_alias="LOADER_RETRY_BACKOFF_MAX"
    )
    inline_max_bytes: Annotated[int, Ge(0)] = Field(
        DEFAULT_INLINE_MAX_BYTES, validation_alias="LOADER_INLINE_MAX_BYTES"
    )
    spool_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "loader-spool",
        validation_alias="LOADER_SPOOL_DIR",
    )
    #: s3://bucket/prefix: large batches go to this object store instead of
    #: ``spool_dir``, which then only holds the worker's temporary copies.
    spool_url: str | None = Field(None, validation_alias="LOADER_SPOOL_URL")
    #: Port of the worker's metrics endpoint (LOADER_METRICS_PORT), None for none.
    metrics_port: Annotated[int, Ge(1)] | None = Field(None, validation_alias="LOADER_METRICS_PORT")
    metrics_host: str = Field("127.0.0.1", validation_alias="LOADER_METRICS_HOST")
    chunk_images: Annotated[int, Ge(1)] = Field(DEFAULT_CHUNK_IMAGES, validation_alias="LOADER_CHUNK_IMAGES")
    tasklog_timeout_ms: Annotated[int, Ge(1)] = Field(
        DEFAULT_TASKLOG_TIMEOUT_MS, validation_alias="LOADER_TASKLOG_TIMEOUT_MS"
    )
    visibility_timeout_s: Annotated[int, Ge(1)] = Field(
        DEFAULT_VISIBILITY_TIMEOUT_S, validation_alias="LOADER_VISIBILITY_TIMEOUT"
    )
    result_expires_s: Annotated[int, Ge(1)] = Field(
        DEFAULT_RESULT_EXPIRES_S, validation_alias="LOADER_RESULT_EXPIRES"
    )
    #: Extra kombu transport options (e.g. Redis Sentinel's master_name), merged
    #: over the visibility timeout. A JSON object in the environment.
    broker_transport_options: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict, validation_alias="LOADER_BROKER_TRANSPORT_OPTIONS"
    )

    @field_validator("broker_transport_options", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            decoded = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if not isinstance(decoded, dict):
            raise ValueError(f"must be a JSON object, got a JSON {type(decoded).__name__}")
        return decoded

    @field_validator("spool_url")
    @classmethod
    def _object_store(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("s3://"):
            raise ValueError(
                "not an s3://bucket/prefix URL; for a directory every worker mounts, "
                "leave it unset and set LOADER_SPOOL_DIR"
            )
        return value

    @model_validator(mode="after")
    def _pool_bounds(self) -> CeleryConfig:
        if self.pool_max < self.pool_min:
            raise ValueError(f"LOADER_POOL_MAX={self.pool_max} is below LOADER_POOL_MIN={self.pool_min}")
        return self

    @classmethod
    def from_env(cls) -> CeleryConfig:
        """Read the ``LOADER_*`` variables; a bad value is a ConfigurationError naming it."""
        try:
            return cls()
        except ValidationError as exc:
            raise ConfigurationError(describe_errors(exc)) from None

    @property
    def save_settings(self) -> Settings:
        """The per-transaction server settings of the worker's saves: this configuration's."""
        return self

    @property
    def save_limits(self) -> Limits:
        """What one OCR result may hold in the worker's saves: this configuration's."""
        return self

    def backend(self) -> str:
        """The result backend of the loader's own app. Asked only when that app is
        configured: a process that merely imports loader.celery, or saves through
        save_with_worker_pool from its own Celery app, needs none."""
        return self.result_backend or _default_backend(self.broker_url)

    def require_dsn(self) -> str:
        if not self.dsn:
            raise ConfigurationError(
                "LOADER_DSN is not set: the worker needs the database to write to, e.g. "
                "LOADER_DSN=postgresql://ocr_worker@db.internal/ocr (password in ~/.pgpass or PGPASSWORD)"
            )
        return self.dsn


@cache
def config() -> CeleryConfig:
    """This process's configuration, read once from the environment (on first use)."""
    return CeleryConfig.from_env()
