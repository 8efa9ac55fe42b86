"""loader.celery is configured on first use, not at import: a process that only imports it, or
saves through save_with_worker_pool from its own Celery app, needs no result backend."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from loader.celery.config import CeleryConfig
from loader.errors import ConfigurationError

# An AMQP broker and no result backend: the loader's own app refuses to start so,
# nothing else needs one. Nothing connects to the broker in these tests.
AMQP = {"LOADER_BROKER_URL": "amqp://guest@127.0.0.1:5672//", "LOADER_RESULT_BACKEND": ""}


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **AMQP, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_importing_loader_celery_needs_no_result_backend() -> None:
    done = python("import loader.celery.payload, loader.celery.tasks, loader.celery; print('imported')")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"


def test_the_applications_own_celery_app_saves_through_the_worker_pool(dsn: str) -> None:
    code = (
        "from celery import Celery\n"
        "from loader.celery import save_with_worker_pool\n"
        "app = Celery('application', broker='amqp://guest@127.0.0.1:5672//')\n"
        "report = save_with_worker_pool('own-app', [{'image_path': 's3://a/1.jpg', 'status': 'success'}])\n"
        "print(report.stored)\n"
    )
    done = python(code, LOADER_DSN=dsn)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM ocr_executions").fetchone() == (1,)


def test_the_loaders_own_app_still_refuses_to_run_without_a_result_backend() -> None:
    done = python("from loader.celery import app\nprint(app.conf.result_backend)")

    assert done.returncode != 0
    assert "LOADER_RESULT_BACKEND is not set" in done.stderr


def test_the_result_backend_is_chosen_when_the_app_is_configured() -> None:
    amqp = CeleryConfig(broker_url="amqp://guest:s3cret@mq//", result_backend=None)

    with pytest.raises(ConfigurationError, match="LOADER_RESULT_BACKEND is not set") as refused:
        amqp.backend()
    assert "s3cret" not in str(refused.value)
    assert CeleryConfig(broker_url="redis://r:6379/2", result_backend=None).backend() == "redis://r:6379/2"
