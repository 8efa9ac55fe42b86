"""The Celery side's decisions that need no worker: configuration, which errors are
retried and when, batch files and references, inline-or-file submission."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loader.celery import TASK_NAME, BatchReferenceError, CeleryConfig, make_app, submit_batch
from loader.celery.payload import encode_line, read_lines, resolve_reference, write_batch_file
from loader.celery.tasks import retry_delay
from loader.datagen import make_batch
from loader.errors import ConfigurationError


@pytest.fixture
def from_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], CeleryConfig]:
    """CeleryConfig.from_env() with exactly these LOADER_* variables set."""

    def read(env: dict[str, str]) -> CeleryConfig:
        for name in [n for n in os.environ if n.startswith("LOADER_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return CeleryConfig.from_env()

    return read


def test_config_reads_the_environment(from_env: Callable[[dict[str, str]], CeleryConfig]) -> None:
    cfg = from_env(
        {
            "LOADER_DSN": "postgresql://ocr@db/ocr",
            "LOADER_POOL_MIN": "2",
            "LOADER_POOL_MAX": "6",
            "LOADER_BROKER_URL": "amqp://guest:guest@mq//",
            "LOADER_RESULT_BACKEND": "redis://results:6379/1",
            "LOADER_QUEUE": "ocr-save",
            "LOADER_MAX_RETRIES": "3",
            "LOADER_INLINE_MAX_BYTES": "1000",
            "LOADER_SPOOL_DIR": "/srv/spool",
            "LOADER_STATEMENT_TIMEOUT": "30s",
            "LOADER_BROKER_TRANSPORT_OPTIONS": '{"confirm_publish": true}',
        }
    )
    assert (cfg.dsn, cfg.pool_min, cfg.pool_max, cfg.queue, cfg.max_retries) == (
        "postgresql://ocr@db/ocr",
        2,
        6,
        "ocr-save",
        3,
    )
    assert cfg.result_backend == "redis://results:6379/1"
    assert (cfg.inline_max_bytes, cfg.spool_dir, cfg.save_settings.statement_timeout) == (
        1000,
        Path("/srv/spool"),
        "30s",
    )
    assert cfg.broker_transport_options == {"confirm_publish": True}
    defaults = from_env({})
    assert defaults.dsn is None and defaults.backend() == defaults.broker_url
    with pytest.raises(ConfigurationError, match="LOADER_DSN is not set"):
        defaults.require_dsn()


def test_a_broker_that_stores_no_results_needs_a_result_backend_named(
    from_env: Callable[[dict[str, str]], CeleryConfig],
) -> None:
    # rpc:// would let only the submitting process collect a result: never chosen silently.
    # Refused when the loader's app is configured (tests/db/test_celery_lazy.py), not when read.
    with pytest.raises(ConfigurationError, match="LOADER_RESULT_BACKEND is not set") as refused:
        make_app(from_env({"LOADER_BROKER_URL": "amqp://guest:s3cret@mq//"})).conf.result_backend  # noqa: B018
    chosen = from_env({"LOADER_BROKER_URL": "amqp://mq//", "LOADER_RESULT_BACKEND": "rpc://"})

    assert "s3cret" not in str(refused.value)
    assert make_app(chosen).conf.result_backend == "rpc://"
    assert from_env({"LOADER_BROKER_URL": "redis://r:6379/2"}).backend() == "redis://r:6379/2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOADER_POOL_MAX": "many"}, "LOADER_POOL_MAX='many': Input should be a valid integer"),
        ({"LOADER_POOL_MIN": "5", "LOADER_POOL_MAX": "2"}, "below LOADER_POOL_MIN"),
        (
            {"LOADER_RETRY_BACKOFF": "nan"},
            "LOADER_RETRY_BACKOFF='nan': Input should be greater than or equal to 0",
        ),
        ({"LOADER_BROKER_TRANSPORT_OPTIONS": "[1]"}, "must be a JSON object"),
    ],
)
def test_config_refuses_bad_values_naming_the_variable(
    from_env: Callable[[dict[str, str]], CeleryConfig], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        from_env(env)


def test_app_is_configured_for_at_least_once_delivery() -> None:
    app = make_app(CeleryConfig(broker_url="memory://", result_backend="cache+memory://", queue="q1"))
    conf = app.conf
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost, conf.worker_prefetch_multiplier) == (
        True,
        True,
        1,
    )
    assert conf.accept_content == ["json"] and conf.task_routes == {TASK_NAME: {"queue": "q1"}}
    from loader.celery import save_ocr_batch

    assert save_ocr_batch.acks_late and save_ocr_batch.reject_on_worker_lost


def test_retry_delay_doubles_with_jitter_and_is_capped() -> None:
    cfg = CeleryConfig(retry_backoff_s=2.0, retry_backoff_max_s=30.0)
    for retries, step in [(0, 2.0), (1, 4.0), (2, 8.0), (3, 16.0), (4, 30.0), (10, 30.0)]:
        delays = [retry_delay(retries, cfg) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays), (retries, min(delays), max(delays))
        assert len(set(delays)) > 1  # jittered, so workers that failed together spread out


def test_batch_file_round_trips_every_line_exactly(tmp_path: Path) -> None:
    lines = [b'{"image_path": "/a.jpg"}', "한국어 줄".encode(), b"\xff\xfe not utf-8", b""]
    for compress in (True, False):
        path = write_batch_file(iter(lines), tmp_path, "batch/../odd id", compress=compress)
        assert path.parent == tmp_path and ".." not in path.name
        assert path.read_bytes().startswith(b"\x1f\x8b") is compress
        assert list(read_lines(path)) == lines
    assert not list(tmp_path.glob(".*partial"))


def test_encode_line_keeps_raw_lines_and_makes_one_line_of_anything() -> None:
    assert encode_line(b'{"a": 1}\n') == b'{"a": 1}'
    assert encode_line('{"b": "\u00e9"}') == '{"b": "\u00e9"}'.encode()
    assert encode_line('{\n  "c": 2\n}') == b'{"c":2}'
    assert b"\n" not in encode_line("not json\nat all")
    assert json.loads(encode_line({"image_path": "/x\ud800.jpg"})) == {"image_path": "/x\ud800.jpg"}


def test_references_must_name_an_existing_file_inside_the_spool_dir(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    inside = spool / "b.jsonl"
    inside.write_bytes(b"{}\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the database")
    os.symlink(secret, spool / "link.jsonl")

    assert resolve_reference(inside.as_uri(), spool) == inside.resolve()
    assert resolve_reference(str(inside), spool) == inside.resolve()
    assert resolve_reference(f"file://localhost{inside}", spool) == inside.resolve()
    for reference, message in [
        (secret.as_uri(), "outside the worker's spool directory"),
        (str(spool / "link.jsonl"), "outside the worker's spool directory"),
        (f"{spool}/../secret.txt", "outside the worker's spool directory"),
        ("b.jsonl", "neither a file:// URL nor an absolute path"),
        (f"file://fileserver{inside}", "only local files"),
        ((spool / "missing.jsonl").as_uri(), "cannot be read"),
    ]:
        with pytest.raises(BatchReferenceError, match=message):
            resolve_reference(reference, spool)


@pytest.fixture
def memory_app() -> Any:
    app = make_app(CeleryConfig(broker_url="memory://", result_backend="cache+memory://", queue="units"))
    yield app
    app.close()


def test_submit_sends_small_batches_inline_and_streams_large_ones_to_a_file(
    memory_app: Any, tmp_path: Path
) -> None:
    small = submit_batch("small", make_batch(3), app=memory_app, inline_max_bytes=10_000, spool_dir=tmp_path)
    assert small.inline and small.images == 3 and small.reference is None
    assert not list(tmp_path.iterdir())

    results = make_batch(500)
    big = submit_batch(
        "big", (r for r in results), app=memory_app, inline_max_bytes=10_000, spool_dir=tmp_path
    )
    assert not big.inline and big.images == 500 and big.payload_bytes > 10_000
    assert big.reference is not None
    path = Path(big.reference.removeprefix("file://"))
    with gzip.open(path) as f:
        assert [json.loads(line) for line in f] == results

    # Bytes that are not UTF-8 cannot travel in a JSON message, whatever the size.
    raw = submit_batch("raw", [b"\xff{}"], app=memory_app, inline_max_bytes=10_000, spool_dir=tmp_path)
    assert not raw.inline and raw.images == 1
